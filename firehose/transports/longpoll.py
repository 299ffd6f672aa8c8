"""``GET /poll``: long-poll HTTP.  Answers at once when events follow ``since``, else waits.

A poll is a subscription that ends with its answer: the hub's replay/live seam applies to it
unchanged, so successive polls that pass each answer's ``cursor`` as the next ``since`` see
every matching event exactly once.  From history the answer gathers up to ``limit`` events
(the hub hands them over a slice at a time) and examines at most ``max_scan`` events, so one
request costs bounded work whatever its filter; every answer names the stream's ``head`` and
says whether ``cursor`` is behind it (``more``), so a client pages with ``while more``.
``format=cloudevents`` answers each event as a structured CloudEvent (:mod:`firehose.cloudevents`).

A poll is a whole HTTP request, so what it costs beyond twisted.web's parsing is kept small:
the answer's headers are serialized once and written with the body in one socket write
(:func:`~firehose.transports.respond`, ``Content-Length``, no chunking); the polls that one
live batch answers alike (same events, cursor, head and format) share one answer body; the
waiting polls' timeouts share one timer; and equal filters are parsed once.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.server import NOT_DONE_YET, Request

from firehose import cloudevents
from firehose._http import (
    CORS_HEADERS,
    ReadResource,
    allow_cors,
    bad_argument,
    number_arg,
    query_args,
    single,
)
from firehose.cursor import parse_cursor
from firehose.event import Event, dumps
from firehose.filters import Filter, parse_query
from firehose.hub import Hub, Subscription
from firehose.transports import HeaderBlock, respond
from firehose.transports.frames import FrameCache

RESERVED = ("since", "timeout", "limit", "format")
_RESERVED = frozenset(RESERVED)

#: Every answer's headers (an error answer is made by :func:`~firehose._http.bad_argument`).
ANSWER_HEADERS = HeaderBlock(
    [(b"Content-Type", b"application/json"), (b"Cache-Control", b"no-store")]
    + [(b"-".join(p.capitalize() for p in name.split(b"-")), value) for name, value in CORS_HEADERS.items()]
)
#: Parsed filters kept, by their query arguments: polls re-send the same filter every time.
FILTER_CACHE = 256
#: Answer bodies kept for the polls of one live batch, and their bytes.
ANSWER_CACHE = 8
ANSWER_CACHE_BYTES = 8 * 1024 * 1024


class _PollSink:
    """Gathers one poll's answer from its subscription, then ends it.

    While the hub replays history the sink collects what it is sent and answers when it holds
    ``limit`` events, when the replay reaches the head, or when ``max_scan`` events have been
    examined (checked after each page, so at most a page more): a selective filter far behind
    the head then gets an answer with ``more`` and a ``cursor`` past what was examined, rather
    than holding the request and the journal's reader until the whole history is scanned.
    Once caught up it waits for live events and answers with the first that match.
    """

    __slots__ = ("request", "limit", "subscription", "resource", "done", "events", "max_scan",
                 "scan_from", "caught_up", "expired", "cloudevents", "deadline", "waiting")

    def __init__(self, request: Request, limit: int, resource: PollResource | None = None) -> None:
        self.request = request
        self.limit = limit
        self.subscription: Subscription | None = None
        #: The resource whose timeouts and shared answers this poll uses.
        self.resource = resource
        self.done = False
        #: Events gathered for the answer, at most ``limit``.
        self.events: list[Event] = []
        #: Most events to examine from history before answering (set by :meth:`bind`).
        self.max_scan = 0
        #: The subscription's starting offset: ``seen - scan_from`` is what has been examined.
        self.scan_from = 0
        #: The replay reached the head: from now on a delivery is live and answered at once.
        self.caught_up = False
        #: The timeout passed during the replay: answer once it is caught up, without waiting.
        self.expired = False
        #: Set by the resource for ``format=cloudevents``: the events' CloudEvents, encoded once.
        self.cloudevents: FrameCache | None = None
        #: When the wait for live events ends (the resource's clock); set by :class:`_Timeouts`.
        self.deadline = 0.0
        #: Counted among the resource's waiting polls (until answered or gone).
        self.waiting = False

    def bind(self, subscription: Subscription, max_scan: int) -> None:
        """Attach the subscription this sink answers for (made after the sink, by the hub)."""
        self.subscription = subscription
        self.max_scan = max_scan
        self.scan_from = subscription.seen

    def send(self, events: list[Event]) -> None:
        if self.done:
            return
        sub = self.subscription
        assert sub is not None
        room = self.limit - len(self.events)
        if len(events) > room:
            # Cut at the limit: the cursor is the last event taken, so the next poll gets the rest.
            self.events.extend(events[:room])
            self._answer(events[room - 1].offset)
            return
        if self.caught_up and not self.events:
            # A live batch answered whole: the same answer as every poll handed this list.
            self._answer(sub.position, events=events)
            return
        self.events.extend(events)
        if len(self.events) == self.limit or self.caught_up:
            self._answer(sub.position)

    def gap(self, gap: dict[str, Any], final: bool) -> None:
        """A gap is answered at once.  Events gathered before it are answered first, with the
        cursor from before the gap (or the hub's resume point for a final one): the next poll,
        from there, is told of the gap, so a gap answer never also carries events."""
        if self.done:
            return
        sub = self.subscription
        assert sub is not None
        if self.events:
            self._answer(parse_cursor(gap["cursor"]).offset if final else sub.position)
        else:
            self._answer(parse_cursor(gap["cursor"]).offset, gap)

    def replayed(self, caught_up: bool) -> None:
        if self.done:
            return
        sub = self.subscription
        assert sub is not None
        if caught_up:
            self.caught_up = True
            if self.events or self.expired:
                self._answer(sub.position)
        elif sub.seen - self.scan_from >= self.max_scan:
            self._answer(sub.position)

    def timeout(self) -> None:
        """The wait for live events is over.  The timeout does not cut a replay short (its work
        is bounded by ``max_scan``): history is answered in full pages, even with ``timeout=0``,
        and 'no events' with ``more: false`` only ever means none."""
        sub = self.subscription
        assert sub is not None
        if self.caught_up:
            self._answer(sub.position)
        else:
            self.expired = True

    def _answer(self, offset: int, gap: dict[str, Any] | None = None, events: list[Event] | None = None) -> None:
        """Answer with the gathered events (or ``events``, a live batch taken whole) and
        ``cursor`` at ``offset``; ``more`` when that is behind the head (there are events after
        it the client has not been shown or had examined for it), and ``head`` as it is now."""
        if self.done:
            return
        sub = self.subscription
        assert sub is not None
        head = sub.hub.journal.head
        resource = self.resource
        if events is not None and resource is not None:
            body = resource.shared_body(events, offset, head, self.cloudevents)
        else:
            body = answer_body(sub.hub, self.events if events is None else events, offset, head, self.cloudevents, gap)
        self.cleanup()
        respond(self.request, ANSWER_HEADERS, body)

    def cleanup(self, _: object = None) -> None:
        if self.done:
            return
        self.done = True
        if self.subscription is not None:
            self.subscription.close()
        if self.waiting and self.resource is not None:
            self.resource.timeouts.remove(self)
        self.events = []


def answer_body(
    hub: Hub, events: list[Event], offset: int, head: int, frames: FrameCache | None,
    gap: dict[str, Any] | None = None,
) -> bytes:
    """A poll's answer: ``events`` (their envelopes, or their frames from ``frames``), then
    ``gap`` if any, ``cursor`` at ``offset``, ``more`` and ``head``."""
    tail: dict[str, Any] = {} if gap is None else {"gap": gap}
    tail.update(cursor=hub.cursor(offset), more=offset < head, head=hub.cursor(head))
    encoded = [e.encoded for e in events] if frames is None else [frames.frame(e) for e in events]
    return b'{"events":[' + b",".join(encoded) + b"]," + dumps(tail)[1:] + b"\n"


class _Timeouts:
    """The timeouts of a resource's waiting polls, on one timer.

    A ``DelayedCall`` per poll costs the reactor an object, a heap insertion with Python-level
    comparisons, and a cancellation (most polls are answered before their timeout) that it
    sweeps later.  Here a poll's deadline is a tuple on one heap (compared in C); an answered
    poll's entry is dropped lazily, and the heap is rebuilt when dropped entries outnumber the
    waiting polls, so it holds at most about twice as many entries as polls waiting.  The one
    timer is set for the earliest deadline and cancelled as soon as no poll waits.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, _PollSink]] = []
        self._count = 0
        self.waiting = 0
        self._timer: IDelayedCall | None = None

    def add(self, sink: _PollSink, timeout: float) -> None:
        now = self.clock.seconds()
        sink.deadline = now + timeout
        sink.waiting = True
        self.waiting += 1
        self._count += 1
        heapq.heappush(self._heap, (sink.deadline, self._count, sink))
        self._schedule(now)

    def remove(self, sink: _PollSink) -> None:
        """``sink`` waits no more (answered, or its client went away)."""
        sink.waiting = False
        self.waiting -= 1
        if not self.waiting:
            self._heap = []
            if self._timer is not None:
                if self._timer.active():
                    self._timer.cancel()
                self._timer = None
        elif len(self._heap) > 2 * self.waiting + 64:
            self._heap = [entry for entry in self._heap if entry[2].waiting]
            heapq.heapify(self._heap)

    def _schedule(self, now: float) -> None:
        """Drop answered polls from the heap's top; set the timer for the earliest deadline."""
        heap = self._heap
        while heap and not heap[0][2].waiting:
            heapq.heappop(heap)
        timer = self._timer
        if not heap:
            if timer is not None and timer.active():
                timer.cancel()
            self._timer = None
            return
        first = heap[0][0]
        if timer is not None and timer.active():
            if timer.getTime() <= first:
                return
            timer.cancel()
        self._timer = self.clock.callLater(max(0.0, first - now), self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        # self._heap, not a local: an answer may finish a request whose pipelined successor
        # adds a poll, or make remove() rebuild the heap, while this loop runs.
        while self._heap and self._heap[0][0] <= now:
            sink = heapq.heappop(self._heap)[2]
            if sink.waiting:
                sink.waiting = False
                self.waiting -= 1
                sink.timeout()
        self._schedule(now)


class PollResource(ReadResource):
    """Long-poll endpoint.

    :param default_timeout: seconds to hold a request when ``timeout`` is not given.
    :param max_scan: most events one poll examines from history before it answers (with
        ``more``): bounds the journal reads and filter matches a single request costs.
    """

    def __init__(
        self,
        hub: Hub,
        clock: IReactorTime,
        default_timeout: float = 30.0,
        max_timeout: float = 300.0,
        max_limit: int = 1000,
        max_scan: int = 2000,
    ) -> None:
        super().__init__()
        self.hub = hub
        self.clock = clock
        self.default_timeout = default_timeout
        self.max_timeout = max_timeout
        self.max_limit = max_limit
        self.max_scan = max_scan
        #: Each event as a CloudEvent, encoded once for every poll that asks for them.
        self.cloudevents = FrameCache(cloudevents.encode)
        self.timeouts = _Timeouts(clock)
        self._filters: OrderedDict[tuple[Any, ...], Filter] = OrderedDict()
        #: Recent answers to whole live batches: key -> (the batch's events, a copy, body).
        self._answers: OrderedDict[tuple[Any, ...], tuple[list[Event], list[Event], bytes]] = OrderedDict()
        self._answer_bytes = 0

    def shared_body(self, events: list[Event], offset: int, head: int, frames: FrameCache | None) -> bytes:
        """The answer to a live batch ``events`` taken whole: made once for every poll handed
        the same list with the same cursor, head and format (the hub hands the subscribers of
        one filter the same list).  The list is kept referenced while its answer is kept, so
        its ``id`` is not reused, and compared with a copy, so a list changed since is not
        answered from the old one."""
        key = (id(events), offset, head, frames is None)
        found = self._answers.get(key)
        if found is not None and found[0] is events and found[1] == events:
            return found[2]
        body = answer_body(self.hub, events, offset, head, frames)
        answers = self._answers
        if found is not None:
            self._answer_bytes -= len(answers.pop(key)[2])
        answers[key] = (events, list(events), body)
        self._answer_bytes += len(body)
        while len(answers) > 1 and (len(answers) > ANSWER_CACHE or self._answer_bytes > ANSWER_CACHE_BYTES):
            self._answer_bytes -= len(answers.popitem(last=False)[1][2])
        return body

    def _filter(self, request: Request, args: dict[str, list[str]]) -> Filter:
        """The filter of these arguments, parsed once for every poll that sends the same (the
        cache holds at most ``FILTER_CACHE`` filters of short query strings)."""
        if len(request.uri) > 1024:
            return parse_query(args, RESERVED)
        key = tuple((k, tuple(v)) for k, v in args.items() if k not in _RESERVED)
        filters = self._filters
        flt = filters.get(key)
        if flt is None:
            flt = parse_query(args, RESERVED)  # raises for a bad filter: nothing cached
            filters[key] = flt
            if len(filters) > FILTER_CACHE:
                filters.popitem(last=False)
        return flt

    def render_GET(self, request: Request) -> bytes | int:
        args = query_args(request)
        try:
            timeout = number_arg(args, "timeout", self.default_timeout, 0, self.max_timeout)
            limit = int(number_arg(args, "limit", 100, 1, self.max_limit))
            sink = _PollSink(request, limit, self)
            if cloudevents.parse_format(single(args, "format")) == cloudevents.CLOUDEVENTS:
                sink.cloudevents = self.cloudevents
            sub = self.hub.subscribe(sink, self._filter(request, args), single(args, "since"), "longpoll")
        except ValueError as exc:
            allow_cors(request)
            return bad_argument(request, exc)
        sink.bind(sub, self.max_scan)
        request.notifyFinish().addBoth(sink.cleanup)
        self.timeouts.add(sink, timeout)
        sub.start()
        return NOT_DONE_YET
