"""The HTTP side of delivery: connections only to checked addresses, a POST bounded in time
and in the answer read, and every failure told as a sentence for ``last_error``.

The default agent's endpoints resolve a host name themselves, check every address with
:func:`~firehose.webhooks.urls.check_address` and connect to a checked one, so a name that
resolves elsewhere the next time cannot bypass the check.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IResolutionReceiver, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from firehose.webhooks.errors import WebhookError
from firehose.webhooks.urls import IPAddress, IPNetwork, check_address, parse_url

#: Bytes of a receiver's answer read (and dropped) before the connection is closed: its
#: status is all we need, and a receiver streaming a body must not cost memory.
ANSWER_LIMIT = 8192

Resolve = Callable[[str, int], "defer.Deferred[list[IPAddress]]"]


def resolver(reactor: Any) -> Resolve:
    """Resolve a host name with the reactor's resolver (``getaddrinfo`` in a thread)."""

    def resolve(host: str, port: int) -> defer.Deferred[list[IPAddress]]:
        found: list[IPAddress] = []
        done: defer.Deferred[list[IPAddress]] = defer.Deferred()

        @implementer(IResolutionReceiver)
        class Receiver:
            def resolutionBegan(self, resolution: Any) -> None:
                """Nothing to keep."""

            def addressResolved(self, address: Any) -> None:
                found.append(ipaddress.ip_address(address.host))

            def resolutionComplete(self) -> None:
                done.callback(found)

        reactor.nameResolver.resolveHostName(Receiver(), host, port)
        return done

    return resolve


@implementer(IStreamClientEndpoint)
class _CheckedEndpoint:
    """Connects to ``host`` only at an address :func:`check_address` accepts: an IP literal as
    it is, a name resolved here, every address checked, then a checked one connected to (in
    order, the next after a failure), never resolved again by someone else."""

    def __init__(self, factory: CheckedEndpointFactory, host: str, port: int) -> None:
        self.endpoints, self.host, self.port = factory, host, port

    def connect(self, protocol_factory: Any) -> defer.Deferred[Any]:
        try:
            literal: IPAddress | None = ipaddress.ip_address(self.host)
        except ValueError:
            literal = None
        if literal is not None:
            found: defer.Deferred[list[IPAddress]] = defer.succeed([literal])
        else:
            found = self.endpoints.resolve(self.host, self.port)

        def checked(addresses: list[IPAddress]) -> defer.Deferred[Any]:
            if not addresses:
                raise error.DNSLookupError(self.host)
            for address in addresses:
                check_address(address, self.endpoints.allow)
            return self._connect(list(addresses), protocol_factory)

        return found.addCallback(checked)

    def _connect(self, addresses: list[IPAddress], protocol_factory: Any) -> defer.Deferred[Any]:
        address = addresses.pop(0)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        kind = TCP6ClientEndpoint if address.version == 6 else TCP4ClientEndpoint
        d = kind(self.endpoints.reactor, str(address), self.port, timeout=self.endpoints.timeout).connect(
            protocol_factory)
        if addresses:
            d.addErrback(lambda f: f if f.check(defer.CancelledError) else self._connect(addresses, protocol_factory))
        return d


@implementer(IAgentEndpointFactory)
class CheckedEndpointFactory:
    """The endpoints of the dispatcher's HTTP agent: every connection goes to a checked address.

    :param allow: networks accepted although refused by default.
    :param resolve: host name -> addresses; default the reactor's resolver.
    """

    def __init__(self, reactor: Any, allow: Sequence[IPNetwork], timeout: float,
                 resolve: Resolve | None = None) -> None:
        self.reactor, self.allow, self.timeout = reactor, list(allow), timeout
        self.resolve = resolve or resolver(reactor)
        self._tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: Any) -> Any:
        host = urllib.parse.unquote(uri.host.decode("ascii"))
        endpoint = _CheckedEndpoint(self, host, uri.port)
        if uri.scheme == b"https":
            # TLS checks the certificate against the URL's host, whatever address we reached.
            return wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


