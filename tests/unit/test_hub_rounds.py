"""Fan-out rounds: one write per subscriber however the events were batched at the door.

A round hands each live subscription everything stored since it was last offered, in one
``send``; it runs at once when fan-out is idle, spans reactor turns ``chunk`` subscriptions at
a time, and is followed by a pause proportional to its length while fan-out is busy, during
which what the journal stores gathers for the next round.  (The generated histories of
tests/unit/test_hub_isolation.py also run with split and paced rounds.)
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from firehose.event import Event
from firehose.filters import Filter, parse_json
from firehose.hub import Hub, Pacing
from firehose.journal import MemoryJournal, Retention
from tests.unit.helpers import RecordingSink, make_event


class CountingSink(RecordingSink):
    """Records each ``send`` (one socket write) and advances the pacing's timer by ``cost``."""

    def __init__(self, timer: list[float], cost: float = 0.0) -> None:
        super().__init__()
        self.writes: list[list[int]] = []
        self.timer, self.cost = timer, cost

    def send(self, events: list[Event]) -> None:
        super().send(events)
        self.writes.append([e.offset for e in events])
        self.timer[0] += self.cost


def turn(clock: Clock) -> None:
    """One reactor turn: run the calls due now, not those they schedule (``Clock.advance``
    would run a chain of zero-delay calls in one go, as the real reactor does not)."""
    due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


class RoundTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.journal = MemoryJournal(epoch="e1")
        self.clock = Clock()
        self.timer = [0.0]
        self.seq = 0

    def hub(self, chunk: int = 256, share: float = 0.4, max_pause: float = 0.05) -> Hub:
        return Hub(self.journal, clock=self.clock, chunk=chunk,
                   pacing=Pacing(share=share, max_pause=max_pause, quiet=0.001, timer=lambda: self.timer[0]))

    def sinks(self, hub: Hub, n: int, cost: float = 0.0, flt: Filter | None = None) -> list[CountingSink]:
        out = []
        for _ in range(n):
            sink = CountingSink(self.timer, cost)
            hub.subscribe(sink, flt or Filter.everything(), None, "t").start()
            out.append(sink)
        return out

    def publish(self, n: int = 1, **kw: object) -> None:
        """``n`` single-event requests, each its own journal commit."""
        for _ in range(n):
            self.seq += 1
            self.successResultOf(self.journal.append([make_event(self.seq, **kw)]))

    def test_an_idle_hub_writes_an_event_at_once(self) -> None:
        """No tick: with fan-out idle, a stored event is written before the journal's call
        returns, without the clock moving."""
        hub = self.hub()
        sinks = self.sinks(hub, 3, cost=0.0001)  # a round of 0.3 ms: under ``quiet``
        self.publish()
        self.publish()
        self.assertEqual([s.writes for s in sinks], [[[1], [2]]] * 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_events_stored_during_a_busy_pause_go_out_in_one_write(self) -> None:
        """A round that took 10 ms (share 0.4) rests 15 ms; five single-event commits in that
        rest reach each subscriber as one write of five events, in order."""
        hub = self.hub()
        sinks = self.sinks(hub, 10, cost=0.001)
        self.publish()
        self.assertAlmostEqual(hub._pacing.last_pause, 0.015)  # type: ignore[union-attr]
        self.publish(5)
        self.assertEqual([s.writes for s in sinks], [[[1]]] * 10)
        self.clock.advance(0.014)
        self.assertEqual([len(s.writes) for s in sinks], [1] * 10)
        self.clock.advance(0.002)
        self.assertEqual([s.writes for s in sinks], [[[1], [2, 3, 4, 5, 6]]] * 10)
        self.assertEqual((hub.stats.rounds, hub.stats.writes, hub.stats.published), (2, 20, 6))

    def test_the_pause_is_bounded(self) -> None:
        """However long a round took, the next starts within ``max_pause``."""
        hub = self.hub(max_pause=0.05)
        sinks = self.sinks(hub, 4, cost=1.0)
        self.publish()
        self.assertEqual(hub._pacing.last_pause, 0.05)  # type: ignore[union-attr]
        self.publish()
        self.clock.advance(0.05)
        self.assertEqual([s.writes for s in sinks], [[[1], [2]]] * 4)

    def test_a_round_is_split_over_reactor_turns(self) -> None:
        """``chunk`` subscriptions a turn; an event stored between turns joins the round for
        the subscribers not yet written to, and the next round brings it to the others, so
        every subscriber gets it exactly once, in order, within one round."""
        hub = self.hub(chunk=3)
        sinks = self.sinks(hub, 7)
        self.publish()
        self.assertEqual([s.writes for s in sinks], [[[1]]] * 3 + [[]] * 4)
        self.publish()  # stored while the round is under way
        turn(self.clock)
        self.assertEqual([s.writes for s in sinks], [[[1]]] * 3 + [[[1, 2]]] * 3 + [[]])
        turn(self.clock)
        self.assertEqual([s.writes for s in sinks], [[[1]]] * 3 + [[[1, 2]]] * 4)
        for _ in range(3):
            turn(self.clock)
        self.assertEqual([s.writes for s in sinks], [[[1], [2]]] * 3 + [[[1, 2]]] * 4)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cost_follows_matches(self) -> None:
        """Subscribers whose filter matches nothing of a round are not written to, and each
        distinct filter judges each event once however many subscribers share it."""
        hub = self.hub()
        mac = self.sinks(hub, 50, flt=parse_json({"builder": "mac"}))
        linux = self.sinks(hub, 2, flt=parse_json({"builder": "linux"}))
        calls = []
        real = Filter.matches

        def counting(flt: Filter, event: object) -> bool:
            calls.append(event)
            return real(flt, event)  # type: ignore[arg-type]

        Filter.matches = counting  # type: ignore[method-assign]
        try:
            self.publish(3, builder="linux")
        finally:
            Filter.matches = real  # type: ignore[method-assign]
        self.assertEqual(len(calls), 2 * 3)
        self.assertEqual([s.writes for s in mac], [[]] * 50)
        self.assertEqual([s.writes for s in linux], [[[1], [2], [3]]] * 2)
        self.publish(1, builder="mac")
        self.assertEqual([s.writes for s in mac], [[[4]]] * 50)

    def test_a_subscriber_ended_mid_round_is_skipped(self) -> None:
        """A sink that ends another subscription (a poll answering) inside a round: the ended
        one is not written to, the rest are."""
        hub = self.hub(chunk=1)
        victims: list[object] = []

        class Closer(RecordingSink):
            def send(self, events: list[Event]) -> None:
                super().send(events)
                victims[0].close()  # type: ignore[attr-defined]

        hub.subscribe(Closer(), Filter.everything(), None, "t").start()
        sinks = self.sinks(hub, 3)
        victims.append(list(hub.subscriptions)[3])
        self.publish()
        for _ in range(5):
            turn(self.clock)
        self.assertEqual([len(s.writes) for s in sinks], [1, 1, 0])

    def test_stop_cancels_a_scheduled_round(self) -> None:
        hub = self.hub()
        self.sinks(hub, 10, cost=0.001)
        self.publish(2)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        hub.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RecentEventsTests(SynchronousTestCase):
    """Replays that start near the head are answered from the hub's recent events."""

    def setUp(self) -> None:
        self.journal = MemoryJournal(epoch="e1", retention=Retention(max_age=None, max_events=8))
        self.hub = Hub(self.journal, recent=5)
        self.reads: list[int] = []
        real = self.journal.read

        def counting(after: int, limit: int) -> object:
            self.reads.append(after)
            return real(after, limit)

        self.journal.read = counting  # type: ignore[method-assign]
        self.successResultOf(self.journal.append([make_event(s) for s in range(1, 11)]))

    def replay(self, since: str) -> RecordingSink:
        sink = RecordingSink()
        self.hub.subscribe(sink, Filter.everything(), since, "t").start()
        return sink

    def test_a_replay_within_the_recent_events_reads_no_journal(self) -> None:
        sink = self.replay("e1:7")
        self.assertEqual((sink.offsets, self.reads), ([8, 9, 10], []))

    def test_a_replay_older_than_the_recent_events_reads_the_journal(self) -> None:
        sink = self.replay("e1:4")
        self.assertEqual(sink.offsets, [5, 6, 7, 8, 9, 10])
        self.assertEqual(self.reads[:1], [4])

    def test_events_retention_removed_are_not_answered_from_memory(self) -> None:
        """The journal keeps 8 events, the hub 5: after a trim to 3..10 the hub's memory holds
        6..10, and a replay from 2 is the journal's (events 3..10, no gap), never more."""
        self.successResultOf(self.journal.trim())
        self.assertEqual(self.journal.earliest, 3)
        sink = self.replay("e1:2")
        self.assertEqual((sink.offsets, sink.gaps), (list(range(3, 11)), []))
        self.assertEqual(self.reads[:1], [2])
        self.assertEqual([e.offset for e in self.hub.read(5, 2)], [6, 7])  # type: ignore[union-attr]
