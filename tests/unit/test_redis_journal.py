"""The shared journal beyond the contract: several nodes on one real ``redis-server``.

Two :class:`RedisJournal` instances on one Redis stand for two nodes (the e2e tests run real
processes).  Each waits on what its reader loop delivers, never on time.
"""

from __future__ import annotations

from typing import Any

import redis
from twisted.internet import defer
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from firehose import redis_journal as rj
from firehose.config import Retention
from firehose.event import Event
from firehose.hub import Hub
from firehose.journal import IJournal, JournalError
from firehose.redis_journal import RedisJournal, _packed
from firehose.web import _health
from tests.redis_server import RedisServer
from tests.unit.helpers import batch


class Recorder:
    """Listens to a journal; :meth:`until` fires once ``head`` reached an offset."""

    def __init__(self, journal: RedisJournal) -> None:
        self.journal = journal
        self.seen: list[tuple[int, str, bytes]] = []
        self._waits: list[tuple[int, defer.Deferred[None]]] = []
        journal.listen(self._heard)

    def _heard(self, events: list[Any]) -> None:
        self.seen += [(e.offset, e.cursor, e.encoded) for e in events]
        ready = [w for w in self._waits if w[0] <= self.journal.head]
        self._waits = [w for w in self._waits if w[0] > self.journal.head]
        for _, d in ready:
            d.callback(None)

    def until(self, offset: int) -> defer.Deferred[None]:
        if self.journal.head >= offset:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waits.append((offset, d))
        return d


