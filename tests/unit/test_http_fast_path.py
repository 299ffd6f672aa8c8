"""The HTTP fast paths (SSE events written straight to the socket, long-poll answers written
whole by ``firehose.transports.respond``) against the installed Twisted's own HTTP stack.

Both read internals of ``twisted.web.http.Request``, so these tests are what an upgrade of
Twisted must pass.  The site is the real one (``build_site``: connection limits, deadline
channel, the resources); each connection is Twisted's real ``tcp.Server`` on an accepted
loopback socket, with a ``MemoryReactor`` and a ``Clock``: no reactor runs, the test plays it
by calling ``doRead``/``doWrite`` itself, and reads the client's end with non-blocking
``recv``.  So "written at once" is observable: the bytes are at the client before any
``doWrite``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure

from firehose.event import loads
from firehose.hub import Hub
from firehose.ingest import MasterTokens
from firehose.journal import MemoryJournal
from firehose.transports import longpoll
from firehose.web import build_site
from tests.unit.helpers import batch


class Server:
    """The real site on a memory journal, and a way to open connections to it."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.journal = MemoryJournal(epoch="e1")
        self.hub = Hub(self.journal, page_size=10, max_pending=50)
        self.site = build_site(hub=self.hub, journal=self.journal, clock=self.clock, tokens=MasterTokens({}),
                               max_connections_per_address=0, request_timeout=None, idle_timeout=None)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.reactor = MemoryReactor()
        self.conns: list[Conn] = []

    def connect(self) -> Conn:
        conn = Conn(self)
        self.conns.append(conn)
        return conn

    def append(self, first: int, last: int, **kw: Any) -> None:
        self.journal.append(batch(first, last, **kw))

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.listener.close()


class Conn:
    """One client connection: the server's ``tcp.Server`` and the client's raw socket."""

    def __init__(self, server: Server) -> None:
        self.peer = socket.create_connection(server.listener.getsockname())
        self.peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ours, addr = server.listener.accept()
        ours.setblocking(False)
        self.peer.setblocking(False)
        self.protocol = server.site.connections.buildProtocol(IPv4Address("TCP", *addr))
        self.tcp = tcp.Server(ours, self.protocol, addr, None, 0, server.reactor)  # type: ignore[arg-type]
        self.tcp.repstr = "<test connection>"
        self.protocol.makeConnection(self.tcp)
        self.got = b""

    def send(self, data: bytes) -> None:
        """The client sends ``data``; the server reads it (one ``doRead``, as on readability)."""
        self.peer.sendall(data)
        self.tcp.doRead()

    def received(self) -> bytes:
        """What the client can read now, without the server flushing anything."""
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.got += chunk
        return self.got

    def flushed(self) -> bytes:
        """What the client has once the server flushed its buffer too."""
        for _ in range(1000):
            self.received()
            if not (self.tcp.dataBuffer or self.tcp._tempDataLen) or not self.tcp.connected:
                break
            self.tcp.doWrite()
        return self.received()

    def buffered(self) -> int:
        c = self.tcp
        return len(c.dataBuffer) - c.offset + c._tempDataLen

    def lose(self) -> None:
        """The connection is lost (the client went away)."""
        self.tcp.connectionLost(Failure(ConnectionDone()))

    def close(self) -> None:
        self.peer.close()
        if hasattr(self.tcp, "socket"):
            self.tcp.socket.close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.close()


def split_head(raw: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b": ")
        assert name.lower() not in headers, f"header {name!r} twice"
        headers[name.lower()] = value
    return status, headers, body


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """A chunked body decoded strictly; whether it ended with the terminating chunk."""
    out = b""
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        assert sep, f"truncated chunk size in {body[:40]!r}"
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n", rest
            return out, True
        assert rest[size:size + 2] == b"\r\n", "chunk not followed by CRLF"
        out += rest[:size]
        body = rest[size + 2:]
    return out, False


def sse_messages(text: bytes) -> list[dict[str, str]]:
    out = []
    for block in text.decode().split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith((":", "retry"))]
        if lines:
            out.append(dict(line.split(": ", 1) for line in lines))
    return out


# -- SSE ------------------------------------------------------------------------------------------


def open_sse(server: Server, version: bytes = b"HTTP/1.1", method: bytes = b"GET") -> Conn:
    conn = server.connect()
    conn.send(method + b" /sse " + version + b"\r\nHost: x\r\n\r\n")
    conn.flushed()  # the headers and the first comment went through Request.write
    return conn


