"""Property test of the WebSocket command channel: whatever a client sends, in whatever order,
with events arriving, journal reads completing late, the socket filling and draining and time
passing, the server answers only well-formed messages, never raises, keeps at most one
subscription delivering and one journal read in flight per socket, enforces its command rate
exactly, and leaves no subscriber behind when the socket closes.

A real autobahn client talks to a real :class:`FirehoseWebSocket` over Twisted's iosim (no
sockets, no global reactor); the server's transport honours ``pauseProducing`` as TCP does:
while it is paused the client's bytes wait, unread.
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from hypothesis import event, given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.test import iosim

from firehose.event import loads
from firehose.hub import Hub
from firehose.journal import MemoryJournal
from firehose.transports.websocket import FirehoseWebSocketFactory
from tests.unit.helpers import HeldReads, batch

RATE, BURST = 2.0, 12
CONTROL_TYPES = {"subscribed", "unsubscribed", "gap", "pong", "error"}
ERRORS = {"malformed_json", "bad_command", "bad_filter", "bad_cursor"}
FINAL_GAPS = {"slow", "error"}


class TCPLikeTransport(iosim.FakeTransport):
    """A server transport whose reading can be paused: bytes that arrive meanwhile wait, and
    are delivered on the next pump after ``resumeProducing`` (as a socket's next read)."""

    reading = True
    #: Held bytes were delivered at the end of a pump: what they caused still waits to move.
    delivered = False

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.held: list[bytes] = []

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True

    def bufferReceived(self, buf: bytes) -> None:
        if self.reading and not self.held:
            super().bufferReceived(buf)
        else:
            self.held.append(buf)

    def _checkProducer(self) -> None:
        if self.reading and self.held:
            data, self.held = b"".join(self.held), []
            self.delivered = True
            super().bufferReceived(data)
        super()._checkProducer()


class _Client(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.opened = self

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        assert not isBinary
        self.factory.received.append(loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.closed = code


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=6,
)
good_filters = st.sampled_from(
    [None, {}, {"builder": "linux"}, {"builder": ["mac"]}, {"type": "build.finished"},
     {"builder": "linux", "type": "build.started"}]
)
bad_filters = st.sampled_from([{"nope": 1}, "x", [1], {"builder": ""}, {"builder": [1]}])
#: Replays (which read the journal) are the interesting case: most cursors ask for one.
good_sinces = st.sampled_from([None, "earliest", "e1:0", "e1:2", "now", ""])
bad_sinces = st.sampled_from(["e1:999", "zz:1", "junk", 5])
subscribe = st.tuples(
    st.just("subscribe"),
    st.one_of(
        st.tuples(good_filters, good_sinces),
        st.tuples(good_filters, good_sinces),
        st.tuples(good_filters, good_sinces),
        st.tuples(good_filters | bad_filters, good_sinces | bad_sinces),
    ),
)
release = st.tuples(st.just("release"), st.none())
commands = st.one_of(
    subscribe, subscribe, subscribe, subscribe,
    st.tuples(st.just("json"), json_values),
    st.tuples(st.just("json"), st.fixed_dictionaries({"cmd": json_values})),
    st.tuples(st.just("bytes"), st.binary(max_size=40)),
    st.tuples(st.just("unsubscribe"), st.none()),
    st.tuples(st.just("ping"), st.none()),
    st.tuples(st.just("pingframe"), st.none()),
)
publish = st.tuples(st.just("publish"), st.integers(1, 8))
world = st.one_of(
    publish, publish,
    release, release, release,
    st.tuples(st.just("tick"), st.sampled_from([0.1, 0.5, 1.0, 5.0])),
    st.tuples(st.just("full"), st.none()),
    st.tuples(st.just("full"), st.none()),
    st.tuples(st.just("drain"), st.none()),
)
steps = st.lists(st.one_of(commands, world), min_size=8, max_size=40)


class _Check:
    """Follows the client's view and checks every message against what the server promised."""

    def __init__(self, journal: MemoryJournal) -> None:
        self.journal = journal
        self.filter: dict[str, list[str]] | None = None  # the acknowledged subscription's filter
        self.last = -1
        self.seen: set[str] = set()

    def message(self, msg: Any) -> None:
        assert isinstance(msg, dict), msg
        kind = msg.get("type")
        assert isinstance(kind, str), msg
        if "." in kind:
            assert self.filter is not None, f"an event with no subscription: {msg}"
            offset = int(msg["id"].rpartition(":")[2])
            assert offset > self.last, f"event {msg['id']} out of order or twice (after {self.last})"
            self.last = offset
            self.seen.add("event")
            for field, key in (("builder", msg["data"].get("builder")), ("type", kind)):
                if field in self.filter:
                    assert key in self.filter[field], (msg, self.filter)
            return
        assert kind in CONTROL_TYPES, msg
        self.seen.add(kind if kind != "gap" else f"gap {msg['reason']}")
        if kind == "subscribed":
            self.filter, self.last = msg["filter"], -1
        elif kind == "unsubscribed":
            self.filter = None
        elif kind == "gap" and msg["reason"] in FINAL_GAPS:
            self.filter = None
        elif kind == "error":
            assert msg["error"] in ERRORS and isinstance(msg["message"], str), msg
            assert len(msg["message"]) < 400, msg


@given(steps=steps, page=st.integers(1, 4), max_pending=st.integers(1, 8))
def test_any_command_sequence_keeps_the_promises(steps: list[tuple[str, Any]], page: int, max_pending: int) -> None:
    """Every reply is a JSON object with a known ``type`` (events: in order, once, matching the
    acknowledged filter, none outside a subscription); the connection never raises and nothing
    is logged as a failure; open subscriptions never exceed one plus the reads in flight, and
    reads in flight never exceed one; the command rate is enforced exactly as a token bucket
    (close 1008 on the first command over it, not before); and once the socket is closed no
    subscription is left in the hub."""
    failures: list[Any] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        _run(steps, page, max_pending)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not failures, [f["log_failure"].getTraceback() for f in failures]


def _run(steps: list[tuple[str, Any]], page: int, max_pending: int) -> None:
    clock = Clock()
    journal = MemoryJournal(epoch="e1")
    journal.append(batch(1, 3, builder="linux"))
    reads = HeldReads(journal)
    hub = Hub(journal, page_size=page, max_pending=max_pending)
    server_factory = FirehoseWebSocketFactory(
        hub, ping_interval=0, commands_per_second=RATE, command_burst=BURST, reactor=clock
    )
    server_factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    client_factory = WebSocketClientFactory("ws://127.0.0.1/ws")
    client_factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    client_factory.protocol = _Client
    client_factory.received, client_factory.closed = [], None
    addr = IPv4Address("TCP", "127.0.0.1", 80)
    server = server_factory.buildProtocol(addr)
    client = client_factory.buildProtocol(addr)
    server_io = TCPLikeTransport(server, isServer=True)
    pump = iosim.connect(server, server_io, client, iosim.FakeTransport(client, isServer=False), clock=clock)

    def flush() -> None:
        pump.flush()
        for _ in range(100):
            if not server_io.delivered:
                return
            server_io.delivered = False
            pump.flush()

    flush()
    ws = client_factory.opened
    check = _Check(journal)
    seq = 3
    tokens, at = float(BURST), clock.seconds()
    unread = 0  # commands sent while the server does not read
    expect_close = False

    def spend(n: int) -> bool:
        """The model of the server's bucket: spend ``n`` commands now; False past the limit."""
        nonlocal tokens, at
        now = clock.seconds()
        tokens, at = min(float(BURST), tokens + (now - at) * RATE), now
        for _ in range(n):
            if tokens < 1:
                return False
            tokens -= 1
        return True

    for kind, arg in steps:
        if kind == "publish":
            builders = ["linux", "mac"]
            journal.append(batch(seq + 1, seq + arg, builder=builders[seq % 2],
                                 type="build.started" if seq % 3 else "build.finished"))
            seq += arg
        elif kind == "release":
            reads.release()
        elif kind == "tick":
            clock.advance(arg)
        elif kind == "full":
            if server_io.producer is not None:
                server_io.producer.pauseProducing()
        elif kind == "drain":
            if server_io.producer is not None:
                server_io.producer.resumeProducing()
        elif not expect_close:
            if kind == "json":
                ws.sendMessage(json.dumps(arg).encode())
            elif kind == "bytes":
                ws.sendMessage(arg, isBinary=True)
            elif kind == "subscribe":
                flt, since = arg
                msg: dict[str, Any] = {"cmd": "subscribe"}
                if flt is not None:
                    msg["filter"] = flt
                if since is not None:
                    msg["since"] = since
                ws.sendMessage(json.dumps(msg).encode())
            elif kind == "pingframe":
                ws.sendPing()
            else:
                ws.sendMessage(json.dumps({"cmd": kind}).encode())
            unread += 1
        if server_io.reading and unread:
            expect_close = expect_close or not spend(unread)
            unread = 0
        flush()
        received, client_factory.received = client_factory.received, []
        for msg in received:
            check.message(msg)
        assert len(reads.pending) <= 1, f"{len(reads.pending)} journal reads in flight"
        open_subs = hub.stats.subscribers["websocket"]
        if open_subs == 2:
            check.seen.add("a replaced subscription draining its read")
        assert open_subs <= 1 + len(reads.pending), (open_subs, len(reads.pending))
        if expect_close:
            assert client_factory.closed == 1008, client_factory.closed
            assert server_io.disconnected
            break
        assert client_factory.closed is None, client_factory.closed
    for what in sorted(check.seen):
        event(what)
    event("closed 1008 by the rate limit" if expect_close else "closed by the client")
    if not expect_close:
        if server_io.producer is not None:
            server_io.producer.resumeProducing()
        ws.sendClose()
        flush()
        assert server_io.disconnected
    assert hub.stats.subscribers["websocket"] == 0
    assert not list(hub.subscriptions)
    reads.release_all()
    flush()
    assert hub.stats.subscribers["websocket"] == 0 and not list(hub.subscriptions)
    assert clock.getDelayedCalls() == []