class RedisJournalNodesTests(TestCase):
    def setUp(self) -> None:
        self.server = RedisServer(self.mktemp())
        self.server.start()
        self.addCleanup(self.server.stop)

    def node(self, **kw: Any) -> RedisJournal:
        journal = RedisJournal(self.server.url, retention=Retention(max_age=None, max_events=None), **kw)
        self.addCleanup(journal.close)
        return journal

    @defer.inlineCallbacks
    def test_two_nodes_see_one_stream(self) -> Any:
        """Events appended through either node reach both nodes' listeners with the same
        offsets, cursors and bytes, in the same order, and both read back the same."""
        a, b = self.node(), self.node()
        self.assertTrue(verifyObject(IJournal, a))
        self.assertEqual(a.epoch, b.epoch)
        ra, rb = Recorder(a), Recorder(b)
        yield a.append(batch(1, 3, master="m1"))
        yield b.append(batch(1, 2, master="m2"))
        yield a.append(batch(4, 5, master="m1"))
        yield defer.gatherResults([ra.until(7), rb.until(7)])
        self.assertEqual([o for o, _, _ in ra.seen], list(range(1, 8)))
        self.assertEqual(ra.seen, rb.seen)
        back_a = yield a.read(0, 100)
        back_b = yield b.read(0, 100)
        self.assertEqual([(e.offset, e.cursor, e.encoded) for e in back_a], ra.seen)
        self.assertEqual([(e.offset, e.cursor, e.encoded) for e in back_b], ra.seen)
        self.assertEqual(b.last_seqs(), {"m1": ("i1", 5), "m2": ("i1", 2)})

    @defer.inlineCallbacks
    def test_same_batch_through_two_nodes_at_once_is_stored_once(self) -> Any:
        """A retried batch sent to two nodes concurrently is stored once: what one node
        accepts the other counts as duplicates, whichever script ran first."""
        a, b = self.node(), self.node()
        ra, rb = yield defer.gatherResults([a.append(batch(1, 50)), b.append(batch(1, 50))])
        self.assertEqual(len(ra.accepted) + len(rb.accepted), 50)
        self.assertEqual(ra.duplicates + rb.duplicates, 50)
        yield Recorder(b).until(50)
        stored = yield b.read(0, 1000)
        self.assertEqual([e.obj["seq"] for e in stored], list(range(1, 51)))

    @defer.inlineCallbacks
    def test_flushall_makes_a_new_epoch(self) -> Any:
        """When Redis loses everything (FLUSHALL), a running node refuses to write into the new
        stream (503) and says why; a node opened afterwards starts a new epoch, so old cursors
        get the epoch gap."""
        a = self.node()
        yield a.append(batch(1, 3))
        old = a.epoch
        redis.Redis.from_url(self.server.url).flushall()
        yield self.assertFailure(a.append(batch(4, 4)), JournalError)
        self.assertFalse(a.write_health.writable)
        self.assertIn("restart this node", a.link()["last_error"])
        b = self.node()
        self.assertNotEqual(b.epoch, old)
        self.assertEqual((b.head, b.earliest), (0, 1))

    @defer.inlineCallbacks
    def test_acknowledged_events_survive_kill_9_of_redis(self) -> Any:
        """With AOF and ``appendfsync always``, every batch whose append fired is still there
        after Redis is killed with SIGKILL and restarted (same epoch, same offsets)."""
        a = self.node()
        acked: list[tuple[int, str]] = []
        for first in range(1, 200, 20):
            r = yield a.append(batch(first, first + 19))
            acked += [(e.offset, e.cursor) for e in r.accepted]
        epoch = a.epoch
        self.server.kill()
        self.server.restart()
        b = self.node()
        self.assertEqual((b.epoch, b.head), (epoch, 200))
        back = yield b.read(0, 1000)
        self.assertEqual([(e.offset, e.cursor) for e in back], acked)
        again = yield b.append(batch(195, 201))
        self.assertEqual((len(again.accepted), again.duplicates), (1, 6))

    @defer.inlineCallbacks
    def test_redis_down_fails_appends_then_recovers(self) -> Any:
        """While Redis is down an append fails with JournalError (ingest's 503) and /health
        shows the link down and degraded; once Redis is back, appends succeed and are delivered
        again through the reader loop, resuming where it was."""
        a = self.node()
        rec = Recorder(a)
        hub = Hub(a)
        yield a.append(batch(1, 2))
        self.server.kill()
        yield self.assertFailure(a.append(batch(3, 4)), JournalError)
        health = _health(hub, a)
        self.assertEqual(health["status"], "degraded")
        self.assertFalse(health["redis"]["connected"])
        self.assertTrue(health["redis"]["last_error"])
        self.server.restart()
        r = yield a.append(batch(3, 4))
        self.assertEqual([e.offset for e in r.accepted], [3, 4])
        self.assertEqual([o for o, _, _ in rec.seen], [1, 2, 3, 4])
        health = _health(hub, a)
        self.assertEqual(health["status"], "ok")
        self.assertTrue(health["redis"]["connected"])
        self.assertEqual(health["redis"]["lag"], 0)

    @defer.inlineCallbacks
    def test_too_few_replicas_is_not_acknowledged(self) -> Any:
        """With ``wait_replicas=1`` and no replica, the batch is stored but its append fails
        (not acknowledged); the master's retry is then a duplicate, not a second copy."""
        a = self.node(wait_replicas=1, wait_timeout_ms=50)
        yield self.assertFailure(a.append(batch(1, 2)), JournalError)
        b = self.node()
        again = yield b.append(batch(1, 2))
        self.assertEqual((len(again.accepted), again.duplicates), (0, 2))


