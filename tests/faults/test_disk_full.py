"""A journal on a tiny tmpfs fills up, then space comes back."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ServerProcess, wait_for

from .conftest import (
    FAULT_DEADLINE,
    Answer,
    Key,
    count,
    keys_of,
    make_event,
    post,
    read_journal,
    tally,
)

pytestmark = pytest.mark.slow

TOKENS = {"df1": "tok-df1", "df2": "tok-df2"}
#: Space left free next to the filler: a handful of batches fit, then the disk is full.
MARGIN = 192 * 1024


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for this test (root only), always unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (the disk-full test fills a real file system)")
    mnt = tmp_path / "tinyfs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def fill(path: Path, leave: int) -> int:
    """Write a filler file so that about ``leave`` bytes stay free; return its size."""
    st = os.statvfs(path.parent)
    size = max(0, st.f_bavail * st.f_frsize - leave)
    chunk = b"\0" * 65536
    written = 0
    with open(path, "wb") as fh:
        for _ in range(size // len(chunk) + 1):
            n = min(len(chunk), size - written)
            if n <= 0:
                break
            fh.write(chunk[:n])
            written += n
        fh.flush()
        os.fsync(fh.fileno())
    return written


def free_space(mnt: Path, filler: Path) -> str:
    """Give space back: delete the filler; if the journal itself has taken most of the file
    system by now (a long run), also grow the tmpfs by 2 MiB (``mount -o remount,size=``)."""
    filler.unlink()
    st = os.statvfs(mnt)
    if st.f_bavail * st.f_frsize >= 2 * MARGIN:
        return "deleted the filler"
    size = st.f_blocks * st.f_frsize + 2 * 1024 * 1024
    done = subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    return f"deleted the filler and grew the tmpfs to {size // 1024} KiB"


def health(server: ServerProcess) -> dict[str, Any]:
    return server.health_any()[1]


class Batches:
    """Batches of 20 padded events for each master in turn, seq rising per master."""

    def __init__(self) -> None:
        self.seq = dict.fromkeys(TOKENS, 0)
        self.turn = 0

    def next(self) -> tuple[str, list[dict[str, Any]]]:
        master = list(TOKENS)[self.turn % len(TOKENS)]
        self.turn += 1
        start = self.seq[master]
        self.seq[master] += 20
        return master, [make_event(master, "inc-1", start + i + 1, pad=1000) for i in range(20)]


def test_disk_full_refuses_cleanly_then_recovers(tiny_fs: Path, tmp_path: Path) -> None:
    """With the journal on a 2 MiB tmpfs mostly taken by a filler file, batches are
    acknowledged until the disk is full (a long run grows the tmpfs when the journal
    itself has taken most of it); then ingest answers 503 saying "disk full" with a
    Retry-After header, ``/health`` reports the journal degraded, the refused batch is refused
    again while the disk stays full, and none of its events is stored.  Once the filler is
    deleted (and, if needed, the tmpfs grown) the same batch, retried, is accepted whole (no duplicates: nothing of it was
    half-stored), ``/health`` is ok again.  Several fill/free cycles; at the end every
    acknowledged event is in the journal exactly once and nothing else is, the database passes
    SQLite's integrity check, and a restarted server serves the same stream."""
    cycles = count("disk_cycles", 3)
    server = ServerProcess(tiny_fs / "journal.sqlite", tmp_path / "server.log", dict(TOKENS),
                             ("--synchronous", "FULL"))
    batches = Batches()
    acked: list[Key] = []
    refusals: list[Answer] = []
    frees: list[str] = []
    health_when_full: list[dict[str, Any]] = []

    def send(master: str, batch: list[dict[str, Any]]) -> Answer:
        return post(server.url, json.dumps(batch).encode(), TOKENS[master], timeout=FAULT_DEADLINE)

    try:
        server.start()
        for _ in range(3):
            master, batch = batches.next()
            answer = send(master, batch)
            assert answer.status == 200, (answer.status, answer.body)
            acked += keys_of(batch)

        for cycle in range(cycles):
            filler = tiny_fs / "filler"
            fill(filler, MARGIN)
            refused: tuple[str, list[dict[str, Any]]] | None = None
            for _ in range(200):  # 2 MiB / 20 KiB per batch: full long before this
                master, batch = batches.next()
                answer = send(master, batch)
                if answer.status == 200:
                    acked += keys_of(batch)
                    continue
                refused = (master, batch)
                refusals.append(answer)
                break
            assert refused is not None, f"cycle {cycle}: the disk never filled"
            assert answer.status == 503, (cycle, answer.status, answer.body)
            message = answer.json().get("message", "")
            assert "retry-after" in answer.headers, answer.headers
            health_code, health_doc = server.health_any()
            assert health_code == 503, ("a node that cannot store answers /health with 503", health_doc)
            health_when_full.append(health_doc)
            assert "disk full" in message.lower(), f"cycle {cycle}: 503 does not say 'disk full': {message!r}"
            assert health_when_full[-1]["status"] == "degraded", health_when_full[-1]

            again = send(*refused)
            assert again.status == 503, ("still full, must still be refused", again.status, again.body)
            stored = set(keys_of(read_journal(server.url)))
            assert not stored & set(keys_of(refused[1])), "a refused batch was (partly) stored"

            freed = free_space(tiny_fs, filler)
            frees.append(freed)
            retried: list[Answer] = []

            def accepted(refused: tuple[str, list[dict[str, Any]]] = refused, retried: list[Answer] = retried) -> bool:
                retried.append(send(*refused))
                return retried[-1].status == 200

            wait_for(accepted, f"cycle {cycle}: the refused batch accepted once space is free", deadline=FAULT_DEADLINE)
            body = retried[-1].json()
            assert (body["accepted"], body["duplicates"]) == (20, 0), body
            acked += keys_of(refused[1])
            wait_for(lambda: health(server)["status"] == "ok", f"cycle {cycle}: /health ok again")
            # and ingest goes on
            master, batch = batches.next()
            answer = send(master, batch)
            assert answer.status == 200, (answer.status, answer.body)
            acked += keys_of(batch)

        events = read_journal(server.url)
        result = tally(acked, events)
        print(f"\ndisk full: cycles={cycles} refusals={len(refusals)} {result.figures()} "
              f"first refusal={refusals[0].status} {refusals[0].body[:200]!r} "
              f"retry-after={refusals[0].headers.get('retry-after')} health when full={health_when_full[0].get('status')} "
              f"freed by: {sorted(set(frees))}")
        assert result.lost == [] and result.doubled == [] and result.unacknowledged_stored == [], result.figures()
        assert result.out_of_order == [], result.out_of_order

        assert server.stop() == 0, server.log()[-3000:]
        with sqlite3.connect(server.db) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.close()
        server.start()
        assert read_journal(server.url) == events
    finally:
        server.kill()
