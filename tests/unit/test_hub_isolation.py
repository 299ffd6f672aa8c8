"""The hub isolates subscribers: a sink that raises ends its own subscription, nobody else's.

One property test drives a hub through generated histories: subscribers with generated filters
and starting points join at generated moments, some of their sinks raise in ``send``, ``gap``
or ``replayed`` from a generated call on, transports pause and resume them, and journal reads
are held and released in between (so failures land live, during replay and at the seam).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger

from firehose.event import Event
from firehose.filters import Filter, parse_json
from firehose.hub import Hub, Pacing, Subscription
from firehose.ingest import IngestStats
from firehose.journal import MemoryJournal
from firehose.metrics import FirehoseCollector
from tests.unit.helpers import HeldReads, make_event

FILTERS: list[Filter] = [
    Filter.everything(),
    parse_json({"builder": "linux"}),
    parse_json({"builder": "mac*"}),
    parse_json({"type": "build.finished"}),
]


class Boom(RuntimeError):
    """What a faulty sink raises."""


class FaultySink:
    """A sink that raises in ``method`` from its ``at``-th call of it on (``method`` None: never).

    ``events`` holds what ``send`` accepted; ``gaps`` every gap offered, even one it raised on.
    """

    def __init__(self, method: str | None, at: int) -> None:
        self.method, self.at = method, at
        self.calls: Counter[str] = Counter()
        self.raised = False
        self.events: list[Event] = []
        self.gaps: list[tuple[dict[str, Any], bool]] = []

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        if name == self.method and self.calls[name] >= self.at:
            self.raised = True
            raise Boom(f"{name} #{self.calls[name]}")

    #: Seconds of the pacing's timer one ``send`` takes (see ``rounds``), and that timer.
    cost = 0.0
    spent: list[float] = [0.0]

    def send(self, events: list[Event]) -> None:
        assert events, "the hub must never send an empty list"
        self.spent[0] += self.cost
        self._call("send")
        self.events.extend(events)

    def gap(self, gap: dict[str, Any], final: bool) -> None:
        self.gaps.append((gap, final))
        self._call("gap")

    def replayed(self, caught_up: bool) -> None:
        self._call("replayed")


subscriber = st.tuples(
    st.integers(0, 40),  # joins before this step (after the last step if there are fewer)
    st.integers(0, len(FILTERS) - 1),
    st.sampled_from(["now", "earliest", "cursor", "other-epoch"]),  # other-epoch: starts with a gap
    st.integers(0, 1000),  # picks the cursor's offset among those that exist
    st.one_of(st.none(), st.sampled_from(["send", "gap", "replayed"])),
    st.integers(1, 4),
)
appended = st.lists(st.tuples(st.sampled_from(["linux", "mac", "macos"]),
                              st.sampled_from(["build.started", "build.finished"])), min_size=1, max_size=8)
step = st.one_of(
    st.tuples(st.just("append"), appended),
    st.tuples(st.just("append"), appended),
    st.tuples(st.just("release"), st.none()),
    st.tuples(st.just("pause"), st.integers(0, 50)),
    st.tuples(st.just("resume"), st.integers(0, 50)),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.001, 0.01, 0.1])),
)
#: How the hub runs its rounds: ``None`` whole and at once (no clock), else (chunk, round
#: cost): rounds split every ``chunk`` subscriptions over reactor turns, and paced, each
#: ``send`` costing that many seconds of the pacing's timer.
rounds = st.one_of(st.none(), st.tuples(st.integers(1, 3), st.sampled_from([0.0, 0.0005, 0.004])))


def drain(clock: Clock, hub: Hub) -> None:
    """Run every scheduled round to its end (bounded: each advance runs at least one turn)."""
    for _ in range(10_000):
        if not clock.getDelayedCalls():
            return
        clock.advance(1.0)
    raise AssertionError("the hub's rounds never ended")


@given(st.lists(subscriber, min_size=1, max_size=8), st.lists(step, min_size=1, max_size=40), appended,
       st.integers(1, 6), rounds, st.sampled_from([0, 0, 3, 40]))
def test_a_raising_sink_ends_only_its_own_subscription(
    subscribers: list[Any], steps: list[Any], last: list[Any], page_size: int, paced: Any, recent: int
) -> None:
    """Whatever sinks raise, and wherever (send, gap, replayed; live, replaying, at the seam;
    in the publish loop, in start, in resume): every subscriber whose sink never raised gets
    exactly the events its filter matches after its start, in order, once, with no final gap;
    every one whose sink raised is closed with a final ``error`` gap whose cursor is exactly
    where the events it accepted end (resuming there loses and doubles nothing), even when its
    ``gap`` raises too; none of them is left in the live set; the hub's counters agree.

    The same whether rounds run whole at once or split over reactor turns and paced: events
    stored while a round is under way or pausing are delivered by a later one, in order.  And
    the same whether replays near the head are answered from the hub's recent events (``recent``)
    or from the journal."""
    journal = MemoryJournal(epoch="e1")
    clock = Clock()
    spent = [0.0]
    if paced is None:
        hub = Hub(journal, page_size=page_size, max_pending=10_000, recent=recent)  # nobody is ended as slow here
    else:
        chunk, cost = paced
        hub = Hub(journal, page_size=page_size, max_pending=10_000, clock=clock, chunk=chunk,
                  pacing=Pacing(timer=lambda: spent[0]), recent=recent)
    reads = HeldReads(journal)
    subs: list[tuple[Subscription, FaultySink, int]] = []
    seq = 0

    def append(spec: list[tuple[str, str]]) -> None:
        nonlocal seq
        events = []
        for builder, type_ in spec:
            seq += 1
            events.append(make_event(seq, builder=builder, type=type_))
        journal.append(events)

    def join(i: int) -> None:
        for when, flt, start, pick, method, at in subscribers:
            if when == i or (i == len(steps) and when > i):
                since = {"now": None, "earliest": "earliest", "cursor": f"e1:{pick % (journal.head + 1)}",
                         "other-epoch": "other:1"}[start]
                from_offset = {"now": journal.head, "cursor": pick % (journal.head + 1)}.get(start, 0)
                sink = FaultySink(method, 1 if method == "gap" else at)  # a second gap is the error
                if paced is not None:
                    sink.cost, sink.spent = paced[1], spent
                sub = hub.subscribe(sink, FILTERS[flt], since, "t")
                sub.start()
                subs.append((sub, sink, from_offset))

    for i, (kind, arg) in enumerate(steps):
        join(i)
        if kind == "append":
            append(arg)
        elif kind == "release":
            reads.release()
        elif kind == "tick":
            clock.advance(arg)
        elif subs:
            sub = subs[arg % len(subs)][0]
            sub.pause() if kind == "pause" else sub.resume()
    join(len(steps))
    append(last)
    for sub, _, _ in subs:
        sub.resume()
    reads.release_all(at_most=10_000)
    drain(clock, hub)

    everything = [e for e in journal._events]
    for sub, sink, from_offset in subs:
        expected = [e.offset for e in everything if e.offset > from_offset and sub.filter.matches(e)]
        accepted = [e.offset for e in sink.events]
        if not sink.raised:
            assert accepted == expected
            assert not sub.closed and sub in hub.subscriptions
            assert all(not final for _, final in sink.gaps)
        else:
            event(f"a sink raised in {sink.method}")
            assert sub.closed and sub not in hub.subscriptions
            last, final = sink.gaps[-1]
            assert final and last["reason"] == "error"
            resume = int(last["cursor"].split(":")[1])
            assert accepted == [o for o in expected if o <= resume]
    failed = sum(sink.raised for _, sink, _ in subs)
    assert hub.stats.failed["t"] == failed
    assert hub.stats.subscribers["t"] == len(subs) - failed
    assert hub.stats.delivered["t"] == sum(len(sink.events) for _, sink, _ in subs)
    assert set(hub.subscriptions) == {sub for sub, sink, _ in subs if not sink.raised}


def test_publish_goes_on_after_a_raising_sink(monkeypatch: Any) -> None:
    """The defect of issue #9: a sink raising in ``send`` inside the publish loop made every
    subscriber after it miss the batch; now the one after it gets it, and the failure is logged."""
    journal = MemoryJournal(epoch="e1")
    hub = Hub(journal)
    bad, good = FaultySink("send", 1), FaultySink(None, 1)
    for sink in (bad, good):
        hub.subscribe(sink, Filter.everything(), None, "t").start()
    logged: list[dict[str, Any]] = []
    monkeypatch.setattr(Subscription, "log", Logger(observer=logged.append))
    journal.append([make_event(1), make_event(2)])
    assert [e.offset for e in good.events] == [1, 2]
    assert bad.gaps == [(hub.gap_message("error", None, 0), True)]
    assert [e["log_failure"].type for e in logged if "log_failure" in e] == [Boom]


def test_slow_subscriber_whose_final_gap_raises_is_closed_alone() -> None:
    """A paused subscriber past ``max_pending`` is ended as slow; when its sink raises on that
    final gap it is still closed (and not told a second time), and the next one gets the batch."""
    journal = MemoryJournal(epoch="e1")
    hub = Hub(journal, max_pending=2)
    slow, good = FaultySink("gap", 1), FaultySink(None, 1)
    slow_sub = hub.subscribe(slow, Filter.everything(), None, "t")
    slow_sub.start()
    slow_sub.pause()
    hub.subscribe(good, Filter.everything(), None, "t").start()
    journal.append([make_event(s) for s in range(1, 5)])
    assert [e.offset for e in good.events] == [1, 2, 3, 4]
    assert slow_sub.closed and slow_sub not in hub.subscriptions
    assert [(g["reason"], final) for g, final in slow.gaps] == [("slow", True)]
    assert hub.stats.slow["t"] == 1 and hub.stats.subscribers["t"] == 1


def test_a_failed_subscriber_is_counted_in_metrics() -> None:
    """/metrics counts a subscription its transport ended by raising, on that transport only."""
    journal = MemoryJournal(epoch="e1")
    hub = Hub(journal)
    hub.subscribe(FaultySink("send", 1), Filter.everything(), None, "sse").start()
    hub.subscribe(FaultySink(None, 1), Filter.everything(), None, "websocket").start()
    journal.append([make_event(1)])
    samples = {
        (s.name, s.labels.get("transport")): s.value
        for family in FirehoseCollector(hub, journal, IngestStats(), lambda: 0).collect()
        for s in family.samples
    }
    assert samples[("firehose_failed_subscribers_total", "sse")] == 1
    assert samples[("firehose_failed_subscribers_total", "websocket")] == 0
