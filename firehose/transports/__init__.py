"""Subscriber transports: thin adapters that parse a request, make a sink and hand it to the hub.

Each transport knows the hub and nothing of the other transports.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import implementer

from firehose.hub import Subscription


@implementer(IPushProducer)
class SubscriptionProducer:
    """Tells a subscription when its socket's buffer fills and drains (Twisted flow control).

    A WebSocket may replace its subscription; :meth:`attach` hands the new one the socket's
    current state, so a subscription never starts writing into a socket that is already full.
    """

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

    Only the server's own connection-tracking wrapper (an exact ``ProtocolWrapper``) is looked
    through: TLS is a ``ProtocolWrapper`` subclass, and writing under it would bypass encryption.
    """
    if type(transport) is ProtocolWrapper:
        transport = transport.transport
    return transport if isinstance(transport, tcp.Connection) else None


def write_now(connection: tcp.Connection, data: bytes) -> None:
    """Send at once when nothing waits in the connection's buffer.

    A plain ``write`` buffers, registers the socket with epoll, sends on the next reactor turn
    and unregisters it: three system calls and a turn of latency per write, paid by every
    subscriber of every event.  When the buffer is empty one ``send`` does it; what the kernel
    does not take goes through ``write`` as usual, flow control included.
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
