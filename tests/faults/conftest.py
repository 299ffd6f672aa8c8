"""Helpers of the fault-injection suite: publishers that behave like the plugin, a journal
reader, the exactly-once tally and a loopback TCP proxy that can cut a link.  The server is
``tests.e2e.conftest.ServerProcess``, which restarts on the same port and journal after a kill.

Sizes: every count comes from :func:`count`, which multiplies a modest default by
``FIREHOSE_FAULT_SCALE`` (default 1) unless ``FIREHOSE_FAULT_<NAME>`` sets it outright; e.g.
``FIREHOSE_FAULT_SCALE=5`` for a longer local run.

Everything listens on and connects to 127.0.0.1 only.  Every loop is bounded in count and in
time; waits poll a condition (``wait_for``), never sleep for synchronisation.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.e2e.conftest import HOST, http_get

#: Seconds any one wait of this suite may take.
FAULT_DEADLINE = 60.0


def count(name: str, default: int) -> int:
    """A size of this suite: ``FIREHOSE_FAULT_<NAME>`` if set, else ``default`` times
    ``FIREHOSE_FAULT_SCALE`` (default 1)."""
    exact = os.environ.get(f"FIREHOSE_FAULT_{name.upper()}")
    if exact:
        return max(1, int(exact))
    return max(1, default * max(1, int(os.environ.get("FIREHOSE_FAULT_SCALE", "1"))))


def seed() -> int:
    """The random seed of a run (printed, and settable with ``FIREHOSE_FAULT_SEED`` to replay)."""
    value = os.environ.get("FIREHOSE_FAULT_SEED")
    return int(value) if value else random.SystemRandom().randrange(2**32)


# --------------------------------------------------------------------------------------------
# Ingest
# --------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def post(url: str, body: bytes, token: str, timeout: float = 10.0) -> Answer:
    """One ``POST /ingest`` on a fresh connection; raises ``OSError`` (and subclasses, e.g. a
    timeout or a refused connection) when there is no HTTP answer."""
    host, _, port = url.rpartition("//")[2].partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(
            "POST", "/ingest", body=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    except http.client.HTTPException as exc:  # e.g. RemoteDisconnected, BadStatusLine
        raise ConnectionError(f"no HTTP answer: {exc!r}") from exc
    finally:
        conn.close()


def make_event(master: str, incarnation: str, seq: int, pad: int = 0) -> dict[str, Any]:
    """A valid ``build.updated`` event of ``master``; ``pad`` bytes of filler in its state."""
    return {
        "master": master,
        "incarnation": incarnation,
        "seq": seq,
        "type": "build.updated",
        "time": 1_700_000_000.0 + seq,
        "data": {"builder": "linux", "buildid": seq, "number": seq, "state": "x" * pad or "building"},
    }


Key = tuple[str, str, int]


def keys_of(batch: Iterable[dict[str, Any]]) -> list[Key]:
    return [(e["master"], e["incarnation"], e["seq"]) for e in batch]


class Publisher(threading.Thread):
    """Publishes like the plugin's outbox: its own master name and token, an incarnation,
    ``seq`` increasing from 1, batches of 1..20 events, each batch sent again (the same bytes)
    after any error, timeout or refused connection, with a small growing backoff, until a 200.
    A batch counts as acknowledged only on a 200.  Half way it restarts as a new incarnation
    (as a restarted master does).  Given several URLs (nodes of one firehose), it moves to the
    next one after any failure, as the plugin does: a batch resent to another node must be
    stored once.

    :meth:`finish` asks it to stop *starting* batches: the batch in flight is still delivered,
    so at the end every batch it ever sent has been acknowledged.
    """

    def __init__(self, url: str | list[str], master: str, token: str, rng: random.Random,
                 max_batches: int = 100_000) -> None:
        super().__init__(name=f"publisher-{master}", daemon=True)
        self.urls = [url] if isinstance(url, str) else list(url)
        self.at = 0
        self.failovers = 0
        self.master = master
        self.token = token
        self.rng = rng
        self.max_batches = max_batches
        self.acked: list[Key] = []
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.duplicates = 0
        self.retries = 0
        self.unexpected: list[str] = []
        self.in_flight: list[Key] = []
        self._finish = threading.Event()
        self._abandon = threading.Event()

    def finish(self) -> None:
        self._finish.set()

    def abandon(self) -> None:
        """Stop at once (the test is failing anyway)."""
        self._finish.set()
        self._abandon.set()

    def run(self) -> None:
        incarnations = [f"{self.master}-inc-a", f"{self.master}-inc-b"]
        switch_at = self.rng.randint(5, 40)
        incarnation, seq = incarnations[0], 0
        for n in range(self.max_batches):
            if self._finish.is_set():
                return
            if n == switch_at:
                incarnation, seq = incarnations[1], 0
            size = self.rng.randint(1, 20)
            batch = [make_event(self.master, incarnation, seq + i + 1, pad=self.rng.randint(0, 300)) for i in range(size)]
            seq += size
            self.in_flight = keys_of(batch)
            if not self._deliver(json.dumps(batch).encode()):
                return
            self.acked.extend(self.in_flight)
            self.in_flight = []

    def _deliver(self, body: bytes) -> bool:
        delay = 0.02
        end = time.monotonic() + FAULT_DEADLINE
        for attempt in range(100_000):
            if self._abandon.is_set() or time.monotonic() > end:
                return False
            if attempt:
                self.retries += 1
                # the plugin's backoff: grows, with jitter, stays small
                self._abandon.wait(self.rng.uniform(delay / 2, delay))
                delay = min(0.5, delay * 2)
            try:
                answer = post(self.urls[self.at % len(self.urls)], body, self.token, timeout=5.0)
            except OSError as exc:
                self.errors[type(exc).__name__] += 1
                self._next_node()
                continue
            self.statuses[answer.status] += 1
            if answer.status == 200:
                self.duplicates += answer.json()["duplicates"]
                return True
            if answer.status not in (502, 503, 504):
                self.unexpected.append(f"{answer.status} {answer.body[:300]!r}")
            self._next_node()
        return False

    def _next_node(self) -> None:
        if len(self.urls) > 1:
            self.at += 1
            self.failovers += 1


# --------------------------------------------------------------------------------------------
# Reading the journal back, and counting
# --------------------------------------------------------------------------------------------


def read_journal(base: str) -> list[dict[str, Any]]:
    """Every event the journal holds, in stream order, as a subscriber reads it: ``/poll`` pages
    from ``since=earliest`` up to the head cursor of ``/health``."""
    status, body = http_get(base + "/health", timeout=10)
    health = json.loads(body)
    head, earliest = health["cursor"], health["earliest"]
    events: list[dict[str, Any]] = []
    cursor = "earliest"
    if head == earliest:
        return events
    for _ in range(100_000):
        status, body = http_get(f"{base}/poll?since={cursor}&limit=1000&timeout=5", timeout=30)
        assert status == 200, (status, body[:500])
        page = json.loads(body)
        assert "gap" not in page, page
        events.extend(page["events"])
        cursor = page["cursor"]
        if events and events[-1]["id"] == head:
            return events
    raise AssertionError("reading the journal did not reach its head")


@dataclass
class Tally:
    """Acknowledged events against the journal's contents."""

    acknowledged: int
    stored: int
    lost: list[Key]
    doubled: list[Key]
    unacknowledged_stored: list[Key]
    out_of_order: list[str] = field(default_factory=list)

    def figures(self) -> str:
        return (f"acknowledged={self.acknowledged} stored={self.stored} lost={len(self.lost)} "
                f"doubled={len(self.doubled)} stored_unacknowledged={len(self.unacknowledged_stored)} "
                f"out_of_order={len(self.out_of_order)}")