def test_sse_events_go_to_the_socket_at_once_as_chunks(server: Server) -> None:
    """On HTTP/1.1 a batch of events is at the client when the publish returns (no reactor
    turn), as valid chunks of the chunked body; ``finish()`` (a final gap) terminates it."""
    conn = open_sse(server)
    server.append(1, 3)
    assert conn.buffered() == 0
    status, headers, body = split_head(conn.received())
    assert status == b"HTTP/1.1 200 OK"
    assert headers[b"transfer-encoding"] == b"chunked"
    text, ended = dechunk(body)
    assert not ended
    assert [m["id"] for m in sse_messages(text)] == ["e1:1", "e1:2", "e1:3"]
    (sub,) = server.hub.subscriptions
    sub.pause()
    server.append(4, 60)  # past max_pending: a final slow gap, then finish()
    text, ended = dechunk(split_head(conn.flushed())[2])
    assert ended
    msgs = sse_messages(text)
    assert msgs[-1]["event"] == "gap" and loads(msgs[-1]["data"])["reason"] == "slow"


def test_sse_http10_gets_the_bare_stream(server: Server) -> None:
    """An HTTP/1.0 stream is not chunked: the messages themselves, written at once."""
    conn = open_sse(server, b"HTTP/1.0")
    server.append(1, 2)
    assert conn.buffered() == 0
    status, headers, body = split_head(conn.received())
    assert status == b"HTTP/1.0 200 OK" and b"transfer-encoding" not in headers
    assert [m["id"] for m in sse_messages(body)] == ["e1:1", "e1:2"]


def test_sse_heartbeats_and_events_keep_their_order(server: Server) -> None:
    """Heartbeats go through Request.write, events directly; when both wait in the buffer
    (the socket was busy) they reach the client in the order written."""
    conn = open_sse(server)
    server.append(1, 1)
    server.clock.advance(15)  # a heartbeat, buffered by Request.write
    server.append(2, 2)  # queued behind it (write_now never overtakes the buffer)
    text, _ = dechunk(split_head(conn.flushed())[2])
    assert text.index(b"id: e1:1") < text.index(b": keepalive") < text.index(b"id: e1:2")
    conn.lose()


def test_sse_full_socket_pauses_the_subscription(server: Server) -> None:
    """Direct writes keep Twisted's flow control: past the connection's buffer size the
    subscription is paused, and resumed (everything delivered, in order) once it drains."""
    conn = open_sse(server, b"HTTP/1.0")
    (sub,) = server.hub.subscriptions
    n = 0
    while not sub.paused and n < 2000:
        server.append(n + 1, n + 5, pad="x" * 2000)
        n += 5
    assert sub.paused and n < 2000
    text = conn.flushed()
    assert not sub.paused
    ids = [m["id"] for m in sse_messages(split_head(text)[2]) if "id" in m]
    assert ids == [f"e1:{i}" for i in range(1, n + 1)]


def test_sse_head_writes_no_body(server: Server) -> None:
    """A HEAD of /sse (answered as a GET by twisted.web) never has events written into it."""
    conn = open_sse(server, method=b"HEAD")
    server.append(1, 2)
    _, headers, body = split_head(conn.flushed())
    assert body == b""


# -- long-poll ------------------------------------------------------------------------------------


def test_poll_answer_is_one_write_with_content_length(server: Server) -> None:
    """A poll's answer is at the client at once: status, twisted.web's own headers (Server,
    Date), the endpoint's headers once each, Content-Length (no chunking) and the body."""
    server.append(1, 3)
    conn = server.connect()
    conn.send(b"GET /poll?since=e1:1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.buffered() == 0
    status, headers, body = split_head(conn.received())
    assert status == b"HTTP/1.1 200 OK"
    assert b"transfer-encoding" not in headers and int(headers[b"content-length"]) == len(body)
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"access-control-allow-origin"] == b"*"
    assert b"server" in headers and b"date" in headers
    answer = loads(body)
    assert [e["seq"] for e in answer["events"]] == [2, 3] and answer["cursor"] == "e1:3"


