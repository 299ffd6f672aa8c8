"""``GET /poll``: long-poll HTTP.  Answers at once when events follow ``since``, else waits.

A poll is a subscription that ends with its first delivery: the hub's replay/live seam applies
to it unchanged, so successive polls that pass each answer's ``cursor`` as the next ``since``
see every matching event exactly once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.server import NOT_DONE_YET, Request

from firehose._http import ReadResource, allow_cors, bad_argument, number_arg, query_args, single
from firehose.event import Event, dumps
from firehose.filters import parse_query
from firehose.hub import Hub, Subscription

RESERVED = ("since", "timeout", "limit")


class _PollSink:
    def __init__(self, request: Request, limit: int) -> None:
        self.request = request
        self.limit = limit
        self.subscription: Subscription | None = None
        self.timer: IDelayedCall | None = None
        self.done = False
        #: The timeout passed while a replay page was being read: answer once it is.
        self.expired = False

    def send(self, events: list[Event]) -> None:
        sub = self.subscription
        assert sub is not None
        if len(events) > self.limit:
            events = events[: self.limit]
            cursor = events[-1].cursor
        else:
            cursor = sub.cursor
        body = b'{"events":[' + b",".join(e.encoded for e in events) + b'],"cursor":' + dumps(cursor) + b"}\n"
        self.answer(body)

    def gap(self, gap: dict[str, Any], final: bool) -> None:
        self.answer(dumps({"events": [], "gap": gap, "cursor": gap["cursor"]}) + b"\n")

    def replayed(self, caught_up: bool) -> None:
        if self.expired:
            self._empty()

    def timeout(self) -> None:
        """Answer empty, but not while a replay page is being read: each answer then covers at
        least one page (so a client polling with ``timeout=0`` makes progress), and ``cursor``
        moves past what was examined."""
        self.timer = None
        sub = self.subscription
        assert sub is not None
        if not sub.live and sub.reading:
            self.expired = True
        else:
            self._empty()

    def _empty(self) -> None:
        assert self.subscription is not None
        self.answer(dumps({"events": [], "cursor": self.subscription.cursor}) + b"\n")

    def answer(self, body: bytes) -> None:
        if self.done:
            return
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
    """

    def __init__(
        self,
        hub: Hub,
        clock: IReactorTime,
        default_timeout: float = 30.0,
        max_timeout: float = 300.0,
        max_limit: int = 1000,
    ) -> None:
        super().__init__()
        self.hub = hub
        self.clock = clock
        self.default_timeout = default_timeout
        self.max_timeout = max_timeout
        self.max_limit = max_limit

    def render_GET(self, request: Request) -> bytes | int:
        allow_cors(request)
        args = query_args(request)
        try:
            timeout = number_arg(args, "timeout", self.default_timeout, 0, self.max_timeout)
            limit = int(number_arg(args, "limit", 100, 1, self.max_limit))
            sink = _PollSink(request, limit)
            sub = self.hub.subscribe(sink, parse_query(args, RESERVED), single(args, "since"), "longpoll")
        except ValueError as exc:
            return bad_argument(request, exc)
        sink.subscription = sub
        request.setHeader(b"cache-control", b"no-store")
        request.notifyFinish().addBoth(sink.cleanup)
        sink.timer = self.clock.callLater(timeout, sink.timeout)
        sub.start()
        return NOT_DONE_YET
