"""The socket fast path (``firehose.transports.plain_tcp`` and ``write_now``) against the
installed Twisted's own ``tcp.Server`` (the class of an accepted connection).

``write_now`` reads Twisted internals, so these tests are what an upgrade of Twisted must pass
(setup.py caps Twisted at the versions they passed on).  The connection is Twisted's real class
on one end of a ``socket.socketpair()``: a kernel socket, no network and no reactor running (a
``MemoryReactor`` records what the connection registers).  The test plays the reactor's part by
calling ``doWrite`` itself, and reads the other end with non-blocking ``recv``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from firehose.transports import plain_tcp, write_now


class Pair:
    """A Twisted connection on one end of a socket pair, and the raw socket at the other."""

    def __init__(self) -> None:
        self.ours, self.peer = socket.socketpair()
        self.peer.setblocking(False)
        self.reactor = MemoryReactor()
        self.connection = tcp.Server(
            self.ours, Protocol(), ("127.0.0.1", 0), None, 0, self.reactor  # type: ignore[arg-type]
        )
        self.connection.repstr = "<the test's connection>"  # made from the listening port, absent here

    def received(self) -> bytes:
        """Everything the peer can read now."""
        chunks = []
        for _ in range(10_000):
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def drain(self, expected: int) -> bytes:
        """Play the reactor: let the connection flush its buffer while the peer reads, until
        ``expected`` bytes arrived (bounded in turns)."""
        got = bytearray(self.received())
        for _ in range(10_000):
            if len(got) >= expected:
                break
            self.connection.doWrite()
            got += self.received()
        return bytes(got)

    def buffered(self) -> int:
        c = self.connection
        return len(c.dataBuffer) - c.offset + c._tempDataLen

    def close(self) -> None:
        self.peer.close()
        self.ours.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    try:
        yield p
    finally:
        p.close()


def test_the_internals_it_reads_exist(pair: Pair) -> None:
    """The attributes ``write_now`` reads are there, with the meaning it assumes, on a fresh
    connection of the installed Twisted: an empty buffer, connected, not disconnecting."""
    c = pair.connection
    assert (c._tempDataLen, c.dataBuffer, c.offset) == (0, b"", 0)
    assert c.connected and not c.disconnecting and not c._writeDisconnected
    assert c.writeSomeData(b"x") == 1
    assert pair.received() == b"x"


def test_idle_socket_is_written_at_once(pair: Pair) -> None:
    """With nothing buffered the bytes are in the socket when ``write_now`` returns, and the
    connection never asks the reactor to watch for writability."""
    write_now(pair.connection, b"hello")
    assert pair.received() == b"hello"
    assert pair.buffered() == 0
    assert pair.connection not in pair.reactor.getWriters()


def test_data_already_buffered_goes_first(pair: Pair) -> None:
    """When an earlier ``write`` still waits in the buffer, ``write_now`` queues behind it
    through ``transport.write`` instead of overtaking it on the socket."""
    pair.connection.write(b"first,")
    write_now(pair.connection, b"second")
    assert pair.received() == b""
    assert pair.buffered() == len(b"first,second")
    assert pair.connection in pair.reactor.getWriters()
    assert pair.drain(12) == b"first,second"


def test_what_the_kernel_does_not_take_is_buffered_in_order(pair: Pair) -> None:
    """A write larger than the socket takes is sent in part and the rest buffered; later
    writes, including while a partly sent buffer remains (``offset`` inside ``dataBuffer``),
    queue behind it, so the peer reads every byte in order."""
    big = bytes(range(256)) * 8192  # 2 MiB: more than SEND_LIMIT and the socket's buffer
    write_now(pair.connection, big)
    assert 0 < pair.buffered() < len(big)
    write_now(pair.connection, b"tail")
    pair.connection.doWrite()  # moves the writes into dataBuffer and sends a part of it
    c = pair.connection
    assert c._tempDataLen == 0 and 0 < c.offset < len(c.dataBuffer)
    write_now(c, b"more")
    assert c._tempDataLen == 4
    total = len(big) + 8
    assert pair.drain(total) == big + b"tailmore"


def test_a_closing_connection_is_not_written_directly(pair: Pair) -> None:
    """After ``loseConnection`` the bytes go through ``write`` (Twisted flushes, then closes),
    never straight to the socket."""
    pair.connection.loseConnection()
    write_now(pair.connection, b"late")
    assert pair.received() == b""


def test_a_lost_connection_takes_nothing(pair: Pair) -> None:
    """Once the connection is lost nothing is sent and nothing raises (``write`` drops it)."""
    pair.connection.connectionLost(Failure(ConnectionDone()))
    write_now(pair.connection, b"late")
    assert pair.received() == b""


def test_plain_tcp_finds_the_connection_under_the_servers_wrapper(pair: Pair) -> None:
    """A TCP connection is plain, directly or under the server's connection-tracking wrapper
    (an exact ``ProtocolWrapper``)."""
    assert plain_tcp(pair.connection) is pair.connection
    wrapper = ProtocolWrapper(WrappingFactory(None), Protocol())
    wrapper.makeConnection(pair.connection)
    assert plain_tcp(wrapper) is pair.connection


def test_plain_tcp_never_looks_under_tls() -> None:
    """Direct socket writes are only used on plain TCP: not under TLS (a ProtocolWrapper
    subclass), not on fake transports."""
    wrapper = ProtocolWrapper(WrappingFactory(None), Protocol())
    wrapper.transport = StringTransport()
    assert plain_tcp(wrapper) is None
    assert plain_tcp(StringTransport()) is None
    assert issubclass(TLSMemoryBIOProtocol, ProtocolWrapper)
    tls = TLSMemoryBIOProtocol.__new__(TLSMemoryBIOProtocol)
    assert plain_tcp(tls) is None


def test_plain_tcp_refuses_a_connection_turned_tls(pair: Pair) -> None:
    """A TCP connection after ``startTLS`` writes through TLS: it is not plain any more."""
    ssl = pytest.importorskip("twisted.internet.ssl")
    pair.connection.startTLS(ssl.CertificateOptions())
    assert plain_tcp(pair.connection) is None


def test_content_type_parsing_is_cached_and_means_the_same() -> None:
    """``firehose.web.cache_content_type_parsing`` wraps twisted.web's private Content-Type
    reader in a bounded cache: the function must still exist in the installed Twisted, answer
    as it did for every spelling, and stay bounded however many values clients send."""
    from twisted.web import http

    from firehose.web import cache_content_type_parsing

    original = getattr(http._parseContentType, "__wrapped__", http._parseContentType)
    cache_content_type_parsing()
    cache_content_type_parsing()  # idempotent: one cache, not a cache of a cache
    parse = http._parseContentType
    assert parse.__wrapped__ is original  # type: ignore[attr-defined]
    for value in (b"application/json", b"application/json; charset=utf-8", b"Application/JSON",
                  b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x", b"", b"nonsense",
                  b"text/plain;;;=", "caf\u00e9/x".encode("latin-1")):
        assert parse(value) == original(value), value
    for i in range(1000):
        parse(b"application/x-%d" % i)
    assert parse.cache_info().currsize <= 64  # type: ignore[attr-defined]
