"""What one client may hold: connection limits, the request deadline, the idle timeout, and
which static files it may read.  All over ``StringTransport`` and a ``Clock``: the real HTTP
parser and the real wrapping factory, no sockets, no global reactor."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from firehose.hub import Hub
from firehose.journal import MemoryJournal
from firehose.limits import (
    REFUSAL_LINGER,
    ConnectionLimits,
    TokenBucket,
    default_max_connections,
)
from firehose.transports.sse import SSEResource
from firehose.transports.websocket import FirehoseWebSocketFactory
from firehose.web import FirehoseSite, _Root, static_resource


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


def _addr(host: str, port: int = 40000) -> IPv4Address:
    return IPv4Address("TCP", host, port)


class _HalfClosable(StringTransport):
    """A TCP-like transport that can close its write side (``loseWriteConnection``)."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def _response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


class _Connections:
    """Opens and closes connections through a factory the way a TCP port does."""

    def __init__(self, factory: ConnectionLimits) -> None:
        self.factory = factory
        self.open: list[tuple[Any, StringTransport]] = []

    def connect(self, addr: Any, transport: StringTransport | None = None) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(addr)
        transport = transport if transport is not None else StringTransport(peerAddress=addr)
        protocol.makeConnection(transport)
        if isinstance(protocol, ProtocolWrapper):
            self.open.append((protocol, transport))
        return protocol, transport

    def close(self, index: int) -> None:
        protocol, _ = self.open.pop(index)
        protocol.connectionLost(Failure(ConnectionDone()))


class ConnectionLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.site = FirehoseSite(_Hello(), 1024, reactor=self.clock, request_timeout=None, idle_timeout=None)
        self.factory = ConnectionLimits(self.site, max_connections=3, max_per_address=2, clock=self.clock)
        self.conns = _Connections(self.factory)

    def tearDown(self) -> None:
        while self.conns.open:
            self.conns.close(0)
        self.assertEqual(self.factory.per_address, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_per_address_limit_refuses_with_429_and_others_go_on(self) -> None:
        """The connection past the per-address limit gets a 429 with ``Retry-After`` and a JSON
        body naming the limit, and is closed without being handed to the site; the address's
        earlier connections and other addresses are still served."""
        first, t1 = self.conns.connect(_addr("127.0.0.1"))
        self.conns.connect(_addr("127.0.0.1", 40001))
        refused, t3 = self.conns.connect(_addr("127.0.0.1", 40002))
        self.assertNotIsInstance(refused, ProtocolWrapper)
        status, headers, body = _response(t3.value())
        self.assertEqual(status, 429)
        self.assertEqual(headers["retry-after"], "5")
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(json.loads(body)["error"], "too_many_connections")
        self.assertIn("127.0.0.1", json.loads(body)["message"])
        self.assertTrue(t3.disconnecting)
        self.assertEqual(self.factory.refused["too_many_connections"], 1)
        # The first connection still works; another address is accepted.
        first.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"hello", t1.value())
        other, _ = self.conns.connect(_addr("127.0.0.2"))
        self.assertIsInstance(other, ProtocolWrapper)
        # Once one of its connections closes, the address may open another.
        self.conns.close(0)
        again, _ = self.conns.connect(_addr("127.0.0.1", 40003))
        self.assertIsInstance(again, ProtocolWrapper)

    def test_global_limit_refuses_with_503(self) -> None:
        """Past ``max_connections`` open connections in all, any address gets a 503 with
        ``Retry-After``: the server is full."""
        for host in ("127.0.0.1", "127.0.0.2", "::1"):
            protocol, _ = self.conns.connect(IPv6Address("TCP", host, 1) if ":" in host else _addr(host))
            self.assertIsInstance(protocol, ProtocolWrapper)
        _, t = self.conns.connect(_addr("127.0.0.9"))
        status, headers, body = _response(t.value())
        self.assertEqual((status, headers["retry-after"]), (503, "5"))
        self.assertEqual(json.loads(body)["error"], "server_full")

    def test_refusal_half_closes_then_lingers_at_most_two_seconds(self) -> None:
        """On TCP a refusal closes only the write side, so the client reads the answer instead
        of a reset, and the socket is aborted after ``REFUSAL_LINGER`` seconds if the client does
        not hang up."""
        self.conns.connect(_addr("127.0.0.1"))
        self.conns.connect(_addr("127.0.0.1", 40001))
        refused, t = self.conns.connect(_addr("127.0.0.1", 40002), _HalfClosable())
        refused.dataReceived(b"GET / HTTP/1.1\r\n\r\n")  # what it sent is ignored
        self.assertTrue(t.write_closed)
        self.assertFalse(t.aborted)
        self.clock.advance(REFUSAL_LINGER)
        self.assertTrue(t.aborted)
        refused.connectionLost(Failure(ConnectionDone()))

    def test_refused_client_that_hangs_up_leaves_no_timer(self) -> None:
        """A refused client that closes at once cancels the linger timer."""
        self.conns.connect(_addr("127.0.0.1"))
        self.conns.connect(_addr("127.0.0.1", 40001))
        refused, t = self.conns.connect(_addr("127.0.0.1", 40002), _HalfClosable())
        refused.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unix_socket_peers_have_no_per_address_limit(self) -> None:
        """Connections without an IP address (a UNIX socket) count only toward the global limit."""
        for _ in range(3):
            protocol, _ = self.conns.connect(UNIXAddress(None))
            self.assertIsInstance(protocol, ProtocolWrapper)
        self.assertEqual(self.factory.per_address, {})

    def test_close_all_fires_when_every_connection_is_gone(self) -> None:
        """``close_all`` aborts every connection and fires once the last one is lost."""
        self.conns.connect(_addr("127.0.0.1"))
        self.conns.connect(_addr("127.0.0.2"))
        d = self.factory.close_all()
        self.assertTrue(all(t.disconnected for _, t in self.conns.open))
        self.assertNoResult(d)
        while self.conns.open:
            self.conns.close(0)
        self.successResultOf(d)


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.sampled_from(["127.0.0.1", "127.0.0.2", "127.0.0.3", "unix"])),
        st.tuples(st.just("close"), st.integers(min_value=0, max_value=20)),
    ),
    max_size=40,
)


