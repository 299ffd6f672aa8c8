"""Unit tests of the outbox's failover between several nodes of one firehose, on a ``Clock``.

Each node is a fake sender; nodes that share a journal share a :class:`SharedJournal`, which
drops a duplicate ``(incarnation, seq)`` the way the server does, so "stored once" can be
checked without a real server.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet import defer, error, task

from buildbot_plugin.outbox import Item, Outbox
from firehose.event import dumps

from .plugin_testlib import finish_outbox as finish
from .plugin_testlib import make_outbox


class SharedJournal:
    """What nodes on one Redis share: events stored once per ``(master, incarnation, seq)``."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.duplicates = 0
        self._keys: set[tuple[str, str, int]] = set()

    def store(self, batch: list[dict[str, Any]]) -> None:
        for e in batch:
            key = (e["master"], e["incarnation"], e["seq"])
            if key in self._keys:
                self.duplicates += 1
                continue
            self._keys.add(key)
            self.events.append(e)

    @property
    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.events]


class Node:
    """A fake sender for one node.  ``mode`` says how it answers the next request:

    * ``ok``: stores the batch and answers 200;
    * an ``int``: answers that status code, storing nothing;
    * ``refused`` / ``reset``: fails as an unreachable node does;
    * ``timeout``: the request is cancelled, as treq's ``timeout`` cancels it;
    * ``lost``: stores the batch, then the answer never arrives (connection lost).
    """

    def __init__(self, journal: SharedJournal, mode: Any = "ok") -> None:
        self.journal = journal
        self.mode = mode
        self.requests: list[list[int]] = []

    def __call__(self, body: bytes) -> defer.Deferred[Any]:
        batch = json.loads(body)
        self.requests.append([e["seq"] for e in batch])
        mode = self.mode
        if mode == "ok":
            self.journal.store(batch)
            return defer.succeed((200, b'{"accepted": %d}' % len(batch)))
        if mode == "lost":
            self.journal.store(batch)
            return defer.fail(error.ConnectionLost("node died before answering"))
        if mode == "refused":
            return defer.fail(error.ConnectionRefusedError("refused"))
        if mode == "reset":
            return defer.fail(ConnectionResetError("reset by peer"))
        if mode == "timeout":
            d: defer.Deferred[Any] = defer.Deferred()
            d.cancel()  # what treq's timeout does to a request that took too long
            return d
        return defer.succeed((mode, b'{"error": "nope"}'))

    @property
    def seqs(self) -> list[int]:
        return [s for r in self.requests for s in r]


def item(seq: int, inc: str = "i1") -> Item:
    body = dumps({"master": "m", "incarnation": inc, "seq": seq, "type": "master.heartbeat", "time": 1.0,
                  "data": {}})
    return Item("m", inc, seq, body)


@pytest.fixture
def clock() -> task.Clock:
    return task.Clock()


def make(clock: task.Clock, nodes: list[Node], tmp_path: Any, **kw: Any) -> Outbox:
    kw.setdefault("flush_interval", 0.1)
    kw.setdefault("spool_after", 1000.0)
    return make_outbox(clock, nodes, tmp_path, **kw)


def delays(clock: task.Clock) -> list[float]:
    return [round(c.getTime() - clock.seconds(), 3) for c in clock.getDelayedCalls()]


@pytest.mark.parametrize("failure", ["refused", "reset", "timeout", "lost", 500, 502, 503, 504, 408, 429])
def test_each_node_failure_fails_over_at_once(clock: task.Clock, tmp_path: Any, failure: Any) -> None:
    """A batch that fails on the first node in a way another node may not (unreachable,
    reset, timed out, lost answer, 5xx, 408, 429) goes to the second node at once, without a
    backoff; it is stored once, and the outbox has no timer left waiting."""
    journal = SharedJournal()
    a, b = Node(journal, failure), Node(journal)
    ob = make(clock, [a, b], tmp_path)
    ob.put(item(1))
    clock.advance(0.1)
    assert a.seqs == [1] and b.seqs == [1]
    assert journal.seqs == [1]
    assert journal.duplicates == (1 if failure == "lost" else 0)
    assert ob.pending == 0 and ob.stats["failovers"] == 1
    assert delays(clock) == []  # delivered: nothing waits for a backoff
    finish(ob, clock)


