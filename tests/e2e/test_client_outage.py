"""An outage before the first event: a client started "from now" (the default) whose connection
drops before any event arrives, and cannot reconnect for a while, still gets every event
published during the outage, exactly once (issue #11: 55 events were lost after a 20 s outage
at start, because the retry started "from now" again).

The outage is a :class:`~tests.e2e.client_support.TCPProxy` whose connections are cut and whose
target is then a closed port (each reconnection is accepted and closed at once) until it is
pointed back at the server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from firehose.client import Backoff, Stream

from .client_support import Lines, TCPProxy
from .conftest import DEADLINE, Master, ServerProcess, free_port, seqs, wait_for
from .test_client import Collector, expected

pytestmark = pytest.mark.slow


def outage(server: ServerProcess, proxy: TCPProxy, during: Callable[[], None]) -> None:
    """Cut the client's connections, refuse its reconnections (at least one is refused), run
    ``during`` (publish), then let it through to the server again."""
    proxy.target_port = free_port()
    assert proxy.drop() >= 1
    refused = proxy.accepted
    during()
    wait_for(lambda: proxy.accepted > refused, "a reconnection refused during the outage")
    proxy.target_port = server.port


def test_stream_from_now_loses_nothing_to_an_outage_before_its_first_event(server):
    """stream() with since=now, connected (its poll held) but no event yet; the connection drops
    and the server stays unreachable while 20 events are published; once back it yields those
    20 and the 10 after, exactly once, in order."""
    proxy = TCPProxy(server.port)
    m1 = Master()
    try:
        s = Stream(proxy.url, {}, None, poll_timeout=DEADLINE, stop_after=3 * DEADLINE,
                   backoff=Backoff(0.05, 0.3))
        c = Collector(s, 30)
        # Connected: the server answered once and holds the next poll.
        wait_for(lambda: s.connected and server.health()["subscribers"].get("longpoll", 0) == 1,
                 "a held poll after the first answer")
        outage(server, proxy, lambda: server.ingest(m1.batch(20)))
        c.wait(20)
        server.ingest(m1.batch(10))
        c.join()
    finally:
        proxy.close()
    assert seqs(c.events) == expected(m1, 1, 30)


SCRIPT = r"""
import json, sys
from twisted.internet import reactor
from firehose.client import Backoff, FirehoseClient

client = FirehoseClient(sys.argv[1], on_event=lambda ev: print(json.dumps({"seq": ev["seq"]}), flush=True),
                        reactor=reactor, backoff=Backoff(0.05, 0.3))
message = client._message
told = []

def spy(payload):
    message(payload)
    if json.loads(payload).get("type") == "subscribed" and not told:
        told.append(1)
        print(json.dumps({"subscribed": client.cursor}), flush=True)

client._message = spy
client.start()
reactor.run()
"""


def test_twisted_client_from_now_loses_nothing_to_an_outage_before_its_first_event(server):
    """FirehoseClient with the default since (now), subscribed but given no event yet; the
    connection drops and the server stays unreachable while 20 events are published; once back
    it delivers those 20 and the 10 after, exactly once, in order (it resubscribes from the
    head cursor its first ``subscribed`` answer named, not from "now")."""
    proxy = TCPProxy(server.port)
    m1 = Master()
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, proxy.url], stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    lines = Lines(proc)
    try:
        assert json.loads(lines.next())["subscribed"] == server.health()["cursor"]
        server.wait_subscribers("websocket", 1)
        outage(server, proxy, lambda: server.ingest(m1.batch(20)))
        first = lines.take(20)
        server.ingest(m1.batch(10))
        rest = lines.take(10)
    finally:
        lines.stop()
        proxy.close()
    assert [json.loads(x)["seq"] for x in first + rest] == list(range(1, 31))


def test_tail_from_now_loses_nothing_to_an_outage_before_its_first_event(server):
    """``firehose tail URL`` (no --since) connected but shown no event yet; the connection drops
    and the server stays unreachable while 20 events are published; once back it prints those
    20 and the 10 after, exactly once, in order."""
    proxy = TCPProxy(server.port)
    m1 = Master()
    proc = subprocess.Popen([sys.executable, "-m", "firehose.cli", "tail", proxy.url, "-n", "30"],
                            stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    lines = Lines(proc)
    got: list[dict[str, Any]] = []
    try:
        # Connected: its first poll was answered (a second connection) and the next is held.
        wait_for(lambda: proxy.accepted >= 2 and server.health()["subscribers"].get("longpoll", 0) == 1,
                 "tail holding its second poll")
        outage(server, proxy, lambda: server.ingest(m1.batch(20)))
        got += [json.loads(x) for x in lines.take(20)]
        server.ingest(m1.batch(10))
        got += [json.loads(x) for x in lines.take(10)]
        assert proc.wait(DEADLINE) == 0
    finally:
        lines.stop()
        proxy.close()
    assert seqs(got) == expected(m1, 1, 30)
