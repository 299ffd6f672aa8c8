"""``HttpSender``: posts batches to ``<url>/ingest`` over one persistent HTTP/1.1 connection.

The outbox sends one request at a time, so the sender needs no pool, no redirects, no cookies
and no content decoding: a request is one ``write`` of the head and the body, and the answer
is parsed by a small state machine (status line, headers, then a body by ``Content-Length``,
``chunked``, or up to the close).  That costs the master about a fifth of the CPU of a treq
request (``Agent`` + ``HTTPConnectionPool`` + ``CookieAgent`` + ``RedirectAgent`` + ...),
which matters because the outbox posts as soon as it is idle (one request per burst of
events on a quiet master).

Failures are reported the way the outbox expects: a connection that cannot be made or is lost
errbacks with Twisted's error, a request that takes longer than ``timeout`` is cancelled
(``CancelledError``, like treq's ``timeout``), and cancelling the returned Deferred aborts the
connection.  A request written on a *reused* connection that the server had closed meanwhile
(it lost the connection before a single byte of the answer) is written once more on a new
connection: the server drops duplicate ``(master, incarnation, seq)``, so a resend is safe.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

__all__ = ["HttpSender", "ResponseError"]

#: Bytes of a response body kept (the outbox logs at most the first 500).
BODY_KEEP = 64 * 1024
#: A status line plus headers longer than this is not an HTTP answer worth parsing.
HEAD_MAX = 64 * 1024


class ResponseError(Exception):
    """The server's answer was not HTTP/1.x the sender could parse."""


class _Connection(Protocol):
    """One HTTP/1.1 client connection, one request at a time."""

    def __init__(self) -> None:
        self.connected_ = False
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._waiting: defer.Deferred[tuple[int, bytes]] | None = None
        self._reset()

    def _reset(self) -> None:
        self._buf = b""
        self._state = "status"
        self._code = 0
        self._length: int | None = None
        self._chunked = False
        self._keep_alive = True
        self._body: list[bytes] = []
        self._kept = 0
        self._chunk_left = 0
        self.got_bytes = False

    @property
    def _tr(self) -> Any:
        """The transport (set once connected; typed loosely: TCP and TLS ones alike)."""
        return self.transport

    # -- Protocol ----------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected_ = True
        if ITCPTransport.providedBy(self.transport):
            self._tr.setTcpNoDelay(True)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if reason is None:
            reason = Failure(error.ConnectionDone())
        self.connected_ = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            if self._state == "close":  # the body ends with the connection
                waiting.callback((self._code, b"".join(self._body)))
            else:
                waiting.errback(reason)
        if not self.closed.called:
            self.closed.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if self._waiting is None:
            # Nothing asked: an answer to nothing, or the server's goodbye. Not ours to keep.
            self._tr.loseConnection()
            return
        self.got_bytes = True
        self._buf += data
        try:
            self._parse()
        except ResponseError as exc:
            waiting, self._waiting = self._waiting, None
            self._tr.abortConnection()
            if waiting is not None:
                waiting.errback(exc)

    # -- requests ----------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return self.connected_ and self._waiting is None and self._keep_alive

    def request(self, head: bytes, body: bytes) -> defer.Deferred[tuple[int, bytes]]:
        self._reset()
        d: defer.Deferred[tuple[int, bytes]] = defer.Deferred()
        self._waiting = d
        self._tr.writeSequence([head, body])
        return d

    def abort(self) -> None:
        self._waiting = None
        if self.connected_:
            self._tr.abortConnection()

    # -- response parsing --------------------------------------------------------------------

    def _line(self) -> bytes | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > HEAD_MAX:
                raise ResponseError("response head too long")
            return None
        line, self._buf = self._buf[:end], self._buf[end + 2 :]
        return line

    def _parse(self) -> None:
        while self._waiting is not None:
            if self._state == "status":
                line = self._line()
                if line is None:
                    return
                parts = line.split(b" ", 2)
                if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                    raise ResponseError(f"not an HTTP/1.x status line: {line[:100]!r}")
                self._code = int(parts[1])
                self._keep_alive = parts[0] != b"HTTP/1.0"
                self._state = "headers"
            elif self._state == "headers":
                line = self._line()
                if line is None:
                    return
                if line:
                    self._header(line)
                    continue
                if 100 <= self._code < 200:  # 100 Continue and friends: the real answer follows
                    self._state, self._length, self._chunked = "status", None, False
                elif self._code in (204, 304):
                    self._finish()
                elif self._chunked:
                    self._state = "chunk-size"
                elif self._length is not None:
                    self._state = "body"
                else:
                    self._state, self._keep_alive = "close", False
            elif self._state == "body":
                assert self._length is not None
                take = self._buf[: self._length]
                self._buf = self._buf[len(take) :]
                self._keep(take)
                self._length -= len(take)
                if self._length:
                    return
                self._finish()
            elif self._state == "chunk-size":
                line = self._line()
                if line is None:
                    return
                try:
                    self._chunk_left = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ResponseError(f"bad chunk size {line[:40]!r}") from None
                self._state = "chunk" if self._chunk_left else "trailer"
            elif self._state == "chunk":
                take = self._buf[: self._chunk_left]
                self._buf = self._buf[len(take) :]
                self._keep(take)
                self._chunk_left -= len(take)
                if self._chunk_left:
                    return
                self._state = "chunk-end"
            elif self._state == "chunk-end":
                line = self._line()
                if line is None:
                    return
                if line:
                    raise ResponseError("chunk not followed by CRLF")
                self._state = "chunk-size"
            elif self._state == "trailer":
                line = self._line()
                if line is None:
                    return
                if not line:
                    self._finish()
            else:  # "close": everything until the connection ends is the body
                self._keep(self._buf)
                self._buf = b""
                return

    def _header(self, line: bytes) -> None:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ResponseError(f"bad header line {line[:100]!r}")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            if not value.isdigit():
                raise ResponseError(f"bad Content-Length {value[:40]!r}")
            self._length = int(value)
        elif name == b"transfer-encoding":
            self._chunked = value.lower().endswith(b"chunked")
        elif name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"close" in tokens:
                self._keep_alive = False
            elif b"keep-alive" in tokens:
                self._keep_alive = True

    def _keep(self, data: bytes) -> None:
        if data and self._kept < BODY_KEEP:
            data = data[: BODY_KEEP - self._kept]
            self._body.append(data)
            self._kept += len(data)

    def _finish(self) -> None:
        waiting, self._waiting = self._waiting, None
        code, body = self._code, b"".join(self._body)
        if self._buf or not self._keep_alive:
            # Bytes nobody asked for, or the server said it closes: start afresh next time.
            self._keep_alive = False
            self._tr.loseConnection()
        if waiting is not None:
            waiting.callback((code, body))


