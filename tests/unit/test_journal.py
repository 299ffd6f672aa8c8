"""Journals: one shared set of behaviours, run against every implementation of IJournal."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from firehose.config import Retention
from firehose.event import Event
from firehose.journal import IJournal, JournalError, MemoryJournal, SQLiteJournal
from tests.unit.helpers import batch, make_event


class JournalContract:
    """Mixed into a TestCase that defines ``make_journal(retention=None, clock=None)``."""

    journal: Any

    def make_journal(self, retention: Retention | None = None, clock: IReactorTime | None = None) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.journal = self.make_journal()

    def tearDown(self) -> Any:
        return self.journal.close()

    def test_provides_interface(self) -> None:
        """The implementation provides every attribute and method of IJournal."""
        self.assertTrue(verifyObject(IJournal, self.journal))

    @defer.inlineCallbacks
    def test_offsets_are_consecutive_and_ordered(self) -> Any:
        """Each accepted event gets the next offset, across batches."""
        r1 = yield self.journal.append(batch(1, 3))
        r2 = yield self.journal.append(batch(4, 5))
        self.assertEqual([e.offset for e in r1.accepted + r2.accepted], [1, 2, 3, 4, 5])
        self.assertEqual(self.journal.head, 5)
        events = yield self.journal.read(0, 100)
        self.assertEqual([e.obj["seq"] for e in events], [1, 2, 3, 4, 5])
        self.assertEqual(events[0].cursor, f"{self.journal.epoch}:1")

    @defer.inlineCallbacks
    def test_duplicates_dropped_per_master_and_incarnation(self) -> Any:
        """A resent batch is all duplicates; the same seq from another incarnation or master is new."""
        yield self.journal.append(batch(1, 3))
        again = yield self.journal.append(batch(1, 3))
        self.assertEqual((len(again.accepted), again.duplicates), (0, 3))
        mixed = yield self.journal.append(batch(3, 4) + batch(1, 1, incarnation="i2") + batch(1, 1, master="m2"))
        self.assertEqual((len(mixed.accepted), mixed.duplicates), (3, 1))
        self.assertEqual(self.journal.head, 6)

    @defer.inlineCallbacks
    def test_concurrent_identical_batches_store_once(self) -> Any:
        """Two copies of a batch in flight at once (a retry racing the original) store it once."""
        d1 = self.journal.append(batch(1, 4))
        d2 = self.journal.append(batch(1, 4))
        r1, r2 = yield defer.gatherResults([d1, d2])
        self.assertEqual((len(r1.accepted), len(r2.accepted), r2.duplicates), (4, 0, 4))

    @defer.inlineCallbacks
    def test_seq_gap_is_counted_and_accepted(self) -> Any:
        """A seq that skips ahead is accepted (the master may have dropped some) and counted."""
        yield self.journal.append(batch(1, 2))
        r = yield self.journal.append([make_event(5)])
        self.assertEqual((len(r.accepted), r.seq_gaps), (1, 1))
        self.assertEqual(self.journal.last_seqs(), {"m1": ("i1", 5)})

    @defer.inlineCallbacks
    def test_listeners_hear_events_before_append_fires(self) -> Any:
        """Listeners get the durable events in order before the append's answer."""
        heard: list[int] = []
        self.journal.listen(lambda events: heard.extend(e.offset for e in events))
        d = self.journal.append(batch(1, 3))
        result = yield d
        self.assertEqual(heard, [1, 2, 3])
        self.assertEqual(len(result.accepted), 3)

    @defer.inlineCallbacks
    def test_read_pages(self) -> Any:
        """``read(after, limit)`` pages through the journal in order."""
        yield self.journal.append(batch(1, 7))
        page = yield self.journal.read(2, 3)
        self.assertEqual([e.offset for e in page], [3, 4, 5])
        page = yield self.journal.read(7, 3)
        self.assertEqual(page, [])

    @defer.inlineCallbacks
    def test_retention_by_count(self) -> Any:
        """Trimming keeps the newest ``max_events``; ``earliest`` moves up."""
        yield self.journal.close()
        self.journal = self.make_journal(Retention(max_age=None, max_events=3))
        yield self.journal.append(batch(1, 10))
        removed = yield self.journal.trim()
        self.assertEqual(removed, 7)
        self.assertEqual(self.journal.earliest, 8)
        page = yield self.journal.read(0, 100)
        self.assertEqual([e.offset for e in page], [8, 9, 10])

    @defer.inlineCallbacks
    def test_retention_by_age_follows_the_clock(self) -> Any:
        """Trimming drops the events received more than ``max_age`` seconds before the journal's
        clock says now, and keeps the younger ones; nothing goes before its time."""
        yield self.journal.close()
        clock = Clock()
        clock.advance(1000)
        self.journal = self.make_journal(Retention(max_age=60.0, max_events=None), clock)
        yield self.journal.append(batch(1, 3))
        clock.advance(30)
        yield self.journal.append(batch(4, 5))
        removed = yield self.journal.trim()
        self.assertEqual(removed, 0)
        clock.advance(31)  # the first batch is now 61 s old, the second 31 s
        removed = yield self.journal.trim()
        self.assertEqual((removed, self.journal.earliest), (3, 4))
        page = yield self.journal.read(0, 100)
        self.assertEqual([e.offset for e in page], [4, 5])
        self.assertEqual(clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_replayed_event_equals_published_event(self) -> Any:
        """An event read back has the same bytes, type and filter values as when published."""
        r = yield self.journal.append([make_event(1, branch="main", properties={"x": 1})])
        (back,) = yield self.journal.read(0, 1)
        live: Event = r.accepted[0]
        self.assertEqual((back.encoded, back.type, back.cursor), (live.encoded, live.type, live.cursor))
        self.assertEqual(back.values("branch"), ("main",))
        self.assertEqual(back.values("prop.x"), ("1",))


class MemoryJournalTests(JournalContract, TestCase):
    def make_journal(self, retention: Retention | None = None, clock: IReactorTime | None = None) -> MemoryJournal:
        return MemoryJournal(epoch="e1", retention=retention, clock=clock)


class SQLiteJournalTests(JournalContract, TestCase):
    def make_journal(self, retention: Retention | None = None, clock: IReactorTime | None = None) -> SQLiteJournal:
        self.path = os.path.join(self.mktemp() if not hasattr(self, "path") else os.path.dirname(self.path), "j.sqlite")
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # The global reactor runs the threads; ``clock`` (when given) only tells the time.
        return SQLiteJournal(self.path, retention=retention or Retention(max_age=None, max_events=None), clock=clock)

    @defer.inlineCallbacks
    def test_group_of_any_size_is_stored_whole_and_in_order(self) -> Any:
        """The events go in multi-row INSERTs of power-of-two chunks: groups of sizes around
        and past the chunk bounds (one commit each, or several batches in one) store every
        event once, in order, with its own bytes."""
        sizes = [1, 2, 3, 255, 256, 257, 513, 777]
        first, results = 1, []
        for n in sizes:
            results.append(self.journal.append(batch(first, first + n - 1)))
            first += n
        done = yield defer.gatherResults(results)
        accepted = [e for r in done for e in r.accepted]
        stored = yield self.journal.read(0, 10_000)
        self.assertEqual([e.offset for e in stored], list(range(1, first)))
        self.assertEqual([(e.offset, e.encoded) for e in stored], [(e.offset, e.encoded) for e in accepted])
        self.assertEqual([e.obj["seq"] for e in stored], list(range(1, first)))

    @defer.inlineCallbacks
    def test_reopen_keeps_events_epoch_and_dedup(self) -> Any:
        """After a restart the epoch, the events and the dedup state are all still there."""
        yield self.journal.append(batch(1, 4))
        epoch = self.journal.epoch
        yield self.journal.close()
        self.journal = SQLiteJournal(self.path)
        self.assertEqual((self.journal.epoch, self.journal.head), (epoch, 4))
        again = yield self.journal.append(batch(3, 5))
        self.assertEqual((len(again.accepted), again.duplicates), (1, 2))
        self.assertEqual(again.accepted[0].offset, 5)

    @defer.inlineCallbacks
    def test_recreated_database_has_new_epoch(self) -> Any:
        """Deleting the database makes a new epoch, so old cursors are recognised as foreign."""
        epoch = self.journal.epoch
        yield self.journal.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.remove(self.path + suffix)
        self.journal = SQLiteJournal(self.path)
        self.assertNotEqual(self.journal.epoch, epoch)

    @defer.inlineCallbacks
    def test_offsets_continue_after_everything_trimmed(self) -> Any:
        """When retention removed every event, new offsets still follow the old head."""
        yield self.journal.close()
        self.journal = self.make_journal(Retention(max_age=0.0, max_events=None))
        yield self.journal.append(batch(1, 3))
        yield self.journal.trim()
        yield self.journal.close()
        self.journal = self.make_journal()
        self.assertEqual((self.journal.head, self.journal.earliest), (3, 4))
        r = yield self.journal.append(batch(4, 4))
        self.assertEqual(r.accepted[0].offset, 4)

    @defer.inlineCallbacks
    def test_failed_write_acknowledges_nothing_and_changes_nothing(self) -> Any:
        """If the commit fails, the batch errs, dedup state is untouched and a retry succeeds."""
        yield self.journal.append(batch(1, 2))
        real = self.journal._store_sync

        def broken(rows: Any, sources: Any) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        self.journal._store_sync = broken
        yield self.assertFailure(self.journal.append(batch(3, 4)), JournalError)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.assertEqual(self.journal.head, 2)
        self.journal._store_sync = real
        r = yield self.journal.append(batch(3, 4))
        self.assertEqual([e.offset for e in r.accepted], [3, 4])

    def test_unusable_path_is_a_clear_error(self) -> None:
        """A database path in a missing directory fails with a message naming the path."""
        with self.assertRaises(JournalError) as caught:
            SQLiteJournal("/nonexistent-dir/sub/j.sqlite")
        self.assertIn("/nonexistent-dir/sub/j.sqlite", str(caught.exception))


class ReadBoundTests(TestCase):
    def test_read_never_returns_committed_but_unpublished_events(self) -> None:
        """Rows committed by the writer thread but not yet announced to listeners (head not yet
        advanced) are invisible to readers, so no reader gets ahead of the live feed."""
        path = os.path.join(self.mktemp(), "j.sqlite")
        os.makedirs(os.path.dirname(path))
        journal = SQLiteJournal(path)
        self.addCleanup(journal.close)
        d = journal.append(batch(1, 2))

        def appended(_: Any) -> Any:
            event = Event.build(3, f"{journal.epoch}:3", type="build.started", master="m1",
                                incarnation="i1", seq=3, time=1.0, data={"buildid": 3, "number": 3, "builder": "b"})
            # Commit a row the way the writer thread does, without the reactor-side announcement.
            journal._store_sync([3, 0.0, event.type, event.encoded], [("m1", "i1", 3, 0.0)])
            return journal.read(0, 10)

        d.addCallback(appended)
        d.addCallback(lambda events: self.assertEqual([e.offset for e in events], [1, 2]))
        return d


class MemoryRetentionTests(TestCase):
    def test_memory_journal_applies_age_retention(self) -> None:
        """``max_age`` removes old events from the in-memory journal too (its default clock is
        the wall clock, so events received a moment ago are older than an age of 0)."""
        journal = MemoryJournal(epoch="e1", retention=Retention(max_age=0.0, max_events=None))
        self.successResultOf(journal.append(batch(1, 5)))
        self.assertEqual(self.successResultOf(journal.trim()), 5)
        self.assertEqual((journal.earliest, journal.head), (6, 5))

    def test_write_failure_is_dated_by_the_clock(self) -> None:
        """``write_health.since`` is the journal clock's time of the first failed write."""
        clock = Clock()
        clock.advance(500)
        journal = MemoryJournal(epoch="e1", clock=clock)
        journal.fail_writes = OSError(28, "No space left on device")
        self.failureResultOf(journal.append(batch(1, 1)), JournalError)
        self.flushLoggedErrors(OSError)
        clock.advance(10)
        self.failureResultOf(journal.append(batch(1, 1)), JournalError)
        self.flushLoggedErrors(OSError)
        self.assertEqual((journal.write_health.since, journal.write_health.failures), (500.0, 2))


class GroupCommitDedupTests(TestCase):
    def test_identical_batches_in_one_commit_group_store_once(self) -> None:
        """Two copies of a batch that wait for the same group commit (a retry racing the
        original while an earlier write is in flight) are stored once."""
        journal = MemoryJournal(epoch="e1")
        held: list[defer.Deferred[None]] = []
        real_store = journal._store

        def hold_first(events: list[Event]) -> defer.Deferred[None]:
            if not held:
                d: defer.Deferred[None] = defer.Deferred()
                held.append(d)
                return d.addCallback(lambda _: self.successResultOf(real_store(events)))
            return real_store(events)

        journal._store = hold_first  # type: ignore[method-assign]
        first = journal.append(batch(1, 1, incarnation="earlier"))
        a = journal.append(batch(1, 4))
        b = journal.append(batch(1, 4))
        held[0].callback(None)
        self.successResultOf(first)
        ra, rb = self.successResultOf(a), self.successResultOf(b)
        self.assertEqual((len(ra.accepted), len(rb.accepted), rb.duplicates), (4, 0, 4))
        self.assertEqual(journal.head, 5)


class RedisJournalTests(JournalContract, TestCase):
    """The same contract on the shared journal, against a real ``redis-server`` (started per
    test on a loopback port with its own directory; the test fails if none is installed).
    Appends are delivered back through the node's reader loop, so the global reactor runs."""

    def setUp(self) -> None:
        from tests.redis_server import RedisServer

        self.redis = RedisServer(self.mktemp())
        self.redis.start()
        self.addCleanup(self.redis.stop)
        super().setUp()

    def make_journal(self, retention: Retention | None = None, clock: IReactorTime | None = None) -> Any:
        from firehose.redis_journal import RedisJournal

        return RedisJournal(self.redis.url, retention=retention or Retention(max_age=None, max_events=None), clock=clock)