def test_poll_keep_alive_and_pipelining(server: Server) -> None:
    """The connection stays usable: two pipelined polls are answered in order on it, then a
    third one that waits is answered by a live event."""
    server.append(1, 4)
    conn = server.connect()
    conn.send(b"GET /poll?since=e1:0&limit=2 HTTP/1.1\r\nHost: x\r\n\r\n"
              b"GET /poll?since=e1:2&limit=2 HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = conn.flushed()
    first, rest = raw.split(b"HTTP/1.1 200 OK", 2)[1:]
    assert loads(split_head(b"HTTP/1.1 200 OK" + first)[2])["cursor"] == "e1:2"
    assert loads(split_head(b"HTTP/1.1 200 OK" + rest)[2])["cursor"] == "e1:4"
    conn.got = b""
    conn.send(b"GET /poll?since=e1:4 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.received() == b""
    server.append(5, 5)
    assert loads(split_head(conn.received())[2])["cursor"] == "e1:5"
    assert server.clock.getDelayedCalls() == []


def test_poll_http10_and_connection_close(server: Server) -> None:
    """HTTP/1.0, and HTTP/1.1 with ``Connection: close``: the status line names the client's
    version, the answer says ``Connection: close`` when twisted.web set it, and the server
    closes the connection after the answer."""
    server.append(1, 1)
    for request, status, close_header in [
        (b"GET /poll?since=e1:0 HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK", None),
        (b"GET /poll?since=e1:0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"HTTP/1.1 200 OK", b"close"),
    ]:
        conn = server.connect()
        conn.send(request)
        got, headers, body = split_head(conn.flushed())
        assert got == status and headers.get(b"connection") == close_header
        assert int(headers[b"content-length"]) == len(body) and loads(body)["cursor"] == "e1:1"
        assert conn.tcp.disconnecting or not conn.tcp.connected


def test_poll_head_has_headers_only(server: Server) -> None:
    """HEAD of a poll takes twisted.web's own path: the same headers, no body."""
    server.append(1, 1)
    conn = server.connect()
    conn.send(b"HEAD /poll?since=e1:0 HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = split_head(conn.flushed())
    assert status == b"HTTP/1.1 200 OK" and body == b""
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"access-control-allow-origin"] == b"*"


def test_polls_answered_by_one_batch_share_one_body(server: Server) -> None:
    """Polls of one filter waiting at the head, answered by one live batch, get the same
    bytes, built once; a poll of another filter gets its own."""
    conns = [server.connect() for _ in range(5)]
    for conn in conns[:4]:
        conn.send(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
    conns[4].send(b"GET /poll?builder=mac HTTP/1.1\r\nHost: x\r\n\r\n")
    with mock.patch.object(longpoll, "answer_body", wraps=longpoll.answer_body) as built:
        server.append(1, 3, builder="mac")
    bodies = [split_head(conn.received())[2] for conn in conns]
    assert len(set(bodies[:4])) == 1 and bodies[4] == bodies[0]  # same events, cursor, head
    assert built.call_count == 2
    assert [e["seq"] for e in loads(bodies[0])["events"]] == [1, 2, 3]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["wait", "answer", "leave"])),
                min_size=1, max_size=12),
       st.lists(st.integers(0, 40), max_size=6))
def test_poll_timeouts_share_one_timer_and_fire_on_time(plan: list[tuple[int, str]], steps: list[int]) -> None:
    """Polls with any timeouts, some answered by an event or left by their client before:
    each poll still waiting is answered empty exactly when its timeout passes (not a moment
    before or after), at most one timer is ever pending, and none is left at the end."""
    s = Server()
    try:
        conns = []
        for i, (timeout, _) in enumerate(plan):
            conn = s.connect()
            conn.send(f"GET /poll?timeout={timeout}&builder=b{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            conns.append(conn)
        started = s.clock.seconds()
        for i, (_, fate) in enumerate(plan):
            if fate == "answer":
                s.append(i + 1, i + 1, builder=f"b{i}")
            elif fate == "leave":
                conns[i].lose()
        answered = {i for i, (_, fate) in enumerate(plan) if fate == "answer"}
        for i in answered:
            assert loads(split_head(conns[i].received())[2])["events"]
        for step in [*steps, 31]:
            s.clock.advance(step)
            assert len(s.clock.getDelayedCalls()) <= 1
            elapsed = s.clock.seconds() - started
            for i, (timeout, fate) in enumerate(plan):
                if fate != "wait":
                    continue
                got = conns[i].received()
                assert bool(got) == (timeout <= elapsed), (timeout, elapsed)
                if got:
                    assert loads(split_head(got)[2])["events"] == []
        assert s.clock.getDelayedCalls() == []
        assert s.hub.stats.subscribers["longpoll"] == 0
    finally:
        s.close()
