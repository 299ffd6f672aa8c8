"""What one client may hold of the server: connections, time to send a request, commands.

Three bounds, each at the level where the cost arises:

- :class:`ConnectionLimits` wraps the listening factory: it counts open connections, in all and
  per peer address, and answers a connection past either limit with a short HTTP refusal
  instead of handing it to the site.  File descriptors are the resource: every connection
  holds one whatever it does, so the count is taken before any HTTP parsing.
- :class:`DeadlineChannel` is the HTTP channel: a request must arrive whole (request line,
  headers and body) within a deadline from its first byte.  Twisted's own ``timeOut`` restarts
  on every byte received, so a client sending a header byte every few seconds would be held
  forever; this deadline does not move.  Once a request is received it no longer applies, so a
  long-lived answer (``/sse``, a waiting ``/poll``, ``/ws`` after the upgrade) is never cut by
  it.  Between requests Twisted's idle timeout (``site.timeOut``) closes a quiet keep-alive
  connection.
- :class:`TokenBucket` bounds the commands a WebSocket client may send (see
  :mod:`firehose.transports.websocket`).
"""

from __future__ import annotations

import resource
from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from firehose.config import DEFAULT_MAX_CONNECTIONS
from firehose.event import dumps

#: Seconds a refused client is given to read its refusal and hang up before it is cut off.
REFUSAL_LINGER = 2.0
#: Seconds a client told to retry later is asked to wait (``Retry-After``).
RETRY_AFTER = 5


def default_max_connections(soft_limit: int | None = None) -> int:
    """The connection limit when none is configured: 10,000, or 90% of the process's file
    descriptor soft limit if that is lower (the rest is for the journal, webhook requests and
    refusals on their way out), so the limit is reached before ``accept`` fails with EMFILE.

    :param soft_limit: ``RLIMIT_NOFILE``'s soft limit; read from the process when ``None``.
    """
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY or soft_limit < 0:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, min(DEFAULT_MAX_CONNECTIONS, soft_limit * 9 // 10))


def http_refusal(code: int, phrase: str, error: str, message: str, retry_after: int | None) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection: status, JSON body, and
    ``Retry-After`` when the client may try again."""
    body = dumps({"error": error, "message": message}) + b"\n"
    head = [
        f"HTTP/1.1 {code} {phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


class _Refusal(Protocol):
    """Writes a refusal, then closes without reading what the client sent.

    The close is a half-close, then a short linger: closing a socket whose client has sent
    bytes we have not read makes the kernel send a reset, and the client may then lose the
    refusal before reading it.  After the half-close the client sees the answer and the end of
    the stream; it hangs up, or it is cut off after ``linger`` seconds.
    """

    def __init__(self, answer: bytes, clock: IReactorTime, linger: float = REFUSAL_LINGER) -> None:
        self.answer = answer
        self.clock = clock
        self.linger = linger
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self.answer)
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None:
            transport.loseConnection()
            return
        half_close()
        self._timer = self.clock.callLater(self.linger, transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        """The request of a refused client is not read."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def _peer_host(addr: IAddress | None) -> str | None:
    """The address a per-client limit counts by: the IP of a TCP peer; ``None`` (no per-client
    limit) for UNIX sockets and other transports without one."""
    host = getattr(addr, "host", None)
    return host if isinstance(host, str) and host else None


class ConnectionLimits(WrappingFactory):
    """Knows every open connection (so ``close_all`` can end long-lived streams too) and
    refuses those past a limit.

    - Past ``max_connections`` open connections in all: ``503 Service Unavailable``, with
      ``Retry-After``: the server is full, any client should come back later.
    - Past ``max_per_address`` open connections from the client's address: ``429 Too Many
      Requests``, with ``Retry-After``: this client holds its share.  ``0`` turns the
      per-address limit off (behind a proxy every client has the proxy's address).

    A refused connection is not counted, is not handed to the site and costs no parsing.  The
    first refusal after an accepted connection is logged; the rest of a burst is not, so a
    flood cannot fill the log.

    :param clock: schedules the linger of refused connections.
    """

    noisy = False
    log = Logger()

    def __init__(
        self, wrapped: Any, max_connections: int, max_per_address: int, clock: IReactorTime
    ) -> None:
        super().__init__(wrapped)
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.clock = clock
        #: Open connections per peer address.
        self.per_address: Counter[str] = Counter()
        #: Connections refused, by reason (``server_full``, ``too_many_connections``).
        self.refused: Counter[str] = Counter()
        self._hosts: dict[Any, str] = {}
        self._quiet = False
        self._waiting: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: IAddress | None) -> Any:
        host = _peer_host(addr)
        if len(self.protocols) >= self.max_connections:
            return self._refuse(
                host, "server_full", 503, "Service Unavailable",
                f"the server holds its limit of {self.max_connections} connections; try again later",
            )
        if host is not None and self.max_per_address and self.per_address[host] >= self.max_per_address:
            return self._refuse(
                host, "too_many_connections", 429, "Too Many Requests",
                f"{host} holds its limit of {self.max_per_address} open connections; "
                "close one or try again later",
            )
        self._quiet = False
        return super().buildProtocol(addr)

    def _refuse(self, host: str | None, error: str, code: int, phrase: str, message: str) -> _Refusal:
        self.refused[error] += 1
        if not self._quiet:
            self._quiet = True
            self.log.warn(
                "refusing connections ({error}), first from {host}: {message}"
                " (further refusals are not logged until a connection is accepted)",
                error=error, host=host, message=message,
            )
        return _Refusal(http_refusal(code, phrase, error, message, RETRY_AFTER), self.clock)

    def registerProtocol(self, p: ProtocolWrapper) -> None:
        super().registerProtocol(p)
        host = _peer_host(p.transport.getPeer() if p.transport is not None else None)
        if host is not None:
            self._hosts[p] = host
            self.per_address[host] += 1

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        super().unregisterProtocol(p)
        host = self._hosts.pop(p, None)
        if host is not None:
            self.per_address[host] -= 1
            if not self.per_address[host]:
                del self.per_address[host]
        if not self.protocols:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def close_all(self) -> defer.Deferred[None]:
        """Abort every open connection; fires once all are gone."""
        if not self.protocols:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        for p in list(self.protocols):
            p.transport.abortConnection()
        return d