@given(ops=_ops, max_connections=st.integers(1, 6), max_per_address=st.integers(0, 3))
def test_limits_follow_a_model(ops: list[tuple[str, Any]], max_connections: int, max_per_address: int) -> None:
    """Over any sequence of opens and closes from a few addresses, a connection is accepted
    exactly when the model says so (fewer than ``max_connections`` open in all, and fewer than
    ``max_per_address`` from its address unless that is 0 or it has no IP), refused ones get
    503 or 429 accordingly, and the per-address counts return to empty."""
    clock = Clock()
    site = FirehoseSite(_Hello(), 1024, reactor=clock, request_timeout=None, idle_timeout=None)
    factory = ConnectionLimits(site, max_connections, max_per_address, clock)
    conns = _Connections(factory)
    model: list[str] = []
    for op, arg in ops:
        if op == "close":
            if model:
                i = arg % len(model)
                model.pop(i)
                conns.close(i)
            continue
        addr: Any = UNIXAddress(None) if arg == "unix" else _addr(arg)
        if len(model) >= max_connections:
            expected = 503
        elif arg != "unix" and max_per_address and model.count(arg) >= max_per_address:
            expected = 429
        else:
            expected = 0
        protocol, transport = conns.connect(addr)
        if expected:
            assert not isinstance(protocol, ProtocolWrapper)
            assert _response(transport.value())[0] == expected
        else:
            assert isinstance(protocol, ProtocolWrapper)
            model.append(arg)
        assert len(factory.protocols) == len(model)
        assert dict(factory.per_address) == {h: model.count(h) for h in set(model) if h != "unix"}
    while conns.open:
        conns.close(0)
    assert factory.per_address == {} and factory.protocols == {}


def test_default_max_connections_follows_the_file_limit() -> None:
    """Without a configured limit: 10,000, or 90% of a lower file descriptor soft limit."""
    import resource

    assert default_max_connections(1024) == 921
    assert default_max_connections(1_000_000) == 10_000
    assert default_max_connections(resource.RLIM_INFINITY) == 10_000
    assert default_max_connections(1) == 1


def test_token_bucket_allows_burst_then_rate() -> None:
    """A bucket allows ``burst`` at once, then ``rate`` per second, never more than ``burst``
    saved up."""
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.advance(1)
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.advance(100)
    assert sum(bucket.take() for _ in range(10)) == 3


# ---------------------------------------------------------------------------------------------
# The request deadline and the idle timeout
# ---------------------------------------------------------------------------------------------

REQUEST = b"GET /hello HTTP/1.1\r\nHost: firehose.test\r\n\r\n"


class DeadlineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.journal = MemoryJournal(epoch="e1")
        self.hub = Hub(self.journal)
        root = Resource()
        root.putChild(b"hello", _Hello())
        root.putChild(b"sse", SSEResource(self.hub, self.clock))
        ws = FirehoseWebSocketFactory(self.hub, ping_interval=0, reactor=self.clock)
        ws.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        from autobahn.twisted.resource import WebSocketResource

        root.putChild(b"ws", WebSocketResource(ws))
        self.site = FirehoseSite(root, 1024, reactor=self.clock, request_timeout=10, idle_timeout=60)
        self.factory = ConnectionLimits(self.site, 100, 10, self.clock)
        self.conns = _Connections(self.factory)

    def tearDown(self) -> None:
        while self.conns.open:
            self.conns.close(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_dribbled_headers_are_cut_at_the_deadline(self) -> None:
        """A client sending a header byte every second (which restarts Twisted's own timeout
        each time) gets a 408 and is disconnected 10 s after its first byte."""
        protocol, t = self.conns.connect(_addr("127.0.0.1"))
        dribble = b"GET /hello HTTP/1.1\r\nHost: firehose.test\r\nX-Slow: " + b"a" * 100
        sent = 0
        for byte in dribble:
            if t.disconnecting:
                break
            protocol.dataReceived(bytes([byte]))
            sent += 1
            self.clock.advance(1)
        self.assertEqual(sent, 10)
        status, headers, body = _response(t.value())
        self.assertEqual(status, 408)
        self.assertEqual(json.loads(body)["error"], "request_timeout")
        # A client that does not read its 408 is aborted abortTimeout seconds later.
        self.clock.advance(self.site.protocol.abortTimeout)
        self.assertTrue(t.disconnected)

    def test_a_slow_body_counts_toward_the_deadline(self) -> None:
        """The deadline covers the body too: headers on time, then a body byte per second."""
        protocol, t = self.conns.connect(_addr("127.0.0.1"))
        protocol.dataReceived(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        for _ in range(20):
            if t.disconnecting:
                break
            protocol.dataReceived(b"x")
            self.clock.advance(1)
        self.assertEqual(_response(t.value())[0], 408)

    def test_keep_alive_idle_then_next_request_has_its_own_deadline(self) -> None:
        """Between keep-alive requests the deadline does not run (an idle connection lasts the
        idle timeout, not the request deadline); the next request's first byte starts a new
        one."""
        protocol, t = self.conns.connect(_addr("127.0.0.1"))
        protocol.dataReceived(REQUEST)
        self.assertIn(b"hello", t.value())
        t.clear()
        self.clock.advance(30)  # quiet: past the 10 s deadline, within the 60 s idle timeout
        self.assertFalse(t.disconnecting)
        protocol.dataReceived(b"GET /hel")
        self.clock.advance(9)
        self.assertFalse(t.disconnecting)
        self.clock.advance(1)
        self.assertEqual(_response(t.value())[0], 408)

    def test_idle_keep_alive_connection_closes_at_the_idle_timeout(self) -> None:
        """A keep-alive connection with no request in progress is closed after the idle
        timeout (60 s here), and not before."""
        protocol, t = self.conns.connect(_addr("127.0.0.1"))
        protocol.dataReceived(REQUEST)
        self.clock.advance(59)
        self.assertFalse(t.disconnecting)
        self.clock.advance(1)
        self.assertTrue(t.disconnecting)
        self.clock.advance(self.site.protocol.abortTimeout)

    def test_idle_timeout_is_the_configured_one(self) -> None:
        """``idle_timeout`` sets how long a quiet keep-alive connection is kept."""
        self.site.timeOut = 5
        protocol, t = self.conns.connect(_addr("127.0.0.1"))
        protocol.dataReceived(REQUEST)
        self.clock.advance(5)
        self.assertTrue(t.disconnecting)
        self.clock.advance(self.site.protocol.abortTimeout)

    def test_pipelined_requests_are_each_answered(self) -> None:
        """Two requests in one packet are both answered and leave no deadline running."""
        protocol, t = self.conns.connect(_addr("127.0.0.1"))
        protocol.dataReceived(REQUEST + REQUEST)
        self.assertEqual(t.value().count(b"hello"), 2)
        self.clock.advance(30)
        self.assertFalse(t.disconnecting)

    def test_a_connection_asks_its_socket_for_its_addresses_once(self) -> None:
        """twisted.web wants both addresses for every request; a keep-alive connection asks the
        socket once (``getHost`` is a system call) and every request still sees them."""
        calls: list[str] = []

        class Counting(StringTransport):
            def getHost(self) -> Any:
                calls.append("host")
                return super().getHost()

            def getPeer(self) -> Any:
                calls.append("peer")
                return super().getPeer()

        protocol, t = self.conns.connect(_addr("127.0.0.1"), Counting(peerAddress=_addr("127.0.0.1")))
        protocol.dataReceived(REQUEST + REQUEST + REQUEST)
        self.assertEqual(t.value().count(b"hello"), 3)
        self.assertLessEqual(calls.count("host"), 1)
        self.assertLessEqual(calls.count("peer"), 2)  # the connection limits ask once too

    def test_sse_stream_outlives_deadline_and_idle_timeout(self) -> None:
        """An SSE request, once received, streams past the request deadline and the idle
        timeout: its heartbeats keep flowing and the connection stays open."""
        protocol, t = self.conns.connect(_addr("127.0.0.1"))
        protocol.dataReceived(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.pump([15] * 20)
        self.assertFalse(t.disconnecting)
        self.assertEqual(t.value().count(b": keepalive"), 20)
        self.assertEqual(self.hub.stats.subscribers["sse"], 1)
        self.conns.close(0)
        self.assertEqual(self.hub.stats.subscribers["sse"], 0)

    def test_websocket_outlives_deadline_and_idle_timeout(self) -> None:
        """After its upgrade a WebSocket is never cut by the HTTP deadline or idle timeout: 300 s
        later it still answers a ping."""
        protocol, t = self.conns.connect(_addr("127.0.0.1"))
        protocol.dataReceived(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.assertTrue(t.value().startswith(b"HTTP/1.1 101"))
        self.clock.advance(300)
        self.assertFalse(t.disconnecting)
        t.clear()
        payload = b'{"cmd":"ping"}'
        protocol.dataReceived(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)  # masked, key 0
        self.assertIn(b'"type":"pong"', t.value())


# ---------------------------------------------------------------------------------------------
# Static files
# ---------------------------------------------------------------------------------------------


class StaticTests(SynchronousTestCase):
    def setUp(self) -> None:
        import importlib.resources

        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.folder = os.path.join(base, "static")
        shutil.copytree(str(importlib.resources.files("firehose") / "static"), self.folder)
        self.outside = os.path.join(base, "secret.txt")
        with open(self.outside, "w") as f:
            f.write("not for the web")
        os.symlink(self.outside, os.path.join(self.folder, "leak.txt"))
        os.symlink(os.path.join(self.folder, "index.html"), os.path.join(self.folder, "alias.html"))
        os.mkdir(os.path.join(self.folder, "sub"))
        self.clock = Clock()
        self.site = FirehoseSite(_Root(static_resource(self.folder)), 1024, reactor=self.clock,
                                 request_timeout=None, idle_timeout=None)

    def get(self, path: bytes, method: bytes = b"GET") -> tuple[int, bytes]:
        """The status and body of one request.  (A file's body is sent by a producer on the
        global reactor's cooperator, so a file that is served is checked with HEAD.)"""
        channel = self.site.buildProtocol(_addr("127.0.0.1"))
        t = StringTransport()
        channel.makeConnection(t)
        channel.dataReceived(method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, _, body = _response(t.value())
        channel.connectionLost(Failure(ConnectionDone()))
        return status, body

    def test_nul_in_path_is_404(self) -> None:
        """A ``%00`` in a static path is a 404, never a 500 with a logged traceback (trial
        fails the test on any logged error)."""
        for path in (b"/%00", b"/index.html%00", b"/a%00b.js", b"/%00/x"):
            self.assertEqual(self.get(path)[0], 404, path)

    def test_symlink_out_of_the_folder_is_404(self) -> None:
        """A symlink pointing outside the static folder is not followed; one pointing inside is."""
        status, body = self.get(b"/leak.txt")
        self.assertEqual(status, 404)
        self.assertNotIn(b"not for the web", body)
        self.assertEqual(self.get(b"/alias.html", b"HEAD")[0], 200)

    def test_only_regular_files_are_served(self) -> None:
        """Directories (no listing), traversal and encoded slashes are 404s; the dashboard's
        files are still served."""
        for path in (b"/sub", b"/sub/", b"/..", b"/%2e%2e/secret.txt", b"/..%2fsecret.txt"):
            self.assertEqual(self.get(path)[0], 404, path)
        self.assertEqual(self.get(b"/", b"HEAD")[0], 200)
        self.assertEqual(self.get(b"/dashboard.js", b"HEAD")[0], 200)