@pytest.mark.parametrize("code", [401, 403, 404])
def test_an_answer_every_node_would_give_is_not_failed_over(clock: task.Clock, tmp_path: Any, code: int) -> None:
    """A 401, 403 or 404 would be the same on every node of one firehose: the outbox backs
    off and retries on the same node, and the other node never sees the batch."""
    journal = SharedJournal()
    a, b = Node(journal, code), Node(journal)
    ob = make(clock, [a, b], tmp_path)
    ob.put(item(1))
    clock.advance(0.1)
    assert delays(clock) == [0.5]
    clock.advance(0.5)
    assert a.seqs == [1, 1] and b.seqs == []
    a.mode = "ok"
    clock.advance(1.0)
    assert journal.seqs == [1] and b.seqs == [] and ob.stats["failovers"] == 0
    finish(ob, clock)


def test_a_rejected_batch_is_dropped_not_failed_over(clock: task.Clock, tmp_path: Any) -> None:
    """A 422 (the server rejects the events themselves) is dropped and recorded, as with
    one node; the other node is not asked."""
    journal = SharedJournal()
    a, b = Node(journal, 422), Node(journal)
    ob = make(clock, [a, b], tmp_path)
    ob.put(item(1))
    clock.advance(0.1)
    assert b.seqs == [] and ob.stats["dropped"] == 1 and ob.pending == 0
    finish(ob, clock)


def test_sticky_stays_on_the_node_that_works(clock: task.Clock, tmp_path: Any) -> None:
    """After failing over to the second node, later batches keep going there even once the
    first node is back: the outbox does not alternate between working nodes."""
    journal = SharedJournal()
    a, b = Node(journal, "refused"), Node(journal)
    ob = make(clock, [a, b], tmp_path)
    ob.put(item(1))
    clock.advance(0.1)
    a.mode = "ok"
    for seq in range(2, 6):
        ob.put(item(seq))
        clock.advance(0.1)
    assert a.seqs == [1] and b.seqs == [1, 2, 3, 4, 5]
    assert journal.seqs == [1, 2, 3, 4, 5]
    finish(ob, clock)


def test_round_robin_then_backoff_when_every_node_is_down(clock: task.Clock, tmp_path: Any) -> None:
    """With every node down, each is tried once in a row, then the outbox waits the usual
    backoff (0.5, then 1.0 ...) before the next round, which starts at the next node in turn;
    the first node to come back gets the batch, and the later ones after it."""
    journal = SharedJournal()
    nodes = [Node(journal, "refused"), Node(journal, 503), Node(journal, "timeout")]
    a, b, c = nodes
    ob = make(clock, nodes, tmp_path)
    ob.put(item(1))
    clock.advance(0.1)
    assert [n.seqs for n in nodes] == [[1], [1], [1]]
    assert delays(clock) == [0.5]
    clock.advance(0.5)
    assert [n.seqs for n in nodes] == [[1, 1], [1, 1], [1, 1]]
    assert delays(clock) == [1.0]
    b.mode = "ok"  # the second node comes back first
    clock.advance(1.0)
    assert a.seqs == [1, 1, 1] and b.seqs == [1, 1, 1] and c.seqs == [1, 1]
    assert journal.seqs == [1] and ob.pending == 0
    ob.put(item(2))
    clock.advance(0.1)
    assert b.seqs[-1] == 2 and journal.seqs == [1, 2]
    assert ob.backoff.attempts == 0, "a success resets the backoff"
    finish(ob, clock)


def test_one_url_backs_off_as_before(clock: task.Clock, tmp_path: Any) -> None:
    """With a single node (a list of one), every failure backs off: failover changes nothing
    for the one-URL configuration."""
    journal = SharedJournal()
    a = Node(journal, "refused")
    ob = make(clock, [a], tmp_path)
    ob.put(item(1))
    clock.advance(0.1)
    assert delays(clock) == [0.5]
    clock.advance(0.5)
    assert delays(clock) == [1.0] and a.seqs == [1, 1]
    a.mode = "ok"
    clock.advance(1.0)
    assert journal.seqs == [1] and ob.stats["failovers"] == 0
    finish(ob, clock)