_TIMED_OUT = http_refusal(
    408, "Request Timeout", "request_timeout",
    "the request (line, headers and body) did not arrive within the server's deadline", None,
)


class DeadlineChannel(HTTPChannel):
    """An HTTP/1.1 channel whose requests must arrive whole within ``site.request_timeout``
    seconds of their first byte (of the connection, for the first one).

    Past the deadline the client gets ``408 Request Timeout`` and the connection is closed, or
    aborted ``abortTimeout`` seconds later if the client does not read.  The deadline stops
    when the request is complete, and restarts only with the first byte of the next one: the
    time a resource takes to answer (an SSE stream, a waiting poll, a WebSocket after its
    upgrade) is not bounded by it, and the quiet time between keep-alive requests is bounded by
    Twisted's idle timeout (``site.timeOut``) instead.
    """

    _deadline: IDelayedCall | None = None
    _abort: IDelayedCall | None = None
    #: A request has been received and is being answered (its response is not finished).
    _answering = False
    _peer: Any = None
    _host: Any = None

    # twisted.web asks for both addresses for every request (``getHost`` is a ``getsockname``
    # system call): a connection's addresses do not change, so ask the socket once.
    def getPeer(self) -> Any:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def getHost(self) -> Any:
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def _request_timeout(self) -> float | None:
        return getattr(getattr(self, "site", None), "request_timeout", None)

    def _start_deadline(self) -> None:
        timeout = self._request_timeout()
        if timeout and self._abort is None:
            self._deadline = self.callLater(timeout, self._expired)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._start_deadline()

    def dataReceived(self, data: bytes) -> None:
        if self._deadline is None and not self._answering:
            self._start_deadline()  # the first byte of a keep-alive connection's next request
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._stop_deadline()
        self._answering = True
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        # Before Twisted replays the next pipelined request's bytes through dataReceived.
        self._answering = False
        super().requestDone(request)

    def _expired(self) -> None:
        self._deadline = None
        self.setTimeout(None)  # the idle timeout has nothing left to time
        transport: Any = self.transport
        transport.write(_TIMED_OUT)
        if self.abortTimeout is not None:
            self._abort = self.callLater(self.abortTimeout, transport.abortConnection)
        self.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self._abort = None
        super().connectionLost(reason)


class TokenBucket:
    """At most ``rate`` actions per second on average, and ``burst`` at once.

    :param clock: where time comes from (the reactor; a ``Clock`` in tests).
    """

    __slots__ = ("rate", "burst", "clock", "tokens", "_at")

    def __init__(self, rate: float, burst: int, clock: IReactorTime) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self._at = clock.seconds()

    def take(self) -> bool:
        """Spend a token; ``False`` when none is left (the action is over the limit)."""
        now = self.clock.seconds()
        self.tokens = min(float(self.burst), self.tokens + (now - self._at) * self.rate)
        self._at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
