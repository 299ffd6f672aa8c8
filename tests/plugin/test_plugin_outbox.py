"""Unit tests of the outbox on a ``Clock``: batching, backoff, spool, bounds, drop records."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from twisted.internet import defer, task

from buildbot_plugin.outbox import Item, Outbox
from firehose.event import dumps

from .plugin_testlib import finish_outbox as finish
from .plugin_testlib import make_outbox


class FakeServer:
    """A sender whose answers the test scripts; records the batches it was given."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.code = 200
        self.hang = False
        self.pending: list[defer.Deferred[Any]] = []

    def __call__(self, body: bytes) -> defer.Deferred[Any]:
        batch = json.loads(body)
        if self.hang:
            d: defer.Deferred[Any] = defer.Deferred()
            self.pending.append(d)
            return d
        if self.code is None:
            return defer.fail(ConnectionRefusedError("down"))
        if self.code == 200:
            self.batches.append(batch)
        return defer.succeed((self.code, b"{}"))

    @property
    def seqs(self) -> list[int]:
        return [e["seq"] for b in self.batches for e in b]


def item(seq: int, size: int = 10, inc: str = "i1") -> Item:
    body = dumps({"master": "m", "incarnation": inc, "seq": seq, "type": "master.heartbeat", "time": 1.0,
                  "data": {"pad": "x" * size}})
    return Item("m", inc, seq, body)


@pytest.fixture
def clock() -> task.Clock:
    return task.Clock()


def make(clock: task.Clock, server: FakeServer, tmp_path: Any, **kw: Any) -> Outbox:
    return make_outbox(clock, server, tmp_path, **kw)


def test_batches_by_interval_and_size(clock: task.Clock, tmp_path: Any) -> None:
    """A partial batch waits for flush_interval; a full one goes at once, in order."""
    server = FakeServer()
    ob = make(clock, server, tmp_path, flush_interval=0.5, batch_max_events=3)
    ob.put(item(1))
    assert server.batches == []
    clock.advance(0.5)
    assert server.seqs == [1]
    for s in range(2, 9):
        ob.put(item(s))
    assert [len(b) for b in server.batches] == [1, 3, 3]
    clock.advance(0.5)
    assert server.seqs == list(range(1, 9))
    finish(ob, clock)


def test_batch_bytes_limit(clock: task.Clock, tmp_path: Any) -> None:
    """No batch body exceeds batch_max_bytes."""
    server = FakeServer()
    ob = make(clock, server, tmp_path, batch_max_bytes=1000, flush_interval=0.1)
    for s in range(1, 21):
        ob.put(item(s, size=200))
    clock.advance(0.1)
    assert all(len(dumps(b)) <= 1000 for b in server.batches)
    assert server.seqs == list(range(1, 21))
    finish(ob, clock)


def test_retry_with_exponential_backoff(clock: task.Clock, tmp_path: Any) -> None:
    """Failures back off 0.5, 1, 2 ... up to backoff_max; delivery resumes in order."""
    server = FakeServer()
    server.code = 503
    ob = make(clock, server, tmp_path, flush_interval=0.1, backoff_max=4.0, spool_after=1000.0)
    ob.put(item(1))
    clock.advance(0.1)
    delays = []
    for _ in range(5):
        (call,) = clock.getDelayedCalls()
        delays.append(round(call.getTime() - clock.seconds(), 3))
        clock.advance(delays[-1])
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]
    server.code = 200
    ob.put(item(2))
    (call,) = clock.getDelayedCalls()
    clock.advance(call.getTime() - clock.seconds())
    assert server.seqs == [1, 2]
    finish(ob, clock)


