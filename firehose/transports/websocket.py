"""``GET /ws``: WebSocket (autobahn), one JSON object per message.

The client sends commands: ``{"cmd": "subscribe", "filter": {...}, "since": "<cursor>"}``
(``"format": "cloudevents"`` for events as structured CloudEvents, :mod:`firehose.cloudevents`),
``{"cmd": "unsubscribe"}`` and ``{"cmd": "ping"}``.  A new ``subscribe`` replaces the previous
subscription on the same socket.  Control messages carry a ``type`` without a dot
(``subscribed``, ``unsubscribed``, ``gap``, ``pong``, ``error``); event types always have one.

What one client may cost is bounded: commands are rate-limited (past ``command_burst`` at
once or ``commands_per_second`` on average the socket is closed with code 1008), the client's
commands are not read while the socket's send buffer is full (a client that does not read its
answers cannot make the server write more), and at most one journal read of a replay is in
flight per socket however many times the client resubscribes.

Fan-out cost is kept per event, not per delivery: each event is framed once per format (a
prepared message, kept in the factory's :class:`~firehose.transports.frames.FrameCache` of that
format) and a batch of events goes to a socket in one write.  Compression is refused, because permessage-deflate would compress per
connection and defeat the prepared frame.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from firehose import cloudevents
from firehose.cursor import CursorError
from firehose.event import Event, dumps, loads
from firehose.filters import FilterError, parse_json
from firehose.hub import Hub, Subscription
from firehose.limits import TokenBucket
from firehose.transports import SubscriptionProducer, plain_tcp, write_now
from firehose.transports.frames import FrameCache, per_format

CLOSE_POLICY_VIOLATION = 1008
#: Longest piece of a client's own input quoted back in an error message.
_QUOTE = 60
#: What autobahn keeps of the opening handshake and never reads once the socket is open (the
#: request's headers, bytes and parts, the answer): dropped at open, see :meth:`_shed`.
_HANDSHAKE_ATTRS = (
    "http_headers", "http_request_data", "http_response_data", "http_status_line", "http_request_params",
    "http_request_uri", "http_request_path", "http_request_host", "_wskey", "websocket_protocols",
    "websocket_extensions", "websocket_origin",
)


#: autobahn's server options copied onto every protocol that only its handshake reads: at open
#: the copies go, and :class:`_FactoryOption` reads the factory's (the same values).
_HANDSHAKE_OPTIONS = (
    "versions", "webStatus", "perMessageCompressionAccept", "serveFlashSocketPolicy", "flashSocketPolicy",
    "allowedOrigins", "allowedOriginsPatterns", "allowNullOrigin", "maxConnections", "trustXForwardedFor",
    "openHandshakeTimeout", "tcpNoDelay",
)


class _FactoryOption:
    """An option autobahn copies onto each protocol (``setattr`` at connection), read from the
    instance while it has its own copy, else from its factory."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        own = obj.__dict__
        return own[self.name] if self.name in own else getattr(obj.factory, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value


class _SendQueue(list[Any]):
    """autobahn's queue of chopped and synchronous writes, as a list: an empty ``deque``
    allocates a 64-slot block (~760 bytes) per socket, and this queue is empty unless autobahn
    itself queues (it appends, tests its length and pops from the left; all it does is here)."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class _SocketProducer(SubscriptionProducer):
    """The socket's producer: pauses the subscription, and stops reading the client's
    commands, while the socket's send buffer is full.

    Answers to commands (``pong``, ``error``, ``subscribed``) are writes too; without this a
    client sending pings and reading nothing grows the buffer without bound.  With it, its
    commands wait in its own socket until it reads.
    """

    __slots__ = ("transport",)

    def __init__(self, transport: Any) -> None:
        super().__init__()
        self.transport = transport

    def pauseProducing(self) -> None:
        super().pauseProducing()
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        # Reading first: the subscription may fill the buffer again, and then pauses us again.
        self.transport.resumeProducing()
        super().resumeProducing()


class _Feed:
    """The sink of one subscription of a socket.

    While it is the socket's current subscription it hands everything to the socket.  Once
    replaced (by ``subscribe`` or ``unsubscribe``) it delivers nothing, and if its replay had a
    journal read in flight, it tells the socket when that read ends: the next subscription
    reads only then, so a flood of ``subscribe`` holds one read per socket, not one per command.
    """

    __slots__ = ("ws", "frames", "current", "subscription")

    def __init__(self, ws: FirehoseWebSocket, frames: FrameCache) -> None:
        self.ws = ws
        #: The frames of the format this subscription asked for.
        self.frames = frames
        self.current = True
        self.subscription: Subscription | None = None

    def send(self, events: list[Event]) -> None:
        if self.current:
            self.ws._send_events(self.frames.join(events))

    def gap(self, gap: dict[str, Any], final: bool) -> None:
        if self.current:
            self.ws._gap(self, gap, final)
        elif final:
            self.ws._read_ended(self)

    def replayed(self, caught_up: bool) -> None:
        if not self.current:
            self.ws._read_ended(self)


class FirehoseWebSocket(WebSocketServerProtocol):
    factory: FirehoseWebSocketFactory

    #: The current subscription (delivering, or waiting for ``_draining``'s read to end).
    subscription: Subscription | None = None
    _feed: _Feed | None = None
    #: A replaced subscription whose replay read is still in flight.
    _draining: _Feed | None = None
    #: The current subscription, made while a read was draining: started when it ends.
    _deferred_start: Subscription | None = None
    _producer: SubscriptionProducer | None = None
    _bucket: TokenBucket | None = None
    _tcp: Any = None
    versions = _FactoryOption()
    webStatus = _FactoryOption()
    perMessageCompressionAccept = _FactoryOption()
    serveFlashSocketPolicy = _FactoryOption()
    flashSocketPolicy = _FactoryOption()
    allowedOrigins = _FactoryOption()
    allowedOriginsPatterns = _FactoryOption()
    allowNullOrigin = _FactoryOption()
    maxConnections = _FactoryOption()
    trustXForwardedFor = _FactoryOption()
    openHandshakeTimeout = _FactoryOption()
    tcpNoDelay = _FactoryOption()

    def onConnect(self, request: ConnectionRequest) -> None:
        return None

    def _connectionMade(self) -> None:
        super()._connectionMade()
        self.send_queue = _SendQueue()  # type: ignore[assignment]

    def _shed(self) -> None:
        """Drop what the open socket no longer needs of its handshake, then rebuild the
        instance's dictionary to fit what stays.

        An autobahn protocol holds some 100 attributes (its options are copied onto every
        instance), past the size at which a dictionary doubles, plus the handshake's headers
        and bytes: about 2.5 KB of an idle socket's ~10.  Deleting alone would not give the
        memory back (a dictionary never shrinks when keys go); a new one sized for the rest
        does.  The names dropped read as ``None`` from the class, should anything look.
        """
        attrs = self.__dict__
        for name in _HANDSHAKE_ATTRS:
            attrs.pop(name, None)
        factory = self.factory
        for name in _HANDSHAKE_OPTIONS:
            if name in attrs and attrs[name] is getattr(factory, name):
                del attrs[name]
        self.__dict__ = dict(attrs)

    def onOpen(self) -> None:
        # autobahn 26 never applies its own tcpNoDelay option: without this, Nagle plus delayed
        # ACKs add ~40 ms to a lone event.
        transport: Any = self.transport
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)
        # The HTTP channel that served the upgrade is still the socket's producer; take its place
        # so the subscription hears when the socket's buffer fills.
        self._tcp = plain_tcp(transport)
        transport.unregisterProducer()
        self._producer = _SocketProducer(transport)
        transport.registerProducer(self._producer, True)
        factory = self.factory
        self._bucket = TokenBucket(factory.commands_per_second, factory.command_burst, factory.reactor)
        self._shed()

    def _allowed(self) -> bool:
        """Spend a token for a command (or a ping frame); past the limit, close with 1008."""
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return False
        if self._bucket is None or self._bucket.take():
            return True
        factory = self.factory
        reason = (f"too many commands: at most {factory.command_burst} at once"
                  f" and {factory.commands_per_second:g} per second")
        self._end_all()
        self.sendCloseFrame(code=CLOSE_POLICY_VIOLATION, reasonUtf8=reason.encode(), isReply=False)
        return False

    def onPing(self, payload: bytes) -> None:
        # A ping frame is answered with a pong frame: a command like any other.
        if self._allowed():
            super().onPing(payload)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not self._allowed():
            return
        try:
            msg = loads(payload)
        except (ValueError, UnicodeDecodeError):
            return self._error("malformed_json", "a command must be a JSON object")
        if not isinstance(msg, dict):
            return self._error("bad_command", "a command must be a JSON object")
        cmd = msg.get("cmd")
        if cmd == "subscribe":
            self._subscribe(msg)
        elif cmd == "unsubscribe":
            self._end_subscription()
            self._control({"type": "unsubscribed"})
        elif cmd == "ping":
            self._control({"type": "pong", "cursor": self.factory.hub.head_cursor})
        else:
            self._error("bad_command", f"unknown cmd {repr(cmd)[:_QUOTE]}: use subscribe, unsubscribe or ping")

    def _subscribe(self, msg: dict[str, Any]) -> None:
        since = msg.get("since")
        if since is not None and not isinstance(since, str):
            return self._error("bad_cursor", "'since' must be a cursor string")
        fmt = msg.get("format")
        if fmt is not None and not isinstance(fmt, str):
            return self._error("bad_command", "'format' must be a string")
        try:
            fmt = cloudevents.parse_format(fmt)
        except ValueError as exc:
            return self._error("bad_command", str(exc))
        try:
            flt = parse_json(msg.get("filter"))
        except FilterError as exc:
            return self._error("bad_filter", str(exc))
        feed = _Feed(self, self.factory.formats[fmt])
        try:
            sub = self.factory.hub.subscribe(feed, flt, since, "websocket")
        except CursorError as exc:
            return self._error("bad_cursor", str(exc))  # the current subscription goes on
        self._end_subscription()
        feed.subscription = sub
        self.subscription, self._feed = sub, feed
        waits = self._draining is not None
        if self._producer is not None:
            self._producer.attach(None if waits else sub)
        self._control(
            {"type": "subscribed", "filter": flt.as_dict(), "format": fmt, "cursor": self.factory.hub.head_cursor}
        )
        if waits:
            self._deferred_start = sub  # its position is fixed: it misses nothing by waiting
        else:
            sub.start()

    def _end_subscription(self) -> None:
        """Stop delivering the current subscription.  One whose replay read is in flight stays
        open, delivering nothing, until that read ends (see :class:`_Feed`)."""
        sub, feed = self.subscription, self._feed
        self.subscription = self._feed = None
        if self._producer is not None:
            self._producer.attach(None)
        if sub is None or feed is None:
            return
        feed.current = False
        if sub is self._deferred_start:
            self._deferred_start = None
        if sub.reading and not sub.closed:
            assert self._draining is None  # a subscription starts only once none drains
            self._draining = feed
            sub.resume()  # unpaused, it reports the end of its read; reading, it starts none
        else:
            sub.close()

    def _read_ended(self, feed: _Feed) -> None:
        """A replaced subscription's read ended: close it, start the one that waited."""
        if feed is not self._draining:
            return
        self._draining = None
        if feed.subscription is not None:
            feed.subscription.close()
        sub, self._deferred_start = self._deferred_start, None
        if sub is not None and not sub.closed:
            if self._producer is not None:
                self._producer.attach(sub)
            sub.start()

    def _end_all(self) -> None:
        """The socket is closing: end every subscription it holds, reading or not."""
        self._end_subscription()
        draining, self._draining = self._draining, None
        if draining is not None and draining.subscription is not None:
            draining.subscription.close()

    # What the current subscription's feed hands over.

    def _send_events(self, data: bytes) -> None:
        """Send the frames of a batch of events (made by the subscription's frame cache)."""
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        if self.send_queue:  # autobahn has chopped or synchronous writes pending: keep order
            self.sendData(data)
        elif self._tcp is not None:
            # Straight to the socket (autobahn's sendData formats a debug log line's arguments
            # on every call, logging or not), sent now if the socket is idle.
            write_now(self._tcp, data)
        else:
            self.transport.write(data)  # type: ignore[union-attr]

    def _gap(self, feed: _Feed, gap: dict[str, Any], final: bool) -> None:
        self._control(gap)
        if final:  # the hub has ended it
            feed.current = False
            self.subscription = self._feed = None

    def _control(self, msg: dict[str, Any]) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(dumps(msg), isBinary=False)

    def _error(self, error: str, message: str) -> None:
        self._control({"type": "error", "error": error, "message": message})

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._end_all()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._end_all()
        self._producer = None
        super().connectionLost(reason)


# Dropped at open (_shed): should autobahn read one of them later, it reads None, not an error.
for _name in _HANDSHAKE_ATTRS:
    setattr(FirehoseWebSocket, _name, None)


class FirehoseWebSocketFactory(WebSocketServerFactory):
    """Sockets of one hub.

    :param commands_per_second: commands (and ping frames) a client may send per second on
        average; ``command_burst``: at once.  Past either the socket is closed with 1008.
    :param reactor: the clock of those limits and of autobahn's timers.
    """

    protocol = FirehoseWebSocket  # type: ignore[assignment]

    def _text_frame(self, payload: bytes) -> bytes:
        """``payload`` as a text frame (unmasked, as a server's are; never compressed), for the
        factory's frame caches: built once per event, the same bytes then go to every socket."""
        return self.prepareMessage(payload, isBinary=False, doNotCompress=True).payloadHybi

    def _frame(self, event: Event) -> bytes:
        """One event as a text frame."""
        return self._text_frame(event.encoded)

    def _cloudevent_frame(self, event: Event) -> bytes:
        """One event as a text frame holding a structured CloudEvent (``format=cloudevents``)."""
        return self._text_frame(cloudevents.encode(event))

    def __init__(
        self,
        hub: Hub,
        max_message: int = 64 * 1024,
        ping_interval: float = 30.0,
        commands_per_second: float = 10.0,
        command_burst: int = 50,
        reactor: Any = None,
    ):
        super().__init__(reactor=reactor)
        self.hub = hub
        self.commands_per_second = commands_per_second
        self.command_burst = command_burst
        #: Each event's frame in each format, made once for every socket of this hub asking for it.
        self.formats = per_format({cloudevents.FIREHOSE: self._frame, cloudevents.CLOUDEVENTS: self._cloudevent_frame})
        self.setProtocolOptions(
            maxFramePayloadSize=max_message,
            maxMessagePayloadSize=max_message,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_interval,
            perMessageCompressionAccept=lambda offers: None,
            tcpNoDelay=True,
        )


def websocket_resource(hub: Hub, clock: Any = None) -> WebSocketResource:
    """``/ws`` on ``hub``; ``clock`` runs the command limits and autobahn's timers."""
    return WebSocketResource(FirehoseWebSocketFactory(hub, reactor=clock))