def test_order_kept_and_no_duplicate_across_failovers(clock: task.Clock, tmp_path: Any) -> None:
    """Nodes die one after the other, one of them after storing a batch but before answering;
    every batch is resent whole to the next node, in order, so the shared journal holds every
    seq once and in order, and each node saw contiguous, increasing batches."""
    journal = SharedJournal()
    nodes = [Node(journal), Node(journal), Node(journal)]
    ob = make(clock, nodes, tmp_path, batch_max_events=3)
    seq = 0
    script = [(0, "lost"), (1, 503), (2, "reset"), (0, "ok")]
    for which, mode in script:
        nodes[which].mode = mode
        for _ in range(7):
            seq += 1
            ob.put(item(seq))
        clock.advance(0.1)
        clock.advance(0.1)
        for n in nodes:
            n.mode = "ok" if n is not nodes[which] else n.mode
    nodes[0].mode = nodes[1].mode = nodes[2].mode = "ok"
    clock.advance(0.1)
    assert journal.seqs == list(range(1, seq + 1))
    assert journal.duplicates == 3  # the one batch stored whose answer was lost
    assert ob.pending == 0 and ob.stats["failovers"] >= 3
    for n in nodes:
        for r in n.requests:
            assert r == list(range(r[0], r[0] + len(r)))
    finish(ob, clock)


def test_separate_journals_would_store_a_lost_answer_twice(clock: task.Clock, tmp_path: Any) -> None:
    """Why several URLs must be nodes of ONE firehose: with a journal each, a batch stored by
    a node that died before answering is stored again by the next one (the plugin cannot
    tell); with a shared journal it is dropped as a duplicate (previous test)."""
    j1, j2 = SharedJournal(), SharedJournal()
    a, b = Node(j1, "lost"), Node(j2)
    ob = make(clock, [a, b], tmp_path)
    ob.put(item(1))
    clock.advance(0.1)
    assert j1.seqs == [1] and j2.seqs == [1]
    finish(ob, clock)


def test_spool_drains_to_the_node_that_comes_back(clock: task.Clock, tmp_path: Any) -> None:
    """While every node is down, events spill to the spool as with one node; when a node
    comes back the spool drains to it first, oldest first, then memory."""
    journal = SharedJournal()
    a, b = Node(journal, "refused"), Node(journal, "refused")
    ob = make(clock, [a, b], tmp_path, spool_after=0.5, batch_max_events=2)
    for seq in range(1, 5):
        ob.put(item(seq))
    clock.advance(0.1)
    clock.advance(0.5)
    clock.advance(1.0)
    assert ob.spooled > 0
    for seq in range(5, 7):
        ob.put(item(seq))
    b.mode = "ok"
    for _ in range(5):
        clock.advance(2.0)
    assert journal.seqs == list(range(1, 7)) and ob.pending == 0 and ob.spooled == 0
    finish(ob, clock)


def test_stop_tries_the_next_node_before_spooling(clock: task.Clock, tmp_path: Any) -> None:
    """At stop, a batch that fails on one node still goes to the next node (the round is not
    over); only when every node has failed does the rest go to the spool."""
    journal = SharedJournal()
    a, b = Node(journal, "refused"), Node(journal)
    ob = make(clock, [a, b], tmp_path, flush_interval=10.0)
    ob.put(item(1))
    d = ob.stop(timeout=1.0)
    assert a.seqs == [1] and b.seqs == [1] and journal.seqs == [1]
    clock.advance(1.0)
    assert d.called and ob.spooled == 0 and clock.getDelayedCalls() == []


def test_stop_spools_when_every_node_fails(clock: task.Clock, tmp_path: Any) -> None:
    """At stop with every node down, each is tried once and the batch goes to the spool for
    the next run (no backoff wait at stop)."""
    journal = SharedJournal()
    a, b = Node(journal, 503), Node(journal, "refused")
    ob = make(clock, [a, b], tmp_path, flush_interval=10.0)
    ob.put(item(1))
    d = ob.stop(timeout=1.0)
    assert a.seqs == [1] and b.seqs == [1]
    assert d.called and journal.seqs == []
    assert sorted(p.name for p in (tmp_path / "spool").iterdir() if p.suffix == ".jsonl") == ["000000000000.jsonl"]
    assert clock.getDelayedCalls() == []


def test_set_senders_and_sender_property(clock: task.Clock, tmp_path: Any) -> None:
    """``sender`` is the node in use (replacing it swaps that node only); ``set_senders``
    (reconfig) starts again from the first node of the new list."""
    journal = SharedJournal()
    a, b, c = Node(journal, "refused"), Node(journal), Node(journal)
    ob = make(clock, [a, b], tmp_path)
    ob.put(item(1))
    clock.advance(0.1)
    assert ob.sender is b
    ob.set_senders([c])
    ob.put(item(2))
    clock.advance(0.1)
    assert c.seqs == [2] and journal.seqs == [1, 2]
    with pytest.raises(ValueError):
        ob.set_senders([])
    finish(ob, clock)
