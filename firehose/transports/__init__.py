"""Subscriber transports: thin adapters that parse a request, make a sink and hand it to the hub.

Each transport knows the hub and nothing of the other transports.  What they share is here:
the producer that carries Twisted's flow control to a subscription, and the socket fast path
(:func:`plain_tcp`, :func:`write_now`), which reads internals of ``twisted.internet.tcp``: its
unit test (tests/unit/test_fast_path.py) runs against the installed Twisted, and setup.py caps
Twisted at the versions it passed on.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import implementer

from firehose.hub import Subscription


@implementer(IPushProducer)
class SubscriptionProducer:
    """Tells a subscription when its socket's buffer fills and drains (Twisted flow control).

    A WebSocket may replace its subscription; :meth:`attach` hands the new one the socket's
    current state, so a subscription never starts writing into a socket that is already full.
    """

    __slots__ = ("subscription", "paused")

    def __init__(self, subscription: Subscription | None = None) -> None:
        self.subscription = subscription
        self.paused = False

    def attach(self, subscription: Subscription | None) -> None:
        self.subscription = subscription
        if subscription is not None and self.paused:
            subscription.pause()

    def pauseProducing(self) -> None:
        self.paused = True
        if self.subscription is not None:
            self.subscription.pause()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.subscription is not None:
            self.subscription.resume()

    def stopProducing(self) -> None:
        if self.subscription is not None:
            self.subscription.close()


def plain_tcp(transport: Any) -> tcp.Connection | None:
    """The plain TCP connection under ``transport``, or ``None`` (TLS, tests' fake transports).

    Only the server's own connection-tracking wrapper (an exact ``ProtocolWrapper``, through its
    ``transport``) is looked through: TLS is a ``ProtocolWrapper`` subclass
    (``TLSMemoryBIOProtocol``), and writing under it would bypass encryption.  For the same
    reason a ``tcp.Connection`` that ``startTLS`` turned secure (it then provides
    ``ISSLTransport`` and routes its own ``write`` through TLS) is not plain.
    """
    if type(transport) is ProtocolWrapper:
        transport = transport.transport
    if isinstance(transport, tcp.Connection) and not ISSLTransport.providedBy(transport):
        return transport
    return None


def write_now(connection: tcp.Connection, data: bytes) -> None:
    """Send at once when nothing waits in the connection's buffer.

    A plain ``write`` buffers, registers the socket with epoll, sends on the next reactor turn
    and unregisters it: three system calls and a turn of latency per write, paid by every
    subscriber of every event.  When the buffer is empty one ``send`` does it; what the kernel
    does not take goes through ``write`` as usual, flow control included.

    Twisted internals read here (``twisted.internet.abstract.FileDescriptor`` and
    ``twisted.internet.tcp.Connection``; check them when Twisted is upgraded): ``_tempDataLen``
    (bytes written but not yet moved to the buffer), ``dataBuffer`` and ``offset`` (the buffer
    and how much of it was sent), ``connected``, ``disconnecting``, ``_writeDisconnected``, and
    ``writeSomeData(data)``, which sends at most ``SEND_LIMIT`` bytes and returns the count sent
    (0 when the kernel takes nothing) or an exception instance when the connection is lost.
    """
    if (
        not connection._tempDataLen
        and connection.offset == len(connection.dataBuffer)
        and connection.connected
        and not connection.disconnecting
        and not connection._writeDisconnected
    ):
        sent = connection.writeSomeData(data)
        if isinstance(sent, int) and sent > 0:
            if sent == len(data):
                return
            data = data[sent:]
    connection.write(data)


class HeaderBlock:
    """Response headers fixed for every answer of an endpoint, serialized once.

    ``headers`` are (name, value) pairs; :attr:`block` is their ``Name: value\\r\\n`` lines, what
    :func:`respond` writes on its fast path, and :attr:`names` their lowercased names, which
    that path does not copy from the request's own headers.
    """

    __slots__ = ("headers", "block", "names")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.block = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        self.names = frozenset(name.lower() for name, _ in headers) | {b"content-length", b"transfer-encoding"}


def respond(request: Any, headers: HeaderBlock, body: bytes) -> None:
    """Answer ``request`` with ``200``, ``headers``, ``Content-Length`` and ``body``, and finish it.

    twisted.web's way costs a sanitizing ``setHeader`` per header, a ``Headers`` walk, chunked
    framing and several buffered writes sent on the next reactor turn.  Here the status line,
    the headers twisted.web set itself (``Server``, ``Date``, ``Connection: close``), the
    pre-serialized ``headers`` and the body go out in one :func:`write_now`, then
    ``request.finish()`` does the rest (keep-alive, the next pipelined request, notifications).

    Twisted internals relied on (``twisted.web.http.Request`` and ``twisted.web.server.Request``;
    tested against the installed Twisted in tests/unit/test_http_fast_path.py): ``clientproto``,
    ``code``, ``method`` (``HEAD``: twisted.web drops the body itself), ``startedWriting`` (set here, so ``finish`` writes no headers of its own),
    ``chunked`` (left 0, so ``finish`` writes no terminating chunk), ``sentLength``,
    ``finished``, ``_disconnected``, ``_inFakeHead`` (a HEAD answered as GET: no body) and
    ``_encoder``.  Anything else (HEAD, HTTP/0.9, an encoder, a response already started) goes
    through ``setHeader``/``write``/``finish`` as usual, with the same headers.
    """
    proto = request.clientproto
    if (
        (proto == b"HTTP/1.1" or proto == b"HTTP/1.0")
        and request.code == 200
        and request.method != b"HEAD"
        and not request.startedWriting
        and not request.finished
        and not request._disconnected
        and not request._inFakeHead
        and request._encoder is None
        and not request.cookies
    ):
        skip = headers.names
        out = [proto, b" 200 OK\r\n"]
        for name, values in request.responseHeaders.getAllRawHeaders():
            if name.lower() not in skip:
                for value in values:
                    out += (name, b": ", value, b"\r\n")
        out += (headers.block, b"Content-Length: %d\r\n\r\n" % len(body), body)
        data = b"".join(out)
        request.startedWriting = 1
        request.sentLength = len(body)
        connection = plain_tcp(request.channel.transport)
        if connection is not None:
            write_now(connection, data)
        else:
            request.channel.write(data)
        request.finish()
        return
    for name, value in headers.headers:
        request.setHeader(name, value)
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()
