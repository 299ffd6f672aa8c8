"""``GET /sse``: Server-Sent Events.  ``id:`` is the cursor, ``event:`` the type.

A browser's ``EventSource`` reconnects by itself with ``Last-Event-ID``, so resuming needs no
code in the page.  A subscriber too slow to keep up gets an ``event: gap`` whose ``id:`` is its
resume cursor, and the stream ends: the reconnect then replays from the journal at the reader's
own pace.  Comment lines every ``heartbeat`` seconds keep proxies from closing a quiet stream.

``format=cloudevents`` makes each ``data:`` a structured CloudEvent (:mod:`firehose.cloudevents`);
``id:`` (the cursor, which is also the CloudEvent's ``id``) and ``event:`` (the firehose type, so
the same ``EventSource`` listeners work) stay, and gaps keep their own shape.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.web.server import NOT_DONE_YET, Request

from firehose import cloudevents
from firehose._http import ReadResource, allow_cors, bad_argument, query_args, single
from firehose.event import Event, dumps
from firehose.filters import parse_query
from firehose.hub import Hub, Subscription
from firehose.transports import SubscriptionProducer
from firehose.transports.frames import FrameCache, per_format

RESERVED = ("since", "format")


def _message(event: Event, data: bytes) -> bytes:
    """One SSE message of ``event`` carrying ``data``: ``id:`` the cursor, ``event:`` the type."""
    return b"id: " + event.cursor.encode() + b"\nevent: " + event.type.encode() + b"\ndata: " + data + b"\n\n"


def sse_frame(event: Event) -> bytes:
    """The event as one SSE message (made once per event by the resource's :class:`FrameCache`)."""
    return _message(event, event.encoded)


def sse_cloudevent_frame(event: Event) -> bytes:
    """The event as one SSE message whose data is a structured CloudEvent."""
    return _message(event, cloudevents.encode(event))


class _SSESink:
    def __init__(self, request: Request, frames: FrameCache) -> None:
        self.request = request
        self.frames = frames
        self.subscription: Subscription | None = None
        self.open = True

    def send(self, events: list[Event]) -> None:
        if self.open:
            self.request.write(self.frames.join(events))

    def replayed(self, caught_up: bool) -> None:
        """Nothing to do as the replay progresses."""

    def gap(self, gap: dict[str, Any], final: bool) -> None:
        if not self.open:
            return
        self.request.write(
            b"id: " + gap["cursor"].encode() + b"\nevent: gap\ndata: " + dumps(gap) + b"\n\n"
        )
        if final:
            self.open = False
            self.request.unregisterProducer()
            self.request.finish()


class SSEResource(ReadResource):
    """The SSE endpoint.  One heartbeat timer serves every open stream, running only while
    there are streams, so ten thousand quiet readers cost one timer, not ten thousand."""

    isLeaf = True

    def __init__(self, hub: Hub, clock: IReactorTime, heartbeat: float = 15.0) -> None:
        super().__init__()
        self.hub = hub
        self.clock = clock
        self.heartbeat = heartbeat
        self._streams: dict[_SSESink, None] = {}
        #: Each event's SSE message in each format, made once for every stream of that format.
        self.formats = per_format({cloudevents.FIREHOSE: sse_frame, cloudevents.CLOUDEVENTS: sse_cloudevent_frame})
        self._beat = LoopingCall(self._keepalive)
        self._beat.clock = clock

    def _keepalive(self) -> None:
        for sink in list(self._streams):
            if sink.open:
                sink.request.write(b": keepalive\n\n")

    def render_GET(self, request: Request) -> bytes | int:
        allow_cors(request)
        args = query_args(request)
        try:
            sink = _SSESink(request, self.formats[cloudevents.parse_format(single(args, "format"))])
            header = request.getHeader(b"last-event-id")
            since = header.decode("utf-8", "replace").strip() if header else single(args, "since")
            sub = self.hub.subscribe(sink, parse_query(args, RESERVED), since, "sse")
        except ValueError as exc:
            return bad_argument(request, exc)
        sink.subscription = sub
        transport: Any = request.channel.transport
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)  # a lone event must not wait for Nagle
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")
        request.write(b"retry: 2000\n: subscribed at " + self.hub.head_cursor.encode() + b"\n\n")
        request.registerProducer(SubscriptionProducer(sub), True)
        self._streams[sink] = None
        if not self._beat.running:
            self._beat.start(self.heartbeat, now=False)

        def gone(_: object) -> None:
            sink.open = False
            sub.close()
            self._streams.pop(sink, None)
            if not self._streams and self._beat.running:
                self._beat.stop()

        request.notifyFinish().addBoth(gone)
        sub.start()
        return NOT_DONE_YET
