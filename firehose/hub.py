"""The hub: live fan-out of journaled events to subscriptions, and the seam between replay and live.

A :class:`Subscription` starts where its ``since`` says.  It replays from the journal page by
page, only as fast as its transport drains, and joins the live feed when it is within a page of
the head.  From then on a ``seen`` offset guards the seam: an event arriving both from the last
replay page and from the live feed is delivered once, and nothing between them is skipped
because the journal tells the hub of an event only after it is durable.

Memory per subscription is bounded: while its transport is paused (the socket is not draining),
live events wait in a queue of at most ``max_pending``; past that the subscription ends with a
``gap`` of reason ``slow`` that names the cursor to resume from, and the others never notice.
The hub knows nothing of any transport: a transport hands it a :class:`Sink`.

Live events go out in **rounds**: a round hands every live subscription, in one ``send``, all
the stored events it has not been offered yet, matched once per distinct filter.  A round
starts at once when fan-out is idle; while one is under way (it spans reactor turns, ``chunk``
subscriptions a turn) and for a pause after it proportional to its length (:class:`Pacing`),
what the journal stores gathers for the next one.  So the cost per delivery no longer depends
on how the events were batched at the door: one event per request from many masters is
written to a socket as a batch once the server is busy, and at once when it is not.

A sink that raises is a fault of that subscriber only.  Every call into a sink is reached from
a guarded entry point (publish, ``start``, ``resume``, the replay loop); an exception ends that
subscription with a final ``gap`` of reason ``error`` naming the cursor before what it failed
to take, is logged, and goes no further: the publish loop goes on to the next subscriber.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from firehose.cursor import NOW, Cursor, CursorError, format_cursor, parse_since
from firehose.event import Event
from firehose.filters import Filter
from firehose.journal import IJournal

#: Events written to a socket at a time when catching up: small enough that a full socket stops
#: us within ~100 KiB, large enough that a write carries many events.
_SLICE = 64
#: Subscriptions written to in one reactor turn, at most: 3,000 subscribers cost several turns,
#: with the reactor reading sockets (ingest, new clients) between them.
CHUNK = 256
_DONE = object()


class Sink(Protocol):
    """What a transport gives the hub for one subscription.

    A sink may close its subscription from inside any of these calls (a long-poll does, when
    it has its answer): the hub then calls it no more and never puts it back on the live feed.
    """

    def send(self, events: list[Event]) -> None:
        """Write these events (in order) to the client; never called with an empty list."""

    def gap(self, gap: dict[str, Any], final: bool) -> None:
        """Tell the client of a gap.  ``final``: the subscription has ended (reason ``slow``, or
        ``error`` after this sink raised)."""

    def replayed(self, caught_up: bool) -> None:
        """A replay page was read (``position`` has moved on); ``caught_up``: it reached the
        head, and from now on only live events follow."""


class Stats:
    """Plain counters read by /metrics and /health; nothing here costs more than an add."""

    def __init__(self) -> None:
        self.subscribers: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()
        self.slow: Counter[str] = Counter()
        #: Subscriptions ended because their sink raised (a transport bug, never the client's).
        self.failed: Counter[str] = Counter()
        self.published = 0
        #: Fan-out rounds, the live sends they made, their time and the pauses after them.
        self.rounds = 0
        self.writes = 0
        self.round_seconds = 0.0
        self.pause_seconds = 0.0


class Pacing:
    """When the next fan-out round may start: at once when fan-out is idle, after a pause
    proportional to the last round's length while it is busy.

    A round writes once to every subscriber that has something, whatever the number of events
    it carries, so a socket write costs the same for one event as for twenty.  Rounds run back
    to back would write each event on its own and spend the whole core doing it; resting
    ``1/share - 1`` times as long as a round took (at most ``max_pause``) lets what arrives
    meanwhile gather into the next round's one write, and bounds fan-out to about ``share``
    of the time while it is busy.  There is no tick: a round shorter than ``quiet`` (a few
    subscribers, or a lone event after a quiet spell) imposes no pause, so an idle server
    writes an event as soon as it is stored.

    :param timer: seconds, monotonic (tests give a fake one).
    """

    def __init__(self, share: float = 0.4, max_pause: float = 0.05, quiet: float = 0.001,
                 timer: Callable[[], float] = time.monotonic) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.share = share
        self.max_pause = max_pause
        self.quiet = quiet
        self.timer = timer
        self._started = 0.0
        #: No round may start before this (timer seconds).
        self._next = 0.0
        #: The last round's length and the pause it imposed (for /metrics and tests).
        self.last_round = 0.0
        self.last_pause = 0.0

    def wait(self) -> float:
        """Seconds to wait before starting a round now (0: start it at once)."""
        return max(0.0, self._next - self.timer())

    def started(self) -> None:
        self._started = self.timer()

    def ended(self) -> float:
        """A round ended: the pause before the next one."""
        now = self.timer()
        took = self.last_round = max(0.0, now - self._started)
        pause = 0.0 if took < self.quiet else min(self.max_pause, took * (1 / self.share - 1))
        self.last_pause = pause
        self._next = now + pause
        return pause


class Hub:
    """Fan-out of one journal's events.

    :param page_size: events read per replay page; also how close to the head a replaying
        subscription must be to join the live feed.
    :param max_pending: live events a paused subscription may queue before it is ended as slow.
    :param clock: schedules rounds split over several reactor turns (``chunk``) and paced
        ones (``pacing``).  Without a clock every round runs whole, at once, inside the
        journal's call (what unit tests of the hub's other rules want).
    :param chunk: subscriptions written to per reactor turn.
    :param pacing: the rest between busy rounds (see :class:`Pacing`); ``None``: none.
    :param recent: the newest events kept in memory (references) to answer replays that start
        near the head without a journal read: a poll that comes back a round late, a socket
        that reconnects.  0: every replay reads the journal.
    """

    log = Logger()

    def __init__(self, journal: IJournal, page_size: int = 500, max_pending: int = 1000,
                 clock: IReactorTime | None = None, chunk: int = CHUNK, pacing: Pacing | None = None,
                 recent: int = 0) -> None:
        self.journal = journal
        self.page_size = page_size
        self.max_pending = max_pending
        self.stats = Stats()
        self._live: dict[Subscription, None] = {}
        #: The live subscriptions by filter: a round matches its events once per filter.
        self._groups: dict[Any, dict[Subscription, None]] = {}
        #: Events the journal has stored that some live subscription has not been offered.
        self._log: list[Event] = []
        #: Offset of the newest event the journal told us of.
        self._told = journal.head
        self._clock = clock
        self._chunk = chunk if clock is not None else 1 << 62
        self._pacing = pacing if clock is not None else None
        self._round: Iterator[None] | None = None
        self._scheduled: IDelayedCall | None = None
        self._recent: deque[Event] | None = deque(maxlen=recent) if recent > 0 else None
        journal.listen(self._publish)

    def cursor(self, offset: int) -> str:
        return format_cursor(self.journal.epoch, offset)

    @property
    def head_cursor(self) -> str:
        return self.cursor(self.journal.head)

    def subscribe(
        self,
        sink: Sink,
        flt: Filter,
        since: str | None = None,
        transport: str = "other",
        page_size: int | None = None,
    ) -> Subscription:
        """Make a subscription; raise :class:`CursorError` for a cursor that cannot be used.

        Nothing is delivered until the caller calls :meth:`Subscription.start`, so a transport
        can first acknowledge the subscription to its client.

        :param since: a cursor (deliver what follows it), ``earliest``, or ``None``/``now``
            (live only).  A cursor of another epoch, or older than retention, starts at the
            earliest retained event after a ``gap`` message saying so.
        """
        position, gap = self.resolve(since)
        sub = Subscription(self, sink, flt, position, transport, page_size or self.page_size, gap)
        self.stats.subscribers[transport] += 1
        return sub

    def resolve(self, since: str | None) -> tuple[int, dict[str, Any] | None]:
        """The offset a subscription with this ``since`` starts after, and the ``gap`` it must be
        told of first (another epoch, or older than retention), if any.

        Public so that a caller which stores a ``since`` for later (a webhook) refuses a bad one
        now, with the same rules and messages as :meth:`subscribe`.

        :raises CursorError: not ``now``/``earliest``/a cursor, or a cursor ahead of the head.
        """
        journal = self.journal
        oldest = journal.earliest - 1
        start = parse_since(since)
        if not isinstance(start, Cursor):
            return (journal.head if start == NOW else oldest), None
        if start.epoch != journal.epoch:
            return oldest, self.gap_message("epoch", since, oldest)
        if start.offset > journal.head:
            raise CursorError(f"cursor {since!r} is ahead of this stream (newest is {self.head_cursor})")
        if start.offset < oldest:
            return oldest, self.gap_message("expired", since, oldest)
        return start.offset, None

    def gap_message(self, reason: str, since: str | None, resume: int) -> dict[str, Any]:
        """The ``gap`` a sink is given: why, from where, the cursor to resume from (``resume``)
        and the earliest one retained."""
        return {
            "type": "gap",
            "reason": reason,
            "since": since,
            "cursor": self.cursor(resume),
            "earliest": self.cursor(self.journal.earliest - 1),
        }

    def _publish(self, events: list[Event]) -> None:
        """The journal made ``events`` durable: queue them for the next round (now, if idle)."""
        self.stats.published += len(events)
        if not events:
            return
        self._log.extend(events)
        self._told = events[-1].offset
        if self._recent is not None:
            self._recent.extend(events)
        if self._round is None and self._scheduled is None:
            wait = self._pacing.wait() if self._pacing is not None else 0.0
            if wait > 0 and self._clock is not None:
                self._scheduled = self._clock.callLater(wait, self._run)
            else:
                self._run()

    def read(self, after: int, limit: int) -> list[Event] | defer.Deferred[list[Event]]:
        """What ``journal.read(after, limit)`` answers: from the recent events in memory when
        they hold every retained event after ``after`` up to the head (no thread, no decode),
        else from the journal."""
        recent = self._recent
        journal = self.journal
        if recent and self._told >= journal.head and after + 1 >= max(recent[0].offset, journal.earliest):
            i = after + 1 - recent[0].offset
            if i >= len(recent):
                return []
            if recent[i].offset == after + 1:  # offsets are consecutive: the deque is indexed by them
                return [recent[j] for j in range(i, min(i + limit, len(recent)))]
        return journal.read(after, limit)

    def _run(self) -> None:
        """Do one turn's share of the current round (starting one if none is under way)."""
        self._scheduled = None
        if self._round is None:
            if not self._log:
                return
            self._round = self._deliver_round()
            if self._pacing is not None:
                self._pacing.started()
        if next(self._round, _DONE) is not _DONE:
            # The turn's budget is spent: let the reactor read sockets, then go on.
            assert self._clock is not None
            self._scheduled = self._clock.callLater(0, self._run)
            return
        self._round = None
        stats = self.stats
        stats.rounds += 1
        wait = 0.0
        if self._pacing is not None:
            wait = self._pacing.ended()
            stats.round_seconds += self._pacing.last_round
            stats.pause_seconds += wait
        if self._log:  # events arrived during the round: the next one, after its pause
            if self._clock is None:
                self._run()
            else:
                self._scheduled = self._clock.callLater(wait, self._run)

    def _deliver_round(self) -> Iterator[None]:
        """Offer every live subscription the queued events it has not been offered, one write
        each, grouped by filter; yields after every ``chunk`` subscriptions that had something.

        Each turn of the round takes what is queued when the turn starts: a subscriber is
        written to once a round, with everything stored up to its turn, so an event waits at
        most one round and its pause.  The subscribers of one filter in one turn are handed the
        very same list (one match per filter, one framing per transport, one join per list).
        Once the round is over every subscription has been offered what was queued when it
        started, so those events leave the queue.
        """
        log = self._log
        first = len(log)
        offsets: list[int] = []
        budget = 0
        writes = 0
        for members in list(self._groups.values()):
            subs = list(members)  # a sink may end subscriptions, its own or (a poll) others
            if not subs:
                continue
            flt = subs[0].filter
            everything = flt.is_everything
            ranges: dict[int, tuple[list[Event], list[Event]]] = {}
            for sub in subs:
                if budget <= 0:
                    if writes:
                        self.stats.writes += writes
                        writes = 0
                        yield None
                    budget = self._chunk
                    # A new turn: what was stored meanwhile joins the round.
                    count = len(log)
                    last = log[-1].offset
                    offsets.extend(e.offset for e in log[len(offsets):count])
                    starts: dict[int, int] = {}
                    ranges = {}
                offered = sub._offered
                if offered >= last or not sub._attached:
                    continue  # attached after these events were queued, or ended meanwhile
                i = starts.get(offered)
                if i is None:
                    i = starts[offered] = bisect_right(offsets, offered, 0, count)
                got = ranges.get(i)
                if got is None:
                    events = log[i:count]
                    got = ranges[i] = (events, events if everything else [e for e in events if flt.matches(e)])
                events, matched = got
                sub._offered = last
                if not matched and sub.live:
                    sub.seen = max(sub.seen, last)  # nothing for it: cheap, and not a write
                    continue
                try:
                    sub._offer(events, matched)
                except Exception:
                    sub._fail("live delivery")
                writes += 1
                budget -= 1
        self.stats.writes += writes
        del log[:first]

    @property
    def subscriptions(self) -> Iterable[Subscription]:
        """The subscriptions on the live feed (or queuing for it at the seam)."""
        return list(self._live)

    def attach(self, sub: Subscription) -> None:
        """Put ``sub`` on the live feed (called by :class:`Subscription`: the registry is the
        hub's, so only the hub writes it).

        It is offered only the events stored from now on: every earlier one is in the journal,
        where the replay read that follows an attach finds it (see :meth:`Subscription._replay`).
        """
        self._live[sub] = None
        sub._offered = self._told
        self._groups.setdefault(sub.filter.key, {})[sub] = None

    def detach(self, sub: Subscription) -> None:
        """Take ``sub`` off the live feed; nothing if it is not on it."""
        if sub in self._live:
            del self._live[sub]
            key = sub.filter.key
            group = self._groups[key]
            del group[sub]
            if not group:
                del self._groups[key]

    def stop(self) -> None:
        """Cancel a scheduled round (the server is stopping)."""
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None


