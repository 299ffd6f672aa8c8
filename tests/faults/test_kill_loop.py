"""SIGKILL the server at random moments under publishers that retry like the plugin."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.conftest import ServerProcess, wait_for

from .conftest import FAULT_DEADLINE, Publisher, count, read_journal, seed, tally

pytestmark = pytest.mark.slow


def test_sigkill_under_retrying_publishers_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """Publishers behaving like the plugin (each master its own token, an incarnation, seq
    rising, batches of 1..20, the same batch retried after any failure until a 200, a new
    incarnation half way) post to a ``firehose serve`` with an SQLite journal in synchronous
    FULL, while the test SIGKILLs the server at random moments several times and restarts it on
    the same journal and port.  Then the publishers finish their last batch and the whole
    journal is read back: every acknowledged (master, incarnation, seq) is there exactly once,
    nothing is stored that was not acknowledged, no event is doubled, and each master's
    events are in the order they were acknowledged."""
    kills = count("kills", 12)
    n_publishers = count("publishers", 6)
    run_seed = seed()
    rng = random.Random(run_seed)
    tokens = {f"km{i}": f"tok-km{i}" for i in range(n_publishers)}
    server = ServerProcess(tmp_path / "journal.sqlite", tmp_path / "server.log", tokens,
                             ("--synchronous", "FULL"))
    publishers: list[Publisher] = []
    try:
        server.start()
        publishers = [Publisher(server.url, m, t, random.Random(rng.random())) for m, t in tokens.items()]
        for p in publishers:
            p.start()
        acked_at_kill: list[int] = []

        def total_acked() -> int:
            return sum(len(p.acked) for p in publishers)

        for _k in range(kills):
            before = total_acked()
            # Traffic must flow through this incarnation of the server before it is killed.
            wait_for(lambda before=before: total_acked() > before + 20, "acknowledgements after a restart",
                     deadline=FAULT_DEADLINE)
            time.sleep(rng.uniform(0.0, 0.8))  # a random moment to kill at (not synchronisation)
            acked_at_kill.append(total_acked())
            server.kill()  # SIGKILL: no clean shutdown, requests in flight everywhere
            server.start()

        before = total_acked()
        wait_for(lambda: total_acked() > before + 20, "acknowledgements after the last restart",
                 deadline=FAULT_DEADLINE)
        for p in publishers:
            p.finish()
        for p in publishers:
            p.join(FAULT_DEADLINE)
        stuck = [(p.master, p.in_flight[:1]) for p in publishers if p.is_alive() or p.in_flight]
        assert not stuck, f"publishers could not deliver their last batch: {stuck}"

        events = read_journal(server.url)
        acked = [k for p in publishers for k in p.acked]
        result = tally(acked, events)
        retries = sum(p.retries for p in publishers)
        duplicates = sum(p.duplicates for p in publishers)
        errors = sum((p.errors for p in publishers), start=Counter[str]())
        statuses = sum((p.statuses for p in publishers), start=Counter[int]())
        print(f"\nkill loop (seed {run_seed}): kills={kills} publishers={n_publishers} {result.figures()} "
              f"retries={retries} duplicates_reported={duplicates} statuses={dict(statuses)} "
              f"errors={dict(errors)} acked_at_kills={acked_at_kill}")
        unexpected = [u for p in publishers for u in p.unexpected]
        assert not unexpected, f"answers other than 200/503 to valid batches: {unexpected[:5]}"
        assert result.lost == [], f"lost {len(result.lost)} acknowledged events, e.g. {result.lost[:5]}"
        assert result.doubled == [], f"doubled {len(result.doubled)} events, e.g. {result.doubled[:5]}"
        assert result.unacknowledged_stored == [], result.unacknowledged_stored[:5]
        assert result.out_of_order == [], result.out_of_order[:5]
        assert result.stored == result.acknowledged
        # The last seq the server knows per master is that of its last acknowledged event.
        last = {p.master: p.acked[-1] for p in publishers}
        masters = server.health()["masters"]
        assert {m: (v["incarnation"], v["last_seq"]) for m, v in masters.items()} == {
            m: (k[1], k[2]) for m, k in last.items()
        }
    finally:
        for p in publishers:
            p.abandon()
        server.kill()