def tally(acked: Iterable[Key], events: list[dict[str, Any]]) -> Tally:
    """Compare: each acknowledged key must be stored exactly once; per master the stored keys
    must follow the order they were acknowledged in (incarnation by incarnation, seq rising);
    the stream's ids must strictly increase."""
    acked_list = list(acked)
    stored_keys = keys_of(events)
    counts = Counter(stored_keys)
    acked_set = set(acked_list)
    out_of_order: list[str] = []
    offsets = [int(e["id"].rpartition(":")[2]) for e in events]
    if offsets != sorted(set(offsets)):
        out_of_order.append("stream ids do not strictly increase")
    order = {k: i for i, k in enumerate(acked_list)}
    last: dict[str, int] = {}
    for k in stored_keys:
        if k in order:
            if order[k] < last.get(k[0], -1):
                out_of_order.append(f"{k} stored after a later-acknowledged event of {k[0]}")
            last[k[0]] = max(last.get(k[0], -1), order[k])
    return Tally(
        acknowledged=len(acked_list),
        stored=len(stored_keys),
        lost=sorted(acked_set - set(counts)),
        doubled=sorted(k for k, c in counts.items() if c > 1),
        unacknowledged_stored=sorted(set(counts) - acked_set),
        out_of_order=out_of_order,
    )


