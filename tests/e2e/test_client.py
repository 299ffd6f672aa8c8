"""The Python clients against a real server process: events arrive once and in order across a
dropped connection and a server restart."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

import pytest

from firehose.client import Backoff, Gap, RequestError, Stream, Unavailable, query, stream

from .client_support import Lines, TCPProxy, restart
from .conftest import DEADLINE, Master, free_port, seqs, wait_for

pytestmark = pytest.mark.slow


def expected(master: Master, first: int, last: int) -> list[tuple[str, str, int]]:
    return [(master.name, master.incarnation, s) for s in range(first, last + 1)]


class Collector:
    """Runs a blocking :class:`Stream` in a thread until it has ``n`` events."""

    def __init__(self, s: Stream, n: int) -> None:
        self.stream = s
        self.n = n
        self.events: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.stream:
                self.events.append(event)
                if len(self.events) >= self.n:
                    return
        except BaseException as exc:  # reported by the test
            self.error = exc

    def wait(self, n: int) -> None:
        wait_for(lambda: len(self.events) >= n or self.error is not None, f"{n} events from the stream")
        assert self.error is None, self.error

    def join(self) -> None:
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive()
        assert self.error is None, self.error


def test_blocking_stream_survives_drop_and_restart(start_server):
    """The blocking client (long-poll) receives events 1..30 exactly once, in order, although
    its connection is cut while a poll is held and the server is restarted in between."""
    server = start_server()
    proxy = TCPProxy(server.port)
    m1 = Master()
    try:
        s = Stream(proxy.url, {}, "earliest", poll_timeout=5, stop_after=3 * DEADLINE,
                   backoff=Backoff(0.05, 0.3))
        c = Collector(s, 30)
        server.ingest(m1.batch(10))
        c.wait(10)
        wait_for(lambda: server.health()["subscribers"].get("longpoll", 0) == 1, "a held poll")
        assert proxy.drop() >= 1
        server.ingest(m1.batch(10))
        c.wait(20)
        restart(server)
        proxy.target_port = server.port
        server.ingest(m1.batch(10))
        c.join()
    finally:
        proxy.close()
    assert seqs(c.events) == expected(m1, 1, 30)
    assert len({e["id"] for e in c.events}) == 30


def test_blocking_stream_resumes_from_saved_cursor(server):
    """A script that stopped after 5 events and saved ``cursor`` continues with event 6 in a new
    Stream: nothing lost, nothing repeated; filters are applied by the server."""
    m1 = Master()
    server.ingest([m1.event(builder="linux" if i % 2 else "mac") for i in range(20)])
    first = stream(server.url, since="earliest", builder="linux", stop_after=DEADLINE)
    got = [next(first) for _ in range(5)]
    saved = first.cursor
    assert saved == got[-1]["id"]
    rest = stream(server.url, since=saved, builder="linux", stop_after=DEADLINE)
    more = [next(rest) for _ in range(5)]
    assert [e["seq"] for e in got + more] == list(range(2, 21, 2))


def test_blocking_stream_errors_are_clear(server):
    """A bad filter is refused before any request; a cursor the server rejects raises
    RequestError; an unreachable server raises Unavailable with fail_fast."""
    with pytest.raises(RequestError) as bad:
        stream(server.url, colour="red")
    assert bad.value.code == "bad_filter"
    ahead = server.health()["cursor"].split(":")[0] + ":999"
    with pytest.raises(RequestError) as cursor:
        next(stream(server.url, since=ahead))
    assert cursor.value.code == "bad_cursor"
    with pytest.raises(Unavailable):
        next(stream(f"http://127.0.0.1:{free_port()}", fail_fast=True))


def test_blocking_stream_surfaces_epoch_gap(server):
    """A cursor from another journal is not silence: a Gap comes first, then the events."""
    m1 = Master()
    server.ingest(m1.batch(3))
    s = stream(server.url, since="otherepoch:5", stop_after=DEADLINE)
    items = [next(s) for _ in range(4)]
    assert isinstance(items[0], Gap) and items[0].reason == "epoch" and items[0].lost
    assert seqs(items[1:]) == expected(m1, 1, 3)


def test_query_helper_and_snapshot_cursor(server):
    """query() answers from /api/ with a cursor; streaming from that cursor gives exactly the
    events that came after the snapshot."""
    m1 = Master()
    server.ingest([m1.event("build.finished", result="success", results=0) for _ in range(3)])
    snapshot = query(server.url, "builds", builder="linux")
    assert "cursor" in snapshot
    server.ingest([m1.event("build.finished", result="failure", results=2)])
    after = stream(server.url, since=snapshot["cursor"], stop_after=DEADLINE)
    assert next(after)["seq"] == 4
    with pytest.raises(RequestError):
        query(server.url, "builds", colour="red")


TWISTED_SCRIPT = r"""
import json, sys
from twisted.internet import reactor
from firehose.client import Backoff, FirehoseClient

def on_event(ev):
    print(json.dumps({"seq": ev["seq"], "id": ev["id"]}), flush=True)

client = FirehoseClient(sys.argv[1], since=sys.argv[2], on_event=on_event, reactor=reactor,
                        backoff=Backoff(0.05, 0.3), builder="linux")
client.start()
client.done.addBoth(lambda r: (print(json.dumps({"done": str(r)}), flush=True), reactor.stop()))
reactor.run()
"""


def twisted_client(url: str, since: str) -> Lines:
    """TWISTED_SCRIPT in its own process against ``url`` from ``since``; its stdout lines."""
    return Lines(subprocess.Popen([sys.executable, "-c", TWISTED_SCRIPT, url, since],
                                  stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL))


def test_twisted_client_survives_drop_and_restart(start_server):
    """The Twisted client (WebSocket) in a real reactor receives every matching event exactly
    once, in order, across a cut connection and a server restart."""
    server = start_server()
    proxy = TCPProxy(server.port)
    m1 = Master()
    lines = twisted_client(proxy.url, "earliest")
    try:
        server.ingest(m1.batch(10) + m1.batch(5, builder="mac"))
        first = lines.take(10)
        server.wait_subscribers("websocket", 1)
        proxy.drop()
        server.ingest(m1.batch(10))
        second = lines.take(10)
        server.wait_subscribers("websocket", 1)
        restart(server)
        proxy.target_port = server.port
        server.ingest(m1.batch(10))
        third = lines.take(10)
        server.wait_subscribers("websocket", 1)
    finally:
        lines.stop()
        proxy.close()
    got = [json.loads(x)["seq"] for x in first + second + third]
    assert got == list(range(1, 11)) + list(range(16, 36))
    assert proxy.accepted >= 3  # it really reconnected twice


def test_twisted_client_reports_bad_cursor_and_stops(server):
    """A cursor the server refuses (ahead of its stream) ends the Twisted client with a
    RequestError instead of reconnecting forever; a malformed one is refused before connecting."""
    ahead = server.health()["cursor"].split(":")[0] + ":999"
    lines = twisted_client(server.url, ahead)
    proc = lines.proc
    try:
        done = lines.next()
        assert "bad_cursor" in done and "ahead" in done, done
        assert proc.wait(DEADLINE) == 0
    finally:
        lines.stop()
    from firehose.client import FirehoseClient

    with pytest.raises(RequestError):
        FirehoseClient("http://127.0.0.1:1", since="not-a-cursor")