def test_backoff_jitter_floor_and_reset_after_success(clock: task.Clock, tmp_path: Any) -> None:
    """Each delay is at least half the nominal one (``rand`` 0 gives exactly half), and a
    delivery that succeeds starts the next outage's backoff from the first delay again."""
    server = FakeServer()
    server.code = 503
    ob = Outbox(sender=server, spool_dir=str(tmp_path / "spool"), reactor=clock, rand=lambda: 0.0,
                flush_interval=0.1, backoff_max=4.0, spool_after=1000.0)
    ob.start()

    def next_delay() -> float:
        (call,) = clock.getDelayedCalls()
        delay = round(call.getTime() - clock.seconds(), 3)
        clock.advance(delay)
        return delay

    ob.put(item(1))
    clock.advance(0.1)
    assert [next_delay() for _ in range(4)] == [0.25, 0.5, 1.0, 2.0]
    server.code = 200
    next_delay()
    assert server.seqs == [1]
    server.code = 503
    ob.put(item(2))
    clock.advance(0.1)
    assert next_delay() == 0.25
    server.code = 200
    next_delay()
    assert server.seqs == [1, 2]
    finish(ob, clock)


def test_auth_failure_keeps_events(clock: task.Clock, tmp_path: Any) -> None:
    """401/403 are retried (misconfiguration must not lose data)."""
    server = FakeServer()
    server.code = 401
    ob = make(clock, server, tmp_path, flush_interval=0.1, spool_after=1000.0)
    ob.put(item(1))
    clock.advance(0.1)
    clock.advance(0.5)
    assert ob.pending == 1 and ob.stats["auth_failures"] == 2
    server.code = 200
    clock.advance(1.0)
    assert server.seqs == [1]
    finish(ob, clock)


def test_413_splits_then_drops_single(clock: task.Clock, tmp_path: Any) -> None:
    """A too-large batch is split; a single event too large is dropped and recorded."""
    server = FakeServer()
    calls = []

    def sender(body: bytes) -> defer.Deferred[Any]:
        batch = json.loads(body)
        calls.append(len(batch))
        if any(len(e["data"]["pad"]) > 500 for e in batch) or len(batch) > 2:
            return defer.succeed((413, b"{}"))
        return server(body)

    ob = make(clock, server, tmp_path, flush_interval=0.1)
    ob.sender = sender
    for s in (1, 2, 3, 4):
        ob.put(item(s))
    ob.put(item(5, size=600))
    clock.advance(0.1)
    assert server.seqs == [1, 2, 3, 4]
    finish(ob, clock)
    with open(tmp_path / "spool" / "dropped.jsonl") as fh:
        drops = [json.loads(line) for line in fh]
    assert [(d["first_seq"], d["last_seq"], d["incarnation"]) for d in drops] == [(5, 5, "i1")]


def test_422_drops_batch_and_records_it(clock: task.Clock, tmp_path: Any) -> None:
    """A schema rejection is not retried forever: recorded as dropped, the stream goes on."""
    server = FakeServer()
    server.code = 422
    ob = make(clock, server, tmp_path, flush_interval=0.1)
    ob.put(item(1))
    ob.put(item(2))
    clock.advance(0.1)
    server.code = 200
    ob.put(item(3))
    clock.advance(0.1)
    assert server.seqs == [3]
    finish(ob, clock)
    drops = [json.loads(x) for x in open(tmp_path / "spool" / "dropped.jsonl")]
    assert [(d["first_seq"], d["last_seq"], d["count"]) for d in drops] == [(1, 2, 2)]


def test_spools_when_server_away_and_delivers_in_order(clock: task.Clock, tmp_path: Any) -> None:
    """While the server is down events go to disk; afterwards disk first, then memory, in order."""
    server = FakeServer()
    server.code = None
    ob = make(clock, server, tmp_path, flush_interval=0.1, spool_after=1.0, backoff_max=2.0, segment_max_bytes=400)
    for s in range(1, 11):
        ob.put(item(s))
    for _ in range(20):
        clock.advance(0.5)
    assert ob.spooled == 10 and ob.memory_bytes == 0
    assert len(os.listdir(tmp_path / "spool")) > 1  # several segments
    for s in range(11, 14):
        ob.put(item(s))
    server.code = 200
    for _ in range(10):
        clock.advance(1.0)
    assert server.seqs == list(range(1, 14))
    assert ob.pending == 0
    assert [n for n in os.listdir(tmp_path / "spool") if n.endswith(".jsonl")] == []
    finish(ob, clock)