class HttpSender:
    """Posts batches to ``{url}/ingest`` over one persistent HTTP/1.1 connection.

    :param url: the firehose server's base URL (``http://`` or ``https://``; a path prefix is
        kept: ``http://proxy/firehose`` posts to ``/firehose/ingest``).
    :param token: the bearer token.
    :param reactor: the reactor the connection and the timeout use.
    :param timeout: seconds before a request is abandoned (its Deferred fails with
        ``CancelledError``) and the connection with it.
    """

    def __init__(self, url: str, token: str, reactor: Any, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/") + "/ingest"
        self.token = token
        self.reactor = reactor
        self.timeout = timeout
        parts = urlsplit(self.url)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._tls else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        if parts.port is not None:
            host += f":{parts.port}"
        self._head_prefix = (
            f"POST {parts.path or '/'} HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            f"Authorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\n"
            "Connection: keep-alive\r\n"
            "Content-Length: "
        ).encode()
        self._conn: _Connection | None = None
        self._connecting: defer.Deferred[Any] | None = None

    def _endpoint(self) -> Any:
        endpoint: Any = HostnameEndpoint(self.reactor, self._host, self._port, timeout=max(1, int(self.timeout)))
        if self._tls:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(self._host), endpoint)
        return endpoint

    def __call__(self, body: bytes) -> defer.Deferred[tuple[int, bytes]]:
        head = self._head_prefix + b"%d\r\n\r\n" % len(body)
        state: dict[str, Any] = {"conn": None, "connecting": None, "timer": None}
        result: defer.Deferred[tuple[int, bytes]] = defer.Deferred(lambda _: self._cancel(state))

        def finish(outcome: Any) -> None:
            timer: IDelayedCall | None = state["timer"]
            if timer is not None and timer.active():
                timer.cancel()
            state["conn"] = state["connecting"] = None
            if not result.called:
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)

        def send(conn: _Connection, reused: bool) -> None:
            if result.called:
                return
            state["conn"] = conn
            d = conn.request(head, body)

            def failed(f: Failure) -> Any:
                # The server closed a kept-alive connection before (or as) we wrote: nothing of
                # an answer came back, so write the request again on a fresh connection.
                if reused and not conn.got_bytes and f.check(error.ConnectionDone, error.ConnectionLost):
                    state["conn"] = None
                    connect()
                    return None
                finish(f)
                return None

            d.addCallbacks(finish, failed)

        def connect() -> None:
            d = self._endpoint().connect(Factory.forProtocol(_Connection))
            state["connecting"] = d

            def made(conn: _Connection) -> None:
                state["connecting"] = None
                self._conn = conn
                send(conn, reused=False)

            def failed(f: Failure) -> None:
                state["connecting"] = None
                if not f.check(defer.CancelledError) or not result.called:
                    finish(f)

            d.addCallbacks(made, failed)

        state["timer"] = self.reactor.callLater(self.timeout, result.cancel)
        conn = self._conn
        if conn is not None and conn.idle:
            send(conn, reused=True)
        else:
            if conn is not None:
                conn.abort()
            self._conn = None
            connect()
        return result

    def _cancel(self, state: dict[str, Any]) -> None:
        """Abandon a request: its connection goes too (a late answer must not be taken for
        the next request's)."""
        timer: IDelayedCall | None = state["timer"]
        if timer is not None and timer.active():
            timer.cancel()
        conn: _Connection | None = state["conn"]
        if conn is not None:
            conn.abort()
            if self._conn is conn:
                self._conn = None
        connecting: defer.Deferred[Any] | None = state["connecting"]
        if connecting is not None:
            connecting.cancel()

    def close(self) -> defer.Deferred[None]:
        """Close the connection (on stop or when the URL changes)."""
        conn, self._conn = self._conn, None
        if conn is None or not conn.connected_:
            return defer.succeed(None)
        conn._tr.loseConnection()
        return conn.closed
