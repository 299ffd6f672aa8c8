"""The hub: replay, live fan-out, the seam between them, gaps and slow subscribers."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from firehose.cursor import CursorError
from firehose.event import Event
from firehose.filters import Filter, parse_json
from firehose.hub import Hub
from firehose.journal import MemoryJournal, Retention
from tests.unit.helpers import HeldReads, RecordingSink, batch


class HubTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.journal = MemoryJournal(epoch="e1")
        self.hub = Hub(self.journal, page_size=10, max_pending=20)

    def append(self, first: int, last: int, **kw: object) -> None:
        self.successResultOf(self.journal.append(batch(first, last, **kw)))

    def subscribe(self, since: str | None = None, flt: Filter | None = None) -> tuple[RecordingSink, object]:
        sink = RecordingSink()
        sub = self.hub.subscribe(sink, flt or Filter.everything(), since, "test")
        sub.start()
        return sink, sub

    def test_live_only_by_default(self) -> None:
        """Without ``since`` a subscriber gets only events published after it subscribed."""
        self.append(1, 5)
        sink, _ = self.subscribe()
        self.append(6, 8)
        self.assertEqual(sink.seqs, [6, 7, 8])

    def test_replay_from_earliest_then_live(self) -> None:
        """``since=earliest`` replays every retained event across pages, then continues live."""
        self.append(1, 35)
        sink, sub = self.subscribe("earliest")
        self.append(36, 40)
        self.assertEqual(sink.seqs, list(range(1, 41)))
        self.assertTrue(sub.live)

    def test_resume_from_cursor_exactly_once(self) -> None:
        """A cursor resumes after the event it names: nothing before it, nothing twice."""
        self.append(1, 12)
        sink, _ = self.subscribe("e1:7")
        self.append(13, 14)
        self.assertEqual(sink.seqs, list(range(8, 15)))

    def test_seam_events_published_during_replay_delivered_once(self) -> None:
        """Events published while the last replay page is being read arrive once, in order."""
        self.append(1, 25)
        journal = self.journal
        # As with the SQLite reader: events published while a read is in flight are not in its
        # page; they reach the subscription only live.
        reads = HeldReads(journal)
        sink, sub = self.subscribe("e1:0")
        for _ in range(10):  # bounded: 25 events in pages of 10 take 3 reads
            if not reads.pending:
                break
            self.append(journal.head + 1, journal.head + 2)  # while this read is in flight
            reads.release()
        self.assertTrue(sub.live)
        self.append(journal.head + 1, journal.head + 3)
        self.assertEqual(sink.offsets, list(range(1, journal.head + 1)))

    def test_filter_applies_to_replay_and_live(self) -> None:
        """Only matching events are delivered, from the journal and live alike."""
        self.append(1, 4, builder="linux")
        self.append(5, 6, builder="mac")
        sink, _ = self.subscribe("earliest", parse_json({"builder": "mac*"}))
        self.append(7, 8, builder="linux")
        self.append(9, 9, builder="macos")
        self.assertEqual(sink.seqs, [5, 6, 9])

    def test_other_epoch_gets_gap_then_everything(self) -> None:
        """A cursor from another journal gets an ``epoch`` gap, then all retained events."""
        self.append(1, 3)
        sink, _ = self.subscribe("other:2")
        self.assertEqual(len(sink.gaps), 1)
        gap, final = sink.gaps[0]
        self.assertEqual((gap["type"], gap["reason"], gap["cursor"], final), ("gap", "epoch", "e1:0", False))
        self.assertEqual(sink.seqs, [1, 2, 3])

    def test_expired_cursor_gets_gap_with_earliest(self) -> None:
        """A cursor older than retention gets an ``expired`` gap naming where the stream resumes."""
        self.journal = MemoryJournal(epoch="e1", retention=Retention(max_age=None, max_events=5))
        self.hub = Hub(self.journal, page_size=10, max_pending=20)
        self.append(1, 12)
        self.successResultOf(self.journal.trim())
        sink, _ = self.subscribe("e1:2")
        gap, _ = sink.gaps[0]
        self.assertEqual((gap["reason"], gap["cursor"], gap["earliest"]), ("expired", "e1:7", "e1:7"))
        self.assertEqual(sink.seqs, [8, 9, 10, 11, 12])

    def test_cursor_ahead_of_stream_is_an_error(self) -> None:
        """A cursor past the newest event cannot be honoured and says so."""
        self.append(1, 2)
        with self.assertRaises(CursorError):
            self.hub.subscribe(RecordingSink(), Filter.everything(), "e1:99", "test")

    def test_malformed_cursor_is_an_error(self) -> None:
        """A string that is not a cursor raises instead of meaning 'from the start'."""
        with self.assertRaises(CursorError):
            self.hub.subscribe(RecordingSink(), Filter.everything(), "yesterday", "test")

    def test_resolve_reads_since_as_subscribe_does(self) -> None:
        """``Hub.resolve`` (which a webhook uses to refuse a bad ``since`` at registration) reads
        ``now``/empty/None as the head, ``earliest`` as before the oldest retained event, a cursor
        as its offset, another epoch as the oldest with an ``epoch`` gap; and refuses the rest."""
        self.append(1, 5)
        for since in (None, "", "now"):
            self.assertEqual(self.hub.resolve(since), (5, None))
        self.assertEqual(self.hub.resolve("earliest"), (0, None))
        self.assertEqual(self.hub.resolve("e1:3"), (3, None))
        position, gap = self.hub.resolve("other:3")
        self.assertEqual((position, gap and gap["reason"]), (0, "epoch"))
        for bad in ("e1:6", "yesterday", "EARLIEST"):
            with self.assertRaises(CursorError):
                self.hub.resolve(bad)

    def test_subscriptions_list_the_live_feed(self) -> None:
        """A subscription is in ``Hub.subscriptions`` while on the live feed and leaves it when
        closed: the hub owns that registry."""
        _, sub = self.subscribe()
        self.assertIn(sub, self.hub.subscriptions)
        sub.close()
        self.assertNotIn(sub, self.hub.subscriptions)

    def test_paused_subscriber_gets_queued_events_on_resume(self) -> None:
        """While its socket is full a subscriber queues events, and gets them all when it drains."""
        sink, sub = self.subscribe()
        sub.pause()
        self.append(1, 15)
        self.assertEqual(sink.seqs, [])
        sub.resume()
        self.assertEqual(sink.seqs, list(range(1, 16)))

    def test_slow_subscriber_ends_with_gap_and_others_unaffected(self) -> None:
        """Past ``max_pending`` queued events a subscriber ends with a ``slow`` gap naming the
        cursor of the last event it was given; another subscriber receives everything."""
        fast, _ = self.subscribe()
        slow, slow_sub = self.subscribe()
        self.append(1, 3)
        slow_sub.pause()
        self.append(4, 30)
        self.assertEqual(fast.seqs, list(range(1, 31)))
        self.assertEqual(slow.seqs, [1, 2, 3])
        gap, final = slow.gaps[-1]
        self.assertEqual((gap["reason"], gap["cursor"], final), ("slow", "e1:3", True))
        self.assertTrue(slow_sub.closed)
        self.assertEqual(self.hub.stats.slow["test"], 1)
        # Resuming from the gap's cursor yields the rest with no hole.
        again, _ = self.subscribe(gap["cursor"])
        self.assertEqual(again.seqs, list(range(4, 31)))

    def test_paused_replay_waits_for_resume(self) -> None:
        """A replaying subscriber whose socket is full stops reading pages until it drains."""
        self.append(1, 30)
        sink = RecordingSink()
        sub = self.hub.subscribe(sink, Filter.everything(), "earliest", "test")
        sub.pause()
        sub.start()
        self.assertEqual(sink.seqs, [])
        sub.resume()
        self.assertEqual(sink.seqs, list(range(1, 31)))

    def test_closed_subscription_gets_nothing_and_is_counted_out(self) -> None:
        """After close, no delivery; the subscriber count goes back down."""
        sink, sub = self.subscribe()
        self.assertEqual(self.hub.stats.subscribers["test"], 1)
        sub.close()
        sub.close()
        self.append(1, 3)
        self.assertEqual(sink.seqs, [])
        self.assertEqual(self.hub.stats.subscribers["test"], 0)

    def test_live_overflow_during_long_replay_falls_back_to_journal(self) -> None:
        """Live events piling up while a replay is in flight are dropped from memory and read
        from the journal instead: nothing lost, memory bounded."""
        self.append(1, 5)
        reads = HeldReads(self.journal, snapshot=False)
        sink, sub = self.subscribe("earliest")
        self.append(6, 40)  # more than max_pending while the first page is held
        self.assertLessEqual(len(sub._pending), self.hub.max_pending)
        reads.release_all()
        self.assertEqual(sink.seqs, list(range(1, 41)))
        self.assertTrue(sub.live)


class ReplayPositionTests(SynchronousTestCase):
    def test_position_while_replaying_ignores_events_kept_for_the_seam(self) -> None:
        """During a replay the resume position is what was examined, not the first live event
        waiting for the seam (which would skip the events between)."""
        journal = MemoryJournal(epoch="e1")
        hub = Hub(journal, page_size=10, max_pending=100)
        self.successResultOf(journal.append(batch(1, 5)))
        HeldReads(journal)
        sub = hub.subscribe(RecordingSink(), Filter.everything(), "e1:2", "test")
        sub.start()
        self.successResultOf(journal.append(batch(6, 7)))  # live, while the read is held
        self.assertFalse(sub.live)
        self.assertEqual(sub.position, 2)


class RetentionRaceTests(SynchronousTestCase):
    def test_events_trimmed_while_a_page_is_read_are_reported_as_a_gap(self) -> None:
        """Retention removing events between a replay page being queued and read gives an
        ``expired`` gap for the hole, never silence."""
        journal = MemoryJournal(epoch="e1", retention=Retention(max_age=None, max_events=50))
        hub = Hub(journal, page_size=500, max_pending=1000)
        self.successResultOf(journal.append(batch(1, 100)))
        reads = HeldReads(journal, snapshot=False)
        sink = RecordingSink()
        hub.subscribe(sink, Filter.everything(), "e1:10", "test").start()
        self.successResultOf(journal.trim())  # removes 1..50 while the read is queued
        reads.release()
        (gap, final), = sink.gaps
        self.assertEqual((gap["reason"], gap["since"], gap["cursor"], final), ("expired", "e1:10", "e1:50", False))
        self.assertEqual(sink.offsets, list(range(51, 101)))


class SharedFilterTests(SynchronousTestCase):
    def test_equal_filters_match_each_event_once(self) -> None:
        """Subscribers with equal filters share one evaluation per event: fan-out cost follows
        distinct filters x events, not subscribers x events; each still gets its matches."""
        journal = MemoryJournal(epoch="e1")
        hub = Hub(journal)
        sinks = []
        for _ in range(3):
            sink = RecordingSink()
            hub.subscribe(sink, parse_json({"builder": "mac"}), None, "test").start()
            sinks.append(sink)
        calls = []
        real = Filter.matches

        def counting(self: Filter, event: object) -> bool:
            calls.append(event)
            return real(self, event)  # type: ignore[arg-type]

        Filter.matches = counting  # type: ignore[method-assign]
        try:
            self.successResultOf(journal.append(batch(1, 6, builder="linux") + batch(7, 10, builder="mac")))
        finally:
            Filter.matches = real  # type: ignore[method-assign]
        self.assertEqual(len(calls), 10)
        for sink in sinks:
            self.assertEqual(sink.seqs, [7, 8, 9, 10])


class PausingSink(RecordingSink):
    """Pauses its subscription after every write, as a socket whose buffer fills would."""

    sub: object = None

    def send(self, events: list) -> None:  # type: ignore[override]
        super().send(events)
        self.sub.pause()  # type: ignore[attr-defined]


class BoundedWriteTests(SynchronousTestCase):
    def test_replay_stops_at_a_full_socket_and_resumes_from_the_journal(self) -> None:
        """A replaying subscriber writes a slice, not a page, into a filling socket; what is left
        is read again from the journal once it drains: everything once, in order."""
        journal = MemoryJournal(epoch="e1")
        hub = Hub(journal, page_size=500, max_pending=1000)
        self.successResultOf(journal.append(batch(1, 200)))
        sink = PausingSink()
        sub = hub.subscribe(sink, Filter.everything(), "earliest", "test")
        sink.sub = sub
        sub.start()
        self.assertEqual(len(sink.events), 64)
        self.assertEqual(sub.position, 64)
        for _ in range(10):
            if sub.live:
                break
            sub.resume()
        self.assertEqual(sink.offsets, list(range(1, 201)))

    def test_queued_live_events_go_out_a_slice_per_drain(self) -> None:
        """Live events queued while the socket was full are sent a slice at a time, each slice
        only when the socket has drained again."""
        journal = MemoryJournal(epoch="e1")
        hub = Hub(journal, page_size=500, max_pending=1000)
        sink = PausingSink()
        sub = hub.subscribe(sink, Filter.everything(), None, "test")
        sink.sub = sub
        sub.start()
        sub.pause()
        self.successResultOf(journal.append(batch(1, 150)))
        self.assertEqual(sink.events, [])
        sub.resume()
        self.assertEqual(len(sink.events), 64)
        sub.resume()
        sub.resume()
        self.assertEqual(sink.offsets, list(range(1, 151)))


class _EndingSink(RecordingSink):
    """Ends its own subscription from inside the hub's first call of ``on`` (``send`` or
    ``gap``), as a long-poll does when it answers; records every call it hears afterwards."""

    def __init__(self, on: str) -> None:
        super().__init__()
        self.on = on
        self.sub: object = None
        self.after_close: list[str] = []

    def _maybe_end(self, call: str) -> None:
        assert self.sub is not None
        if self.sub.closed:  # type: ignore[attr-defined]
            self.after_close.append(call)
        elif call == self.on:
            self.sub.close()  # type: ignore[attr-defined]

    def send(self, events: list[Event]) -> None:
        super().send(events)
        self._maybe_end("send")

    def gap(self, gap: dict[str, Any], final: bool) -> None:
        super().gap(gap, final)
        self._maybe_end("gap")

    def replayed(self, caught_up: bool) -> None:
        self._maybe_end("replayed")


class SinkEndsItsSubscriptionTests(SynchronousTestCase):
    def test_ended_on_a_replay_gap_it_is_never_put_on_the_live_feed(self) -> None:
        """A sink that ends its subscription when told of an ``expired`` gap mid-replay (the
        resume point within a page of the head) is not attached to the live feed afterwards:
        it gets no live events and the hub holds no reference to it."""
        journal = MemoryJournal(epoch="e1", retention=Retention(max_age=None, max_events=5))
        hub = Hub(journal, page_size=10, max_pending=1000)
        self.successResultOf(journal.append(batch(1, 100)))
        reads = HeldReads(journal)  # the page is what the journal held when the read was queued
        sink = _EndingSink("gap")
        sub = hub.subscribe(sink, Filter.everything(), "earliest", "test")
        sink.sub = sub
        sub.start()
        self.successResultOf(journal.trim())  # keeps 96..100 while the first page is read
        self.assertTrue(reads.release())
        self.assertEqual(sink.offsets, list(range(1, 11)))
        (gap, final), = sink.gaps
        self.assertEqual((gap["reason"], gap["cursor"], final), ("expired", "e1:95", False))
        self.assertEqual(list(hub.subscriptions), [])
        self.assertFalse(reads.pending)
        self.successResultOf(journal.append(batch(101, 102)))
        self.assertEqual((sink.offsets[-1], sink.after_close), (10, []))

    def test_ended_in_send_it_hears_nothing_more(self) -> None:
        """A sink that ends its subscription on its first delivery (a poll at its limit) is not
        told of the page being read nor sent anything after, and the replay stops there."""
        journal = MemoryJournal(epoch="e1")
        hub = Hub(journal, page_size=10, max_pending=1000)
        self.successResultOf(journal.append(batch(1, 30)))
        sink = _EndingSink("send")
        sub = hub.subscribe(sink, Filter.everything(), "earliest", "test")
        sink.sub = sub
        sub.start()
        self.assertEqual((sink.offsets, sink.after_close), (list(range(1, 11)), []))
        self.assertEqual(list(hub.subscriptions), [])
