"""Subscriber transports: thin adapters that parse a request, make a sink and hand it to the hub.

Each transport knows the hub and nothing of the other transports.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
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
