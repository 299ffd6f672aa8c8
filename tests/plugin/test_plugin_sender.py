"""Unit tests of ``HttpSender``: the answer parser byte by byte on a fake transport, and the
connection handling against a real twisted.web server on 127.0.0.1."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error, reactor
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import resource, server

from buildbot_plugin.sender import HttpSender, ResponseError, _Connection


def _answer(raw: bytes, step: int = 1) -> tuple[Any, StringTransport]:
    """Feed ``raw`` to a connection that sent one request, ``step`` bytes at a time."""
    conn = _Connection()
    transport = StringTransport()
    conn.makeConnection(transport)
    results: list[Any] = []
    conn.request(b"POST /ingest HTTP/1.1\r\nContent-Length: 2\r\n\r\n", b"[]").addBoth(results.append)
    for i in range(0, len(raw), step):
        conn.dataReceived(raw[i : i + step])
    return (results[0] if results else None), transport


class ParserTest(unittest.TestCase):
    def test_content_length_byte_by_byte(self) -> None:
        result, transport = _answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello")
        self.assertEqual(result, (200, b"hello"))
        self.assertFalse(transport.disconnecting)  # kept alive for the next request

    def test_chunked_with_extension_and_trailer(self) -> None:
        raw = b"HTTP/1.1 422 Nope\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n"
        for step in (1, 7, len(raw)):
            result, _ = _answer(raw, step)
            self.assertEqual(result, (422, b"abcde"))

    def test_continue_then_answer(self) -> None:
        result, _ = _answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(result, (200, b"ok"))

    def test_connection_close_and_http10_close_after_the_answer(self) -> None:
        for raw in (b"HTTP/1.1 503 x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                    b"HTTP/1.0 503 x\r\nContent-Length: 0\r\n\r\n"):
            result, transport = _answer(raw)
            self.assertEqual(result, (503, b""))
            self.assertTrue(transport.disconnecting)

    def test_body_until_close(self) -> None:
        conn = _Connection()
        conn.makeConnection(StringTransport())
        results: list[Any] = []
        conn.request(b"POST / HTTP/1.1\r\n\r\n", b"").addBoth(results.append)
        conn.dataReceived(b"HTTP/1.1 200 OK\r\n\r\npart one, ")
        conn.dataReceived(b"part two")
        self.assertEqual(results, [])
        conn.connectionLost(None)
        self.assertEqual(results, [(200, b"part one, part two")])

    def test_garbage_fails_the_request(self) -> None:
        for raw in (b"SMTP ready\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
            result, transport = _answer(raw)
            self.assertTrue(result.check(ResponseError), raw)
            self.assertTrue(transport.disconnected)

    def test_lost_mid_answer_fails_the_request(self) -> None:
        conn = _Connection()
        conn.makeConnection(StringTransport())
        results: list[Any] = []
        conn.request(b"POST / HTTP/1.1\r\n\r\n", b"").addBoth(results.append)
        conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        conn.connectionLost(Failure(error.ConnectionLost()))
        self.assertTrue(results[0].check(error.ConnectionLost))


class _Ingest(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[bytes, bytes, bytes]] = []
        self.hang = False
        self.pending: list[Any] = []
        self.arrived: defer.Deferred[None] = defer.Deferred()

    def render_POST(self, request: Any) -> Any:
        self.requests.append((request.path, request.getHeader(b"authorization") or b"", request.content.read()))
        if self.hang:
            self.pending.append(request)
            if not self.arrived.called:
                self.arrived.callback(None)
            return server.NOT_DONE_YET
        request.setResponseCode(200)
        return b'{"accepted": 1}'  # twisted.web answers with Content-Length


class _Chunked(_Ingest):
    def render_POST(self, request: Any) -> Any:
        self.requests.append((request.path, b"", request.content.read()))
        request.write(b'{"acc')  # no length set: twisted.web sends the answer chunked
        request.write(b'epted": 1}')
        request.finish()
        return server.NOT_DONE_YET


class RealServerTest(unittest.TestCase):
    def serve(self, res: resource.Resource) -> str:
        site = server.Site(res)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.site = site
        return f"http://127.0.0.1:{port.getHost().port}/base"

    def sender(self, url: str, timeout: float = 10.0) -> HttpSender:
        snd = HttpSender(url, "tok", reactor, timeout)
        self.addCleanup(snd.close)
        return snd

    @defer.inlineCallbacks
    def test_one_connection_for_many_requests_and_the_path_prefix(self) -> Any:
        res = _Ingest()
        snd = self.sender(self.serve(res))
        for i in range(5):
            code, body = yield snd(b"[%d]" % i)
            self.assertEqual((code, body), (200, b'{"accepted": 1}'))
        self.assertEqual([r[2] for r in res.requests], [b"[%d]" % i for i in range(5)])
        self.assertEqual({r[0] for r in res.requests}, {b"/base/ingest"})
        self.assertEqual({r[1] for r in res.requests}, {b"Bearer tok"})
        first = snd._conn
        self.assertIsNotNone(first)
        code, _ = yield snd(b"[]")
        self.assertIs(snd._conn, first)  # the same connection: persistent

    @defer.inlineCallbacks
    def test_chunked_answer(self) -> Any:
        snd = self.sender(self.serve(_Chunked()))
        result = yield snd(b"[]")
        self.assertEqual(result, (200, b'{"accepted": 1}'))
        result = yield snd(b"[]")
        self.assertEqual(result, (200, b'{"accepted": 1}'))

    @defer.inlineCallbacks
    def test_server_closed_the_idle_connection_request_goes_on_a_new_one(self) -> Any:
        res = _Ingest()
        snd = self.sender(self.serve(res))
        yield snd(b"[1]")
        conn = snd._conn
        assert conn is not None
        closed = conn.closed
        conn._tr.loseConnection()  # as a server's idle timeout does
        yield closed
        result = yield snd(b"[2]")
        self.assertEqual(result[0], 200)
        self.assertIsNot(snd._conn, conn)
        self.assertEqual([r[2] for r in res.requests], [b"[1]", b"[2]"])

    @defer.inlineCallbacks
    def test_refused(self) -> Any:
        port = reactor.listenTCP(0, server.Site(_Ingest()), interface="127.0.0.1")  # type: ignore[attr-defined]
        number = port.getHost().port
        yield port.stopListening()
        snd = self.sender(f"http://127.0.0.1:{number}")
        with self.assertRaises(error.ConnectionRefusedError):
            yield snd(b"[]")

    @defer.inlineCallbacks
    def test_timeout_cancels_and_the_next_request_uses_a_new_connection(self) -> Any:
        res = _Ingest()
        res.hang = True
        snd = self.sender(self.serve(res), timeout=0.2)
        with self.assertRaises(defer.CancelledError):
            yield snd(b"[1]")
        res.hang = False
        for request in res.pending:  # a late answer must not be taken for the next request's
            if not request._disconnected:
                request.write(b"late")
        result = yield snd(b"[2]")
        self.assertEqual(result, (200, b'{"accepted": 1}'))

    @defer.inlineCallbacks
    def test_cancel_aborts(self) -> Any:
        res = _Ingest()
        res.hang = True
        snd = self.sender(self.serve(res))
        d = snd(b"[1]")
        yield res.arrived
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            yield d
        self.assertIsNone(snd._conn)