# --------------------------------------------------------------------------------------------
# A TCP proxy that can cut the link
# --------------------------------------------------------------------------------------------


def _abort(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): the peer sees the link die, not a clean end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class Proxy:
    """A loopback TCP proxy in front of ``127.0.0.1:target``, in threads.

    Modes (:meth:`set_mode`):

    * ``forward``: bytes flow both ways.
    * ``refuse``: existing connections are reset and the listening socket is closed, so new
      connections are refused (the server's host is unreachable).
    * ``blackhole``: existing connections are reset; new ones are accepted and then nothing is
      ever answered (a partition: the client only learns by its own timeout).
    * ``lose_answers``: existing connections are reset; requests reach the server, its answers
      are thrown away (the batch is stored, the acknowledgement lost).

    Leaving an outage mode for ``forward`` resets the connections the outage held.
    """

    MODES = ("forward", "refuse", "blackhole", "lose_answers")

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "forward"
        self.port = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self.refused_while = 0
        self._listen()
        self._spawn(self._accept_loop)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _spawn(self, fn: Any, *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()]
        self._threads.append(t)
        t.start()

    def _listen(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        self._listener = s

    def set_mode(self, mode: str) -> None:
        assert mode in self.MODES, mode
        with self._lock:
            old, self.mode = self.mode, mode
            conns, self._conns = self._conns, []
            if mode == "refuse" and self._listener is not None:
                _abort(self._listener)
                self._listener = None
            if mode != "refuse" and self._listener is None:
                self._listen()
        if old != mode:
            for c in conns:
                _abort(c)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            conns, self._conns = self._conns, []
            if self._listener is not None:
                _abort(self._listener)
                self._listener = None
        for c in conns:
            _abort(c)
        for t in self._threads:
            t.join(5)

    def _accept_loop(self) -> None:
        end = time.monotonic() + 3600
        while not self._stop.is_set() and time.monotonic() < end:
            with self._lock:
                listener = self._listener
            if listener is None:
                self._stop.wait(0.02)  # refusing: nothing listens; look again shortly
                continue
            try:
                ready, _, _ = select.select([listener], [], [], 0.05)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):
                continue  # the listener was closed under us (mode change)
            self.accepted += 1
            with self._lock:
                mode = self.mode
                self._conns.append(client)
            if mode == "blackhole":
                self._spawn(self._swallow, client)
                continue
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=5)
            except OSError:
                _abort(client)
                continue
            with self._lock:
                self._conns.append(upstream)
            self._spawn(self._pump, client, upstream, False)
            self._spawn(self._pump, upstream, client, True)

    def _swallow(self, sock: socket.socket) -> None:
        """Read and discard until the connection is closed (by either side)."""
        for _ in range(1_000_000):
            if self._stop.is_set():
                return
            try:
                ready, _, _ = select.select([sock], [], [], 0.1)
                if ready and not sock.recv(65536):
                    return
            except (OSError, ValueError):
                return

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        for _ in range(10_000_000):
            if self._stop.is_set():
                return
            try:
                ready, _, _ = select.select([src], [], [], 0.1)
                if not ready:
                    continue
                data = src.recv(65536)
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                if answers and self.mode == "lose_answers":
                    continue
                dst.sendall(data)
            except (OSError, ValueError):
                _abort(src)
                _abort(dst)
                return
