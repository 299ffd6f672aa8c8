"""A subscriber that stops reading gets a ``gap`` (reason ``slow``); the others never notice."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from typing import Any

import pytest

from .conftest import DEADLINE, HOST, Master, SSEClient, WSClient, ids, offset, seqs

pytestmark = pytest.mark.slow

BATCH = 200
MAX_BATCHES = 100  # 20,000 events of ~800 bytes: far beyond 1000 queued + any socket buffers


class RawSlowSubscriber:
    """A loopback connection with a tiny receive buffer that reads nothing until told to."""

    def __init__(self, port: int, transport: str) -> None:
        self.transport = transport
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(DEADLINE)
        self.sock.connect((HOST, port))
        self.buf = b""
        if transport == "sse":
            # HTTP/1.0: no chunked framing, and the server closes the connection when done.
            self.sock.sendall(f"GET /sse HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
        else:
            key = base64.b64encode(os.urandom(16)).decode()
            self.sock.sendall(
                f"GET /ws HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            head = self._read_until(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            self._send_text(json.dumps({"cmd": "subscribe", "filter": {}, "since": None}))

    def _fill(self, deadline: float) -> bool:
        if time.monotonic() > deadline:
            raise AssertionError("slow subscriber: nothing more to read before the deadline")
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def _read_until(self, sep: bytes) -> bytes:
        deadline = time.monotonic() + DEADLINE
        for _ in range(100_000):
            if sep in self.buf:
                break
            if not self._fill(deadline):
                raise AssertionError(f"connection closed before {sep!r}")
        head, _, self.buf = self.buf.partition(sep)
        return head

    def _send_text(self, text: str) -> None:
        payload = text.encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def _read_exact(self, n: int, deadline: float) -> bytes:
        for _ in range(100_000):
            if len(self.buf) >= n:
                break
            if not self._fill(deadline):
                raise AssertionError("WebSocket closed mid-frame")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_until_gap(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Now read: every event the server had sent, up to and including the gap message."""
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + DEADLINE * 2
        if self.transport == "sse":
            status = self._read_until(b"\r\n\r\n")
            assert status.startswith(b"HTTP/1.0 200") or status.startswith(b"HTTP/1.1 200"), status
        for _ in range(MAX_BATCHES * BATCH + 10):
            msg = self._next_sse(deadline) if self.transport == "sse" else self._next_ws(deadline)
            if msg.get("type") == "gap":
                return events, msg
            if "." in msg.get("type", ""):
                events.append(msg)
        raise AssertionError("no gap message")

    def _next_sse(self, deadline: float) -> dict[str, Any]:
        for _ in range(1000):
            for _ in range(100_000):
                if b"\n\n" in self.buf:
                    break
                if not self._fill(deadline):
                    raise AssertionError("SSE stream ended without a gap")
            block, _, self.buf = self.buf.partition(b"\n\n")
            fields = dict(line.split(": ", 1) for line in block.decode().split("\n")
                          if line and not line.startswith(":") and ": " in line)
            if "data" in fields:
                obj = json.loads(fields["data"])
                assert fields.get("id") == obj.get("id", obj.get("cursor")), fields
                self.sse_event = fields.get("event")
                return obj
        raise AssertionError("SSE: only comments")

    def _next_ws(self, deadline: float) -> dict[str, Any]:
        b0, b1 = self._read_exact(2, deadline)
        assert b0 & 0x0F == 0x1 and b0 & 0x80, f"expected a final text frame, got opcode {b0:#x}"
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exact(2, deadline))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exact(8, deadline))
        return json.loads(self._read_exact(length, deadline))

    def read_to_end(self) -> bytes:
        """The rest of the stream until the server closes it (SSE after a final gap)."""
        deadline = time.monotonic() + DEADLINE
        for _ in range(10_000):
            if not self._fill(deadline):
                rest, self.buf = self.buf, b""
                return rest
        raise AssertionError("stream did not end")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("transport", ["sse", "websocket"])
def test_slow_subscriber_gets_a_gap_while_a_fast_one_gets_everything(transport, server, clients):
    """A subscriber whose socket is never read (tiny receive buffer) falls behind while a
    `websockets` client keeps up: the fast one receives every event in order with no gap; the
    slow one, when it finally reads, finds every event up to some point, then a ``gap`` with
    reason ``slow`` whose cursor is the last event it got; resuming from that cursor yields the
    rest with no hole; /metrics counts the slow subscriber on its transport only."""
    slow = RawSlowSubscriber(server.port, transport)
    clients.append(slow)
    fast = WSClient(server.ws_url)
    clients.append(fast)
    fast.subscribe()
    server.wait_subscribers("websocket", 2 if transport == "websocket" else 1)
    if transport == "sse":
        server.wait_subscribers("sse", 1)
    start = server.health()["cursor"]

    m1 = Master()
    received: list[dict[str, Any]] = []
    slow_count = 0.0
    for n in range(MAX_BATCHES):
        server.ingest(m1.batch(BATCH, type="log.lines", pad=600))
        received += fast.events(BATCH)  # the fast client reads each batch before the next one
        slow_count = server.metric("firehose_slow_subscribers_total", transport=transport) or 0
        if slow_count and n >= 2:
            break
    assert slow_count == 1, f"the slow subscriber was never declared slow after {m1.seq} events"
    assert seqs(received) == [("m1", m1.incarnation, s) for s in range(1, m1.seq + 1)]
    assert [offset(i) for i in ids(received)] == list(range(offset(start) + 1, offset(start) + m1.seq + 1))
    fast.assert_nothing_more()
    assert fast.control == []
    assert server.metric("firehose_slow_subscribers_total", transport="websocket" if transport == "sse" else "sse") == 0

    got, gap = slow.read_until_gap()
    assert gap["reason"] == "slow", gap
    assert got, "the slow subscriber got nothing before its gap"
    assert len(got) < len(received)
    assert got == received[: len(got)], "the slow subscriber's events are a prefix of the stream"
    assert gap["cursor"] == got[-1]["id"], gap
    if transport == "sse":
        assert slow.sse_event == "gap"
        assert slow.read_to_end() == b"", "a final gap ends the SSE stream"
    slow.close()

    resumed = SSEClient(server.url, headers={"Last-Event-ID": gap["cursor"]})
    clients.append(resumed)
    rest = resumed.until_id(received[-1]["id"])
    assert got + rest == received
    assert resumed.gaps == []