class Subscription:
    """One subscriber's position in the stream.  Made by :meth:`Hub.subscribe`."""

    log = Logger()

    def __init__(
        self,
        hub: Hub,
        sink: Sink,
        flt: Filter,
        position: int,
        transport: str,
        page_size: int,
        initial_gap: dict[str, Any] | None = None,
    ) -> None:
        self.hub = hub
        self.sink = sink
        self.filter = flt
        self.transport = transport
        self.page_size = page_size
        #: Highest offset examined: events at or below it are never delivered again.
        self.seen = position
        self.live = False
        self.closed = False
        self.paused = False
        self._attached = False
        #: Offset of the newest live event the hub has offered (set by the hub).
        self._offered = position
        self._pending: list[Event] = []
        self._reading = False
        #: Told before anything else (``since`` was of another epoch, or expired).
        self._initial_gap = initial_gap
        #: Set when ``sink.send`` raised: the offset before the events it failed to take.
        self._failed_at: int | None = None

    @property
    def position(self) -> int:
        """Offset up to which every matching event has been handed to the sink.

        While replaying, ``_pending`` holds live events kept for the seam, not undelivered
        ones: only a live subscription's queue holds events back from ``seen``.
        """
        return self._pending[0].offset - 1 if self.live and self._pending else self.seen

    @property
    def cursor(self) -> str:
        return self.hub.cursor(self.position)

    @property
    def reading(self) -> bool:
        """A replay page is being read."""
        return self._reading

    def start(self) -> None:
        """Begin delivery: the gap, if ``since`` needed one, then replay, then live."""
        try:
            self._start()
        except Exception:
            self._fail("start")

    def _start(self) -> None:
        if self._initial_gap is not None:
            self.sink.gap(self._initial_gap, final=False)
            self._initial_gap = None
        if self.closed:
            return
        if self.seen >= self.hub.journal.head:
            self._attach()
            self.live = True
            self.sink.replayed(caught_up=True)
        else:
            self._replay()

    def _attach(self) -> None:
        # Never a closed subscription: a sink may end it from inside any call (a poll answers
        # from ``gap`` or ``send``), and the replay loop must not put it back on the feed.
        if not self._attached and not self.closed:
            self._attached = True
            self.hub.attach(self)

    def _detach(self) -> None:
        if self._attached:
            self._attached = False
            self.hub.detach(self)
            self._pending.clear()

    def pause(self) -> None:
        """The transport's buffer is full: queue live events, stop reading replay pages."""
        self.paused = True

    def resume(self) -> None:
        """The transport drained: send what waited, or continue the replay."""
        self.paused = False
        if self.closed:
            return
        try:
            if self.live:
                self._flush()
            elif not self._reading:
                self._replay()
        except Exception:
            self._fail("resume")

    def close(self) -> None:
        """Stop delivering (the client went away or unsubscribed).  Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._detach()
        self.hub.stats.subscribers[self.transport] -= 1

    @defer.inlineCallbacks
    def _replay(self) -> Any:
        journal = self.hub.journal
        self._reading = True
        try:
            while not self.closed and not self.paused:
                if self.seen < journal.earliest - 1:
                    self._expired(journal.earliest - 1)
                    if self.closed:
                        return  # the sink ended the subscription on being told of the gap
                if journal.head - self.seen <= self.page_size:
                    self._attach()
                head = journal.head
                page = yield self.hub.read(self.seen, self.page_size)
                if self.closed:
                    return
                first = page[0].offset if page else head + 1
                if first > self.seen + 1:
                    # Retention removed events between the read being queued and running.
                    self._expired(first - 1)
                    if self.closed:
                        return
                if not self._deliver(page):
                    continue  # the socket filled up: the rest of the page stays in the journal
                if self.closed:
                    return  # the sink had all it wanted (a poll that reached its limit)
                if len(page) < self.page_size and self._attached:
                    self._go_live()
                    return
                self.sink.replayed(caught_up=False)
        except Exception:
            self._fail("replay")
        finally:
            self._reading = False

    def _expired(self, resume: int) -> None:
        """Retention removed events this subscription had not reached: say so, skip to ``resume``."""
        self.sink.gap(self.hub.gap_message("expired", self.hub.cursor(self.seen), resume), False)
        self.seen = resume

    def _deliver(self, events: list[Event]) -> bool:
        """Hand the sink the events of a replay page after ``seen`` that match, in slices.

        When the socket's buffer fills (the transport pauses us, synchronously, inside a write),
        stop: ``seen`` covers only what was sent, and the rest of the page is read again from
        the journal once the socket drains.  So a replaying subscriber holds at most one slice
        beyond the socket's 64 KiB, not a page.  Returns whether the whole page was handled.
        """
        flt = self.filter
        everything = flt.is_everything
        out: list[Event] = []
        for event in events:
            if event.offset <= self.seen or not (everything or flt.matches(event)):
                continue
            out.append(event)
            if len(out) == _SLICE and event is not events[-1]:
                self.seen = event.offset  # before sending: a sink may read our position
                self._send(out)
                out = []
                if self.paused or self.closed:
                    return False
        if events:
            self.seen = max(self.seen, events[-1].offset)
        if out:
            self._send(out)
        return True

    def _send(self, events: list[Event]) -> None:
        try:
            self.sink.send(events)
        except Exception:
            # Every earlier event was taken, in order: a resume starts at this batch.
            self._failed_at = events[0].offset - 1
            raise
        self.hub.stats.delivered[self.transport] += len(events)

    def _fail(self, where: str) -> None:
        """The sink (or a journal read) raised: end this subscription alone.

        Called in an ``except`` block, so the log carries the traceback.  The final ``error``
        gap names the cursor to resume from: before the batch ``send`` refused, else our
        position.  A sink whose ``gap`` raises too is still closed; one that had already been
        ended (its final ``slow`` gap raised) is not told twice.
        """
        self.log.failure("{transport} subscriber failed in {where}; ending it with an error gap",
                         transport=self.transport, where=where)
        resume = self._failed_at if self._failed_at is not None else self.position
        if self.closed:
            return
        self.close()
        self.hub.stats.failed[self.transport] += 1
        try:
            self.sink.gap(self.hub.gap_message("error", None, resume), final=True)
        except Exception:
            self.log.failure("{transport} subscriber's error gap failed too", transport=self.transport)

    def _offer(self, events: list[Event], matching: list[Event] | None = None) -> None:
        """Live events from the hub; ``matching``: those of them this filter matches."""
        if matching is None:
            flt = self.filter
            matching = events if flt.is_everything else [e for e in events if flt.matches(e)]
        if not self.live:
            # Still replaying: keep them for the seam (see _go_live); the journal has them too.
            self._pending.extend(matching)
            if len(self._pending) > self.hub.max_pending:
                self._detach()
            return
        seen = self.seen
        matched = matching if not matching or matching[0].offset > seen else [e for e in matching if e.offset > seen]
        self.seen = max(seen, events[-1].offset)
        if not matched:
            return
        if self.paused or self._pending:
            self._pending.extend(matched)
            if len(self._pending) > self.hub.max_pending:
                self._slow()
            else:
                self._flush()
        else:
            self._send(matched)

    def _go_live(self) -> None:
        """The replay reached the head: send the live events it has not already covered."""
        fresh = [e for e in self._pending if e.offset > self.seen]
        self._pending = fresh
        if fresh:
            self.seen = fresh[-1].offset
        self.live = True
        self._flush()
        if not self.closed:
            self.sink.replayed(caught_up=True)

    def _flush(self) -> None:
        """Send what waited, a slice at a time, until done or the socket fills again."""
        while self._pending and not self.paused and not self.closed:
            out = self._pending[:_SLICE]
            del self._pending[:_SLICE]
            self._send(out)

    def _slow(self) -> None:
        gap = self.hub.gap_message("slow", None, self.position)
        self.hub.stats.slow[self.transport] += 1
        self.log.info(
            "{transport} subscriber too slow: ended with a gap at {cursor}",
            transport=self.transport,
            cursor=gap["cursor"],
        )
        self.close()
        self.sink.gap(gap, final=True)
