"""``GET /poll``: long-poll HTTP.  Answers at once when events follow ``since``, else waits.

A poll is a subscription that ends with its answer: the hub's replay/live seam applies to it
unchanged, so successive polls that pass each answer's ``cursor`` as the next ``since`` see
every matching event exactly once.  From history the answer gathers up to ``limit`` events
(the hub hands them over a slice at a time) and examines at most ``max_scan`` events, so one
request costs bounded work whatever its filter; every answer names the stream's ``head`` and
says whether ``cursor`` is behind it (``more``), so a client pages with ``while more``.
``format=cloudevents`` answers each event as a structured CloudEvent (:mod:`firehose.cloudevents`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.server import NOT_DONE_YET, Request

from firehose import cloudevents
from firehose._http import ReadResource, allow_cors, bad_argument, number_arg, query_args, single
from firehose.cursor import parse_cursor
from firehose.event import Event, dumps
from firehose.filters import parse_query
from firehose.hub import Hub, Subscription
from firehose.transports.frames import FrameCache

RESERVED = ("since", "timeout", "limit", "format")


class _PollSink:
    """Gathers one poll's answer from its subscription, then ends it.

    While the hub replays history the sink collects what it is sent and answers when it holds
    ``limit`` events, when the replay reaches the head, or when ``max_scan`` events have been
    examined (checked after each page, so at most a page more): a selective filter far behind
    the head then gets an answer with ``more`` and a ``cursor`` past what was examined, rather
    than holding the request and the journal's reader until the whole history is scanned.
    Once caught up it waits for live events and answers with the first that match.
    """

    def __init__(self, request: Request, limit: int) -> None:
        self.request = request
        self.limit = limit
        self.subscription: Subscription | None = None
        self.timer: IDelayedCall | None = None
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
        self.timer = None
        sub = self.subscription
        assert sub is not None
        if self.caught_up:
            self._answer(sub.position)
        else:
            self.expired = True

    def _answer(self, offset: int, gap: dict[str, Any] | None = None) -> None:
        """Answer with the gathered events and ``cursor`` at ``offset``; ``more`` when that is
        behind the head (there are events after it the client has not been shown or had
        examined for it), and ``head`` as it is now."""
        if self.done:
            return
        sub = self.subscription
        assert sub is not None
        hub = sub.hub
        head = hub.journal.head
        tail: dict[str, Any] = {} if gap is None else {"gap": gap}
        tail.update(cursor=hub.cursor(offset), more=offset < head, head=hub.cursor(head))
        frames = self.cloudevents
        encoded = [e.encoded for e in self.events] if frames is None else [frames.frame(e) for e in self.events]
        body = b'{"events":[' + b",".join(encoded) + b"]," + dumps(tail)[1:] + b"\n"
        self.cleanup()
        self.request.setHeader(b"content-type", b"application/json")
        self.request.write(body)
        self.request.finish()

    def cleanup(self, _: object = None) -> None:
        self.done = True
        if self.subscription is not None:
            self.subscription.close()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


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

    def render_GET(self, request: Request) -> bytes | int:
        allow_cors(request)
        args = query_args(request)
        try:
            timeout = number_arg(args, "timeout", self.default_timeout, 0, self.max_timeout)
            limit = int(number_arg(args, "limit", 100, 1, self.max_limit))
            sink = _PollSink(request, limit)
            if cloudevents.parse_format(single(args, "format")) == cloudevents.CLOUDEVENTS:
                sink.cloudevents = self.cloudevents
            sub = self.hub.subscribe(sink, parse_query(args, RESERVED), single(args, "since"), "longpoll")
        except ValueError as exc:
            return bad_argument(request, exc)
        sink.bind(sub, self.max_scan)
        request.setHeader(b"cache-control", b"no-store")
        request.notifyFinish().addBoth(sink.cleanup)
        sink.timer = self.clock.callLater(timeout, sink.timeout)
        sub.start()
        return NOT_DONE_YET
