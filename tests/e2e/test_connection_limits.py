"""Connection limits and the request deadline on a real ``firehose serve``, over loopback."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from .conftest import DEADLINE, HOST, TOKENS, Master, SSEClient, WSClient, http_get, post_ingest, wait_for

pytestmark = pytest.mark.slow


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (bounded by DEADLINE per read)."""
    sock.settimeout(DEADLINE)
    chunks = []
    for _ in range(1000):
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _ingest_when_accepted(server: Any, batch: list[dict[str, Any]]) -> None:
    """POST until the server accepts the connection and the batch (a resent batch is a
    duplicate the server drops, so retrying is safe)."""

    def attempt() -> bool:
        try:
            status, _ = post_ingest(server.url, batch, TOKENS["m1"])
        except OSError:
            return False
        return status == 200

    wait_for(attempt, "the batch to be accepted once a connection slot is free")


def test_past_the_per_address_limit_connections_get_429_and_earlier_ones_keep_working(start_server, clients):
    """With a limit of 3 connections per address, a 4th from 127.0.0.1 is answered 429 with
    Retry-After and a JSON body, then closed; the three open streams (a WebSocket, two SSE)
    keep working, and once one of them closes a new connection is served again."""
    server = start_server("--max-connections-per-address", "3")
    ws = WSClient(server.ws_url)
    clients.append(ws)
    ws.subscribe()
    sse = SSEClient(server.url)
    clients.append(sse)
    other = SSEClient(server.url)
    clients.append(other)
    assert (sse.status, other.status) == (200, 200)

    with socket.create_connection((HOST, server.port), timeout=DEADLINE) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: firehose\r\n\r\n")
        answer = _read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429 "), answer
    assert b"\r\nRetry-After: 5" in head, answer
    error = json.loads(body)
    assert error["error"] == "too_many_connections" and HOST in error["message"], error

    other.close()
    m1 = Master()
    batch = m1.batch(1)
    _ingest_when_accepted(server, batch)
    (event,) = ws.events(1)
    assert event["seq"] == 1
    assert [e["seq"] for e in sse.events(1)] == [1]


def test_slowloris_is_cut_at_the_deadline_while_others_are_served(start_server, clients):
    """A client sending its headers a byte at a time is answered 408 and closed at the request
    deadline (2 s here) long before its headers could end, while a normal client is served
    meanwhile; a WebSocket opened before it outlives both the deadline and the idle timeout."""
    server = start_server("--request-timeout", "2", "--idle-timeout", "2")
    ws = WSClient(server.ws_url)
    clients.append(ws)
    ws.subscribe()

    header = b"GET /health HTTP/1.1\r\nHost: firehose\r\nX-Slow: " + b"a" * 10_000  # ~2000 s at this pace
    served_meanwhile = False
    answer = b""
    with socket.create_connection((HOST, server.port), timeout=DEADLINE) as sock:
        sock.settimeout(0.2)  # the pace of the dribble: one byte, then up to 0.2 s of listening
        for i, byte in enumerate(header):
            try:
                sock.sendall(bytes([byte]))
                data = sock.recv(65536)
            except TimeoutError:
                if i == 3:
                    status, _ = http_get(server.url + "/health")
                    served_meanwhile = status == 200
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            answer += data
            if not data:
                break
        else:
            raise AssertionError("the slow client was never cut off")
        sock.settimeout(DEADLINE)
        answer += _read_all(sock)
    assert served_meanwhile
    assert i < len(header) - 1
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"

    # More than the deadline and the idle timeout have passed since the WebSocket's request.
    m1 = Master()
    server.ingest(m1.batch(1))
    assert [e["seq"] for e in ws.events(1)] == [1]