class OwnEventsTests(TestCase):
    """A node hands its listeners the events it stored itself from what it wrote, not from
    reading them back; what they hold is the same as what any node reads from the stream."""

    def setUp(self) -> None:
        self.server = RedisServer(self.mktemp())
        self.server.start()
        self.addCleanup(self.server.stop)

    def node(self, **kw: Any) -> RedisJournal:
        journal = RedisJournal(self.server.url, retention=Retention(max_age=None, max_events=None), **kw)
        self.addCleanup(journal.close)
        return journal

    @defer.inlineCallbacks
    def test_own_events_are_delivered_as_written(self) -> Any:
        """The listeners get the very events of the append's result (decoded already), with
        the bytes another node reads from the stream."""
        a, b = self.node(), self.node()
        heard: list[Any] = []
        a.listen(heard.extend)
        rb = Recorder(b)
        r = yield a.append(batch(1, 5))
        self.assertEqual([id(e) for e in heard], [id(e) for e in r.accepted])
        yield rb.until(5)
        self.assertEqual([(e.offset, e.cursor, e.encoded) for e in heard], rb.seen)

    @defer.inlineCallbacks
    def test_interleaved_nodes_deliver_one_order(self) -> Any:
        """Batches of two nodes, appended concurrently and one after another, reach both
        nodes' listeners in offset order with no offset missing or doubled, the same bytes as
        a read, whichever node wrote each."""
        a, b = self.node(), self.node()
        ra, rb = Recorder(a), Recorder(b)
        seqs = {"m1": 0, "m2": 0}

        def more(node: RedisJournal, master: str, n: int) -> Any:
            first = seqs[master] + 1
            seqs[master] += n
            return node.append(batch(first, first + n - 1, master=master))

        for n in (1, 3, 7):
            yield defer.gatherResults([more(a, "m1", n), more(b, "m2", n + 1), more(a, "m1", 2)])
            yield more(b, "m2", 1)
        total = sum(seqs.values())
        yield defer.gatherResults([ra.until(total), rb.until(total)])
        self.assertEqual([o for o, _, _ in ra.seen], list(range(1, total + 1)))
        self.assertEqual(ra.seen, rb.seen)
        back = yield a.read(0, 1000)
        self.assertEqual([(e.offset, e.cursor, e.encoded) for e in back], ra.seen)
        self.assertEqual(a.last_seqs(), b.last_seqs())

    @defer.inlineCallbacks
    def test_lengths_are_counted_in_bytes(self) -> Any:
        """An incarnation and data beyond ASCII are stored and read back exactly (the script
        cuts its argument by lengths in bytes)."""
        a, b = self.node(), self.node()
        rb = Recorder(b)
        events = batch(1, 2, incarnation="inc-é✓\n 2")
        events[1]["data"]["note"] = "ünïcødé ✓ \n\u2028 " * 20
        r = yield a.append(events)
        yield rb.until(2)
        self.assertEqual([e.encoded for e in r.accepted], [enc for _, _, enc in rb.seen])
        back = yield b.read(0, 10)
        self.assertEqual([e.obj for e in back], [e.obj for e in r.accepted])
        self.assertEqual(back[1].obj["data"]["note"], events[1]["data"]["note"])

    def test_malformed_arguments_write_nothing(self) -> None:
        """The script reads and checks every length before it writes: arguments that do not
        add up are an error and leave the stream, the counter and the dedup state as they were."""
        a = self.node()
        client = redis.Redis.from_url(self.server.url)
        self.addCleanup(client.close)
        lens, data = _packed({"master": "m1", "incarnation": "i1", "seq": 1, "type": "build.started"}, b'{"x":1}')
        before = (client.xlen(a._stream), client.get(a._keys[1]), client.hgetall(a._keys[3]))
        for bad_lens, bad_data in ((lens * 2, data + data[:-1]), (lens + b"1 2 3", data + b"abcdef"),
                                   (lens, data + b"more"), (lens + b"x", data)):
            with self.assertRaises(redis.ResponseError):
                client.eval(rj._APPEND, len(a._keys), *a._keys, a.epoch, "0", bad_lens, bad_data)
        self.assertEqual((client.xlen(a._stream), client.get(a._keys[1]), client.hgetall(a._keys[3])), before)

    @defer.inlineCallbacks
    def test_past_the_bound_own_events_are_read_back(self) -> Any:
        """Past ``OWN_MAX`` kept events the oldest runs are let go (the loop then reads them
        from the stream): the listeners still hear everything, once, in order."""
        self.patch(rj, "OWN_MAX", 3)
        a = self.node()
        # Runs far ahead of the stream, which the loop never reaches: only the bound acts.
        far = [Event(1000 + i, f"{a.epoch}:{1000 + i}", "build.started", b"{}", {}) for i in range(6)]
        a._own_written(far[:2])
        a._own_written(far[2:4])
        a._own_written(far[4:])
        self.assertEqual(([run[0].offset for run in a._own], a._own_count), ([1004], 2))
        a._own.clear()
        a._own_count = 0
        rec = Recorder(a)
        results = yield defer.gatherResults([a.append(batch(1, 4)), a.append(batch(5, 6)), a.append(batch(7, 11))])
        yield rec.until(11)
        self.assertEqual([o for o, _, _ in rec.seen], list(range(1, 12)))
        self.assertEqual(sum(len(r.accepted) for r in results), 11)
