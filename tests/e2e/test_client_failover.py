"""The clients given two URLs, one of which dies, against a real server process.

Two ``firehose serve`` processes that share nothing would have two cursor spaces, so they
could not prove exactly-once across a failover; here ONE server sits behind two loopback TCP
proxies (two URLs, one node, one journal) and a proxy is closed under the client.  The client
must move to the other URL and resume by cursor: every event once, in order.  The multi-node
proof, with nodes on one Redis, is in the Redis end-to-end tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from firehose.client import Backoff, Stream

from .client_support import Lines, TCPProxy
from .conftest import DEADLINE, Master, seqs, wait_for
from .test_client import Collector, expected, twisted_client

pytestmark = pytest.mark.slow


def test_blocking_stream_fails_over_to_the_other_url(start_server):
    """``Stream([A, B])`` follows the server through proxy A; A is closed while a poll is held;
    the stream moves to B with its cursor and receives events 1..30 exactly once, in order."""
    server = start_server()
    a, b = TCPProxy(server.port), TCPProxy(server.port)
    m1 = Master()
    try:
        s = Stream([a.url, b.url], {}, "earliest", poll_timeout=5, stop_after=3 * DEADLINE,
                   backoff=Backoff(0.05, 0.3))
        c = Collector(s, 30)
        server.ingest(m1.batch(10))
        c.wait(10)
        wait_for(lambda: server.health()["subscribers"].get("longpoll", 0) == 1, "a held poll")
        assert b.accepted == 0
        a.close()
        server.ingest(m1.batch(10))
        c.wait(20)
        server.ingest(m1.batch(10))
        c.join()
    finally:
        a.close()
        b.close()
    assert seqs(c.events) == expected(m1, 1, 30)
    assert len({e["id"] for e in c.events}) == 30
    assert b.accepted >= 1 and s.url == b.url


def test_twisted_client_fails_over_to_the_other_url(start_server):
    """``FirehoseClient("A,B")`` in a real reactor: A is closed under its WebSocket; it
    reconnects through B from its last event and receives every matching event exactly once,
    in order."""
    server = start_server()
    a, b = TCPProxy(server.port), TCPProxy(server.port)
    m1 = Master()
    lines = twisted_client(f"{a.url},{b.url}", "earliest")
    try:
        server.ingest(m1.batch(10) + m1.batch(5, builder="mac"))
        first = lines.take(10)
        server.wait_subscribers("websocket", 1)
        assert b.accepted == 0
        a.close()
        server.ingest(m1.batch(10))
        second = lines.take(10)
        server.wait_subscribers("websocket", 1)
    finally:
        lines.stop()
        a.close()
        b.close()
    got = [json.loads(x)["seq"] for x in first + second]
    assert got == list(range(1, 11)) + list(range(16, 26))
    assert b.accepted >= 1


def test_cli_tail_fails_over_to_the_other_url(start_server):
    """``firehose tail A,B --since earliest -n 20``: A is closed while tail holds a poll through
    it; tail goes on through B and prints events 1..20 once each, in order, then exits 0."""
    server = start_server()
    a, b = TCPProxy(server.port), TCPProxy(server.port)
    m1 = Master()
    proc = subprocess.Popen([sys.executable, "-m", "firehose.cli", "tail", f"{a.url},{b.url}", "--since", "earliest",
                             "-n", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    lines = Lines(proc)
    try:
        server.ingest(m1.batch(10))
        first = lines.take(10)
        wait_for(lambda: server.health()["subscribers"].get("longpoll", 0) == 1, "tail holding a poll")
        assert b.accepted == 0
        a.close()
        server.ingest(m1.batch(10))
        second = lines.take(10)
        assert proc.wait(DEADLINE) == 0
    finally:
        lines.stop()
        a.close()
        b.close()
    assert seqs([json.loads(x) for x in first + second]) == expected(m1, 1, 20)
    assert b.accepted >= 1
