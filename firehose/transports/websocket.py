"""``GET /ws``: WebSocket (autobahn), one JSON object per message.

The client sends commands: ``{"cmd": "subscribe", "filter": {...}, "since": "<cursor>"}``,
``{"cmd": "unsubscribe"}`` and ``{"cmd": "ping"}``.  A new ``subscribe`` replaces the previous
subscription on the same socket.  Control messages carry a ``type`` without a dot
(``subscribed``, ``unsubscribed``, ``gap``, ``pong``, ``error``); event types always have one.

Fan-out cost is kept per event, not per delivery: each event is framed once (a prepared message
cached on the event) and a batch of events goes to a socket in one write.  Compression is
refused, because permessage-deflate would compress per connection and defeat the prepared frame.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from firehose.cursor import CursorError
from firehose.event import Event, dumps, loads
from firehose.filters import FilterError, parse_json
from firehose.hub import Hub, Subscription
from firehose.transports import SubscriptionProducer, plain_tcp, write_now

CLOSE_GOING_AWAY = 1001


class FirehoseWebSocket(WebSocketServerProtocol):
    factory: FirehoseWebSocketFactory

    subscription: Subscription | None = None
    _producer: SubscriptionProducer | None = None
    _tcp: Any = None

    def onConnect(self, request: ConnectionRequest) -> None:
        return None

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
        self._producer = SubscriptionProducer()
        transport.registerProducer(self._producer, True)
        self.factory.connections += 1

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
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
            self._error("bad_command", f"unknown cmd {cmd!r}: use subscribe, unsubscribe or ping")

    def _subscribe(self, msg: dict[str, Any]) -> None:
        since = msg.get("since")
        if since is not None and not isinstance(since, str):
            return self._error("bad_cursor", "'since' must be a cursor string")
        try:
            flt = parse_json(msg.get("filter"))
        except FilterError as exc:
            return self._error("bad_filter", str(exc))
        try:
            sub = self.factory.hub.subscribe(self, flt, since, "websocket")
        except CursorError as exc:
            return self._error("bad_cursor", str(exc))  # the current subscription goes on
        self._end_subscription()
        self.subscription = sub
        if self._producer is not None:
            self._producer.attach(sub)
        self._control(
            {"type": "subscribed", "filter": flt.as_dict(), "cursor": self.factory.hub.head_cursor}
        )
        sub.start()

    def _end_subscription(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None

    # Sink, for the hub.

    def send(self, events: list[Event]) -> None:
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        prepare = self.factory.prepareMessage
        frames = []
        for e in events:
            if e.ws_frame is None:
                e.ws_frame = prepare(e.encoded, isBinary=False, doNotCompress=True)
            frames.append(e.ws_frame.payloadHybi)
        data = b"".join(frames)
        if self.send_queue:  # autobahn has chopped or synchronous writes pending: keep order
            self.sendData(data)
        elif self._tcp is not None:
            # Straight to the socket (autobahn's sendData formats a debug log line's arguments
            # on every call, logging or not), sent now if the socket is idle.
            write_now(self._tcp, data)
        else:
            self.transport.write(data)  # type: ignore[union-attr]

    def replayed(self, caught_up: bool) -> None:
        """Nothing to do as the replay progresses."""

    def gap(self, gap: dict[str, Any], final: bool) -> None:
        self._control(gap)
        if final:
            self.subscription = None

    def _control(self, msg: dict[str, Any]) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(dumps(msg), isBinary=False)

    def _error(self, error: str, message: str) -> None:
        self._control({"type": "error", "error": error, "message": message})

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._end_subscription()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._producer is not None:
            self.factory.connections -= 1
            self._producer = None
        self._end_subscription()
        super().connectionLost(reason)


class FirehoseWebSocketFactory(WebSocketServerFactory):
    protocol = FirehoseWebSocket  # type: ignore[assignment]

    def __init__(self, hub: Hub, max_message: int = 64 * 1024, ping_interval: float = 30.0):
        super().__init__()
        self.hub = hub
        self.connections = 0
        self.setProtocolOptions(
            maxFramePayloadSize=max_message,
            maxMessagePayloadSize=max_message,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_interval,
            perMessageCompressionAccept=lambda offers: None,
            tcpNoDelay=True,
        )


def websocket_resource(hub: Hub) -> WebSocketResource:
    return WebSocketResource(FirehoseWebSocketFactory(hub))