def test_memory_bound_spills_oldest(clock: task.Clock, tmp_path: Any) -> None:
    """Above memory_max_bytes the oldest events go to disk even before spool_after."""
    server = FakeServer()
    server.hang = True
    ob = make(clock, server, tmp_path, flush_interval=0.1, memory_max_bytes=2000, spool_after=1000.0)
    ob.put(item(1))
    clock.advance(0.1)  # request 1 hangs in flight
    for s in range(2, 60):
        ob.put(item(s, size=100))
    assert ob.memory_bytes <= 4000  # hard bound while in flight: newer ones dropped
    assert ob.stats["dropped"] > 0
    server.hang = False
    server.code = 503
    server.pending.pop().callback((503, b""))
    assert ob.memory_bytes <= 2000  # spilled
    assert ob.spooled > 0
    server.code = 200
    for _ in range(10):
        clock.advance(1.0)
    delivered = server.seqs
    assert delivered == sorted(delivered) and delivered[0] == 1
    assert len(delivered) + ob.stats["dropped"] == 59
    finish(ob, clock)
    drops = [json.loads(x) for x in open(tmp_path / "spool" / "dropped.jsonl")]
    assert sum(d["count"] for d in drops) == ob.stats["dropped"]
    assert all(d["reason"] == "memory full" for d in drops)


def test_spool_full_records_exact_ranges(clock: task.Clock, tmp_path: Any) -> None:
    """When the spool is full, what does not fit is dropped and recorded as seq ranges."""
    server = FakeServer()
    server.code = None
    ob = make(clock, server, tmp_path, flush_interval=0.1, spool_after=0.0, spool_max_bytes=1000)
    for s in range(1, 21):
        ob.put(item(s))
    for _ in range(10):
        clock.advance(0.5)
    kept = ob.spooled
    assert 0 < kept < 20
    finish(ob, clock)
    drops = [json.loads(x) for x in open(tmp_path / "spool" / "dropped.jsonl")]
    assert drops[0]["reason"] == "spool full"
    assert sum(d["count"] for d in drops) == 20 - kept
    assert drops[0]["first_seq"] == kept + 1 and drops[-1]["last_seq"] == 20


def test_stop_spools_memory_and_restart_delivers_first(clock: task.Clock, tmp_path: Any) -> None:
    """What is unacknowledged at stop is on disk; a new outbox delivers it before new events."""
    server = FakeServer()
    server.code = None
    ob = make(clock, server, tmp_path, flush_interval=0.1, spool_after=1000.0)
    for s in range(1, 6):
        ob.put(item(s))
    clock.advance(0.1)
    finish(ob, clock)
    server.code = 200
    ob2 = make(clock, server, tmp_path, flush_interval=0.1)
    for s in range(1, 3):
        ob2.put(item(s, inc="i2"))
    clock.advance(0.1)
    clock.advance(0.1)
    assert [(e["incarnation"], e["seq"]) for b in server.batches for e in b] == [
        ("i1", 1), ("i1", 2), ("i1", 3), ("i1", 4), ("i1", 5), ("i2", 1), ("i2", 2)]
    finish(ob2, clock)


def test_stop_with_request_in_flight_cancels_at_deadline(clock: task.Clock, tmp_path: Any) -> None:
    """A hanging server does not hold up master shutdown past stop's timeout."""
    server = FakeServer()
    server.hang = True
    ob = make(clock, server, tmp_path, flush_interval=0.1)
    ob.put(item(1))
    clock.advance(0.1)
    d = ob.stop(timeout=2.0)
    assert not d.called
    clock.advance(2.0)
    assert d.called and ob.spooled == 1
    assert clock.getDelayedCalls() == []