@implementer(IBodyProducer)
class _Body:
    """A request body already in memory (``FileBodyProducer`` would need a cooperator)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.length = data, len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        """Written at once: nothing to pause."""

    def resumeProducing(self) -> None:
        """Written at once: nothing to resume."""

    def stopProducing(self) -> None:
        """Written at once: nothing to stop."""


class _Answer(Protocol):
    """Reads a receiver's answer body and drops it; past ``limit`` bytes it stops reading and
    the connection is closed.  ``done`` fires when the body ended, either way; cancelling
    it (the delivery timed out) closes the connection too."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.received = 0
        self.done: defer.Deferred[None] = defer.Deferred(lambda _: self._stop())

    def dataReceived(self, data: bytes) -> None:
        if self.received > self.limit:
            return  # already stopping: what still arrives is not read
        self.received += len(data)
        if self.received > self.limit:
            self._stop()

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()  # stops reading at once (TCP and TLS alike)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)


class DeliveryError(Exception):
    """A delivery failed; the message is a sentence for ``last_error``."""


def describe_failure(failure: Failure, target: str, timeout: float) -> str:
    """A sentence saying why a POST to ``target`` (host:port) failed, never a repr."""
    if failure.check(defer.CancelledError, TimeoutError, error.TimeoutError, error.ConnectingCancelledError):
        return f"timed out after {timeout:g} s"
    if failure.check(WebhookError):  # AddressNotAllowed, from the endpoint
        return str(failure.value)
    if failure.check(error.ConnectionRefusedError):
        return f"connection refused by {target}"
    if failure.check(error.DNSLookupError):
        return f"cannot resolve the host of {target}"
    if failure.check(ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed):
        reasons = getattr(failure.value, "reasons", None) or []
        if any("SSL" in type(r.value).__module__ or "ssl" in type(r.value).__module__ for r in reasons):
            return f"the TLS handshake with {target} failed"
        return f"the connection to {target} closed before an answer"
    if failure.check(error.ConnectError):
        why = getattr(failure.value, "osError", None) or type(failure.value).__name__
        return f"cannot connect to {target}: {why}"
    return f"delivery to {target} failed: {type(failure.value).__name__}: {str(failure.value)[:200]}"



def checked_agent(
    reactor: Any, allow: Sequence[IPNetwork], timeout: float, resolve: Resolve | None = None
) -> tuple[IAgent, HTTPConnectionPool]:
    """The dispatcher's default agent, and its connection pool (to close at stop): at most two
    persistent connections per receiver, each to a checked address only."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 2
    agent = Agent.usingEndpointFactory(reactor, CheckedEndpointFactory(reactor, allow, timeout, resolve), pool=pool)
    return agent, pool


def post(
    agent: IAgent, clock: Any, timeout: float, url: str, body: bytes, headers: dict[bytes, list[bytes]]
) -> defer.Deferred[int]:
    """POST; fires with the status code or fails with a :class:`DeliveryError` whose
    message is a sentence.  Never raises.  The whole delivery (resolving, connecting,
    the answer) is bounded by ``timeout`` seconds of ``clock``; at most :data:`ANSWER_LIMIT`
    bytes of the answer are read, and dropped: a receiver's body costs no memory.  No redirect
    is followed (it could lead anywhere)."""
    try:
        target = parse_url(url)
    except WebhookError as exc:
        return defer.fail(DeliveryError(str(exc)))
    d: defer.Deferred[Any] = defer.maybeDeferred(agent.request, b"POST", target.uri(), Headers(headers), _Body(body))

    def answered(response: Any) -> defer.Deferred[int]:
        answer = _Answer(ANSWER_LIMIT)
        response.deliverBody(answer)
        return answer.done.addCallback(lambda _: response.code)

    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        d.cancel()  # whatever it waits on: the resolver, the connection, the answer

    def failed(failure: Failure) -> Failure:
        if expired:
            return Failure(DeliveryError(f"timed out after {timeout:g} s"))
        return Failure(DeliveryError(describe_failure(failure, target.netloc, timeout)))

    d.addCallback(answered)
    timer = clock.callLater(timeout, expire)

    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    d.addBoth(done)
    d.addErrback(failed)
    return d
