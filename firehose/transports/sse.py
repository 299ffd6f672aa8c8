"""``GET /sse``: Server-Sent Events.  ``id:`` is the cursor, ``event:`` the type.

A browser's ``EventSource`` reconnects by itself with ``Last-Event-ID``, so resuming needs no
code in the page.  A subscriber too slow to keep up gets an ``event: gap`` whose ``id:`` is its
resume cursor, and the stream ends: the reconnect then replays from the journal at the reader's
own pace.  Comment lines every ``heartbeat`` seconds keep proxies from closing a quiet stream.

``format=cloudevents`` makes each ``data:`` a structured CloudEvent (:mod:`firehose.cloudevents`);
``id:`` (the cursor, which is also the CloudEvent's ``id``) and ``event:`` (the firehose type, so
the same ``EventSource`` listeners work) stay, and gaps keep their own shape.

Events go straight to the socket (:func:`~firehose.transports.write_now`, as on ``/ws``), not
through twisted.web's ``Request.write``, which copies every write into a chunk of its own and
leaves it in the buffer for the next reactor turn.  On an HTTP/1.1 (chunked) stream each
event's message is cached already framed as a chunk (:func:`chunked`), so a batch is the
join of its cached chunks and costs no framing per subscriber; an HTTP/1.0 stream gets the
bare messages.  The request stays twisted.web's: its headers, heartbeats, gaps and its own
``finish()`` (the terminating chunk) go through it, after whatever was written directly, since
both end in the same connection buffer.  TLS, HEAD and anything not plain TCP keep
``Request.write``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.web.server import NOT_DONE_YET, Request

from firehose import cloudevents
from firehose._http import ReadResource, allow_cors, bad_argument, query_args, single
from firehose.event import Event, dumps
from firehose.filters import parse_query
from firehose.hub import Hub, Subscription
from firehose.transports import SubscriptionProducer, plain_tcp, write_now
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


def chunked(make: Callable[[Event], bytes]) -> Callable[[Event], bytes]:
    """``make``'s message framed as one HTTP/1.1 chunk: a batch of such frames end to end is a
    valid chunked body, so the frame cache's join is all a chunked stream needs."""

    def frame(event: Event) -> bytes:
        message = make(event)
        return b"%x\r\n" % len(message) + message + b"\r\n"

    return frame


def direct_body(request: Request) -> tuple[tcp.Connection | None, bool]:
    """The connection to write ``request``'s body to directly, and whether it is chunked;
    ``(None, False)`` when the body must go through ``request.write``.

    Called once the headers are written.  Twisted internals read (``twisted.web.http.Request``
    and ``twisted.web.server.Request``; tested against the installed Twisted in
    tests/unit/test_http_fast_path.py): ``startedWriting`` (the headers are out), ``chunked``
    (what ``write`` would frame, and what ``finish`` terminates), ``finished``,
    ``_disconnected``, ``_inFakeHead`` (a HEAD answered as GET: no body), ``_encoder`` (an
    encoding wrapper: none here) and ``channel.transport``; ``write`` replaced by a no-op for a
    status without a body.
    """
    if (
        not request.startedWriting
        or request.finished
        or request._disconnected
        or getattr(request, "_inFakeHead", False)
        or getattr(request, "_encoder", None) is not None
        or "write" in vars(request)
        or request.code != 200
    ):
        return None, False
    return plain_tcp(request.channel.transport), bool(request.chunked)


class _SSESink:
    __slots__ = ("request", "frames", "subscription", "open", "_tcp")

    def __init__(self, request: Request, frames: FrameCache) -> None:
        self.request = request
        self.frames = frames
        self.subscription: Subscription | None = None
        self.open = True
        #: The socket events go to directly, once :meth:`direct` found one.
        self._tcp: tcp.Connection | None = None

    def direct(self, connection: tcp.Connection, frames: FrameCache) -> None:
        """From now on write events to ``connection`` itself, framed by ``frames``."""
        self._tcp = connection
        self.frames = frames

    def send(self, events: list[Event]) -> None:
        if self.open:
            if self._tcp is not None:
                write_now(self._tcp, self.frames.join(events))
            else:
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
        #: The same, each framed as an HTTP/1.1 chunk: what a chunked stream sends directly.
        self.chunked_formats = per_format(
            {cloudevents.FIREHOSE: chunked(sse_frame), cloudevents.CLOUDEVENTS: chunked(sse_cloudevent_frame)}
        )
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
            fmt = cloudevents.parse_format(single(args, "format"))
            sink = _SSESink(request, self.formats[fmt])
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
        connection, is_chunked = direct_body(request)
        if connection is not None:
            sink.direct(connection, (self.chunked_formats if is_chunked else self.formats)[fmt])
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
