"""The Twisted client: :class:`FirehoseClient`, a WebSocket subscriber (autobahn) that never
loses its place.

Imported only when ``firehose.client.FirehoseClient`` is first used (the package loads it
lazily), so a script using only the blocking client never imports Twisted or autobahn.  What the
user sees (callbacks, ``async for``, the cursor) is :class:`~firehose.client.consumer.Consumer`,
shared with :class:`firehose.testing.FakeClient`; this module is the connection: connect,
subscribe, reconnect with backoff, resubscribe after a ``slow`` gap, and move to the next URL
when it is given several (nodes of one firehose).
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString

from firehose.backoff import Backoff
from firehose.client.common import Gap, RequestError, base_urls, check_since, filter_dict, offset_after
from firehose.client.consumer import Consumer

log = logging.getLogger("firehose.client")


class FirehoseClient(Consumer):
    """A Twisted-native subscriber over WebSocket that never loses its place.

    Give it ``on_event`` (called with each event dict, in order) or iterate it inside a
    coroutine::

        client = FirehoseClient("http://127.0.0.1:8080", builder="linux*")
        client.start()
        async for event in client:
            ...

    It reconnects with :class:`~firehose.backoff.Backoff` after a drop or a server restart and
    subscribes with ``since`` = the last event it received, so each event is delivered exactly
    once.  A ``slow`` gap (it did not read fast enough) is handled by resubscribing from the
    gap's cursor; a gap that lost events goes to ``on_gap`` (or into the iteration as a
    :class:`~firehose.client.common.Gap`).

    :param url: the server; or the nodes of one firehose (a list, or separated by commas).  A
        failed connection or a lost one moves to the next URL at once and subscribes there with
        the same cursor (the nodes share one cursor space); the backoff applies once every URL
        has failed in a row, and a working URL is kept.
    :param reactor: the reactor (default: the global one).
    :param connect: ``connect(factory) -> Deferred[protocol]``; default a TCP/TLS connection
        to the URL's host (tests plug in memory transports).
    :param max_queued: with async iteration, events read but not yet consumed; beyond that
        the socket stops being read (the server then ends the subscription as ``slow`` and
        the client catches up from the journal once the consumer is ready).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        filter: Mapping[str, Any] | None = None,
        since: str | None = None,
        *,
        on_event: Callable[[dict[str, Any]], Any] | None = None,
        on_gap: Callable[[Gap], Any] | None = None,
        reactor: Any = None,
        backoff: Backoff | None = None,
        connect: Callable[[Any], Any] | None = None,
        ping_interval: float = 30.0,
        max_queued: int = 1000,
        **fields: Any,
    ) -> None:
        if reactor is None:
            # Here, not at the top: importing the global reactor installs it, which is the
            # caller's choice to make (a program may install another one first).
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        #: The nodes it may use, in order; :attr:`base` is the one in use.
        self.bases = base_urls(url)
        self._node = 0
        #: Connections failed or lost in a row since the last ``subscribed``.
        self._failed = 0
        self.filter = filter_dict(filter, **fields)
        self._since = check_since(since)
        super().__init__(self._since, on_event, on_gap, max_queued)
        #: Position to subscribe from after a reconnect: the last event *received*.
        self._received: str | None = self._since
        self.backoff = backoff or Backoff()
        self._connect = connect or self._tcp_connect
        self.ping_interval = ping_interval
        self.connected = False
        #: Connections made (a reconnect counts), for tests and metrics.
        self.connections = 0
        self._protocol: Any = None
        self._retry: Any = None
        self._connecting: Any = None
        self._stopped = False
        self._started = False

    @property
    def base(self) -> str:
        """The base URL the client connects to now."""
        return self.bases[self._node]

    @property
    def ws_url(self) -> str:
        return self.base.replace("http", "ws", 1) + "/ws"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FirehoseClient:
        """Connect and subscribe (returns at once; delivery follows)."""
        if not self._started:
            self._started = True
            self._open()
        return self

    def stop(self) -> defer.Deferred[None]:
        """Disconnect and stop reconnecting; returns :attr:`done` (fires once closed)."""
        if self._stopped:
            return self.done
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None and getattr(protocol, "transport", None) is not None:
            protocol.transport.abortConnection() if hasattr(protocol.transport, "abortConnection") \
                else protocol.transport.loseConnection()
        self._finish(None)
        return defer.succeed(None) if self.done.called else self.done

    # -- connection --------------------------------------------------------------------------

    def _factory(self) -> WebSocketClientFactory:
        factory = WebSocketClientFactory(self.ws_url, reactor=self.reactor)
        factory.protocol = _ClientProtocol
        factory.client = self  # type: ignore[attr-defined]
        factory.setProtocolOptions(
            autoPingInterval=self.ping_interval or 0,
            autoPingTimeout=self.ping_interval or 0,
            perMessageCompressionOffers=[],
        )
        return factory

    def _tcp_connect(self, factory: Any) -> Any:
        parts = urllib.parse.urlsplit(self.base)
        host = parts.hostname or "127.0.0.1"
        kind = "tls" if parts.scheme == "https" else "tcp"
        port = parts.port or (443 if kind == "tls" else 80)
        endpoint = clientFromString(self.reactor, f"{kind}:host={host}:port={port}:timeout=10")
        return endpoint.connect(factory)

    def _open(self) -> None:
        self._retry = None
        if self._stopped:
            return
        try:
            d = self._connect(self._factory())
        except Exception as exc:  # a connector that fails synchronously
            d = defer.fail(exc)
        self._connecting = d

        def failed(failure: Any) -> None:
            self._connecting = None
            if not self._stopped:
                self._schedule(f"cannot connect: {failure.getErrorMessage()}")

        def connected(_: Any) -> None:
            self._connecting = None

        d.addCallbacks(connected, failed)

    def _schedule(self, why: str) -> None:
        if self._stopped or (self._retry is not None and self._retry.active()):
            return
        self._failed += 1
        failed = self.base
        self._node = (self._node + 1) % len(self.bases)
        if self._failed % len(self.bases):
            # Another node may be up: try it now; back off only once every URL has failed.
            log.warning("firehose: %s at %s; trying %s from %s", why, failed, self.base, self._received or "now")
            self._retry = self.reactor.callLater(0, self._open)
            return
        delay = self.backoff.next()
        log.warning("firehose: %s; reconnecting in %.1fs from %s", why, delay, self._received or "now")
        self._retry = self.reactor.callLater(delay, self._open)

    def _opened(self, protocol: Any) -> None:
        if self._stopped:
            protocol.transport.loseConnection()
            return
        self._protocol = protocol
        self.connections += 1
        self._subscribe()
        if self._reading_paused:
            protocol.transport.pauseProducing()

    def _subscribe(self) -> None:
        msg: dict[str, Any] = {"cmd": "subscribe", "filter": self.filter}
        if self._received is not None:
            msg["since"] = self._received
        self._protocol.sendMessage(json.dumps(msg).encode())

    def _closed(self, protocol: Any, why: str) -> None:
        if protocol is not self._protocol and self._protocol is not None:
            return
        self._protocol = None
        self.connected = False
        if not self._stopped and self._error is None:
            self._schedule(f"connection lost ({why})")

    def _pause_reading(self) -> None:
        if self._protocol is not None:
            self._protocol.transport.pauseProducing()

    def _resume_reading(self) -> None:
        if self._protocol is not None:
            self._protocol.transport.resumeProducing()

    # -- messages ----------------------------------------------------------------------------

    def _message(self, payload: bytes) -> None:
        if self._stopped:
            return  # frames read before stop() (the rest of a replay page): stop means stop
        try:
            msg = json.loads(payload)
        except ValueError:
            log.warning("firehose: ignoring a malformed message")
            return
        kind = str(msg.get("type", ""))
        if "." in kind:
            received = self._received
            if received not in (None, "earliest") and not offset_after(msg["id"], received):
                return  # already delivered (defensive: the server never sends it twice)
            self._received = msg["id"]
            self._deliver(msg)
        elif kind == "subscribed":
            self.connected = True
            self._failed = 0
            self.backoff.reset()
            if self._received is None:
                self._received = msg.get("cursor")
                if self.cursor is None:
                    self.cursor = self._received
        elif kind == "gap":
            gap = Gap(msg)
            if gap.cursor:
                self._received = gap.cursor
            if gap.reason in ("slow", "error"):
                log.info("firehose: %s gap; resubscribing from %s", gap.reason, gap.cursor)
                if self._protocol is not None:
                    self._subscribe()
            else:
                self._deliver(gap)
        elif kind == "error":
            error = RequestError(str(msg.get("error")), str(msg.get("message")))
            self._stopped = True
            protocol, self._protocol = self._protocol, None
            if protocol is not None:
                protocol.transport.loseConnection()
            self._finish(error)


class _ClientProtocol(WebSocketClientProtocol):
    """Passes the socket's events to the :class:`FirehoseClient` that made the factory."""

    def onOpen(self) -> None:
        self.factory.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.client._message(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.client._closed(self, reason or f"code {code}")
