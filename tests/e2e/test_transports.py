"""The three subscriber transports deliver one and the same stream."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import Master, Poller, SSEClient, WSClient, ids, offset, poll, seqs

pytestmark = pytest.mark.slow

TYPES = ["build.started", "step.started", "step.finished", "log.lines", "build.finished", "change.new"]


def test_websocket_sse_and_longpoll_receive_the_same_events_in_the_same_order(server, clients):
    """A `websockets` client, an SSE reader and a long-poll loop, all subscribed before the
    ingest starts, receive the same 50 events (ingested in several batches from two masters)
    in ingest order, with the same ids; ids increase and every event has the public fields."""
    start = server.health()["cursor"]
    ws = WSClient(server.ws_url)
    clients.append(ws)
    ack = ws.subscribe({}, None)
    assert ack["cursor"] == start
    assert ack["filter"] == {}
    sse = SSEClient(server.url)
    clients.append(sse)
    assert sse.status == 200
    assert sse.content_type.startswith("text/event-stream")
    poller = Poller(server.url, start)

    m1, m2 = Master("m1"), Master("m2")
    sent = []
    with ThreadPoolExecutor(1) as pool:
        polled = pool.submit(poller.events, 50)  # long-polls while the batches arrive
        for i, size in enumerate([1, 7, 12, 5, 25]):
            master = m1 if i % 2 == 0 else m2
            batch = [master.event(type=TYPES[(len(sent) + j) % len(TYPES)], builder=f"b{j % 3}")
                     for j in range(size)]
            answer = server.ingest(batch)
            assert answer["accepted"] == size and answer["duplicates"] == 0
            sent.extend(batch)
            assert offset(answer["cursor"]) == offset(start) + len(sent)
        by_poll = polled.result()

    by_ws = ws.events(50)
    by_sse = sse.events(50)
    assert len(sent) == 50
    assert seqs(by_ws) == seqs(sent)
    assert ids(by_sse) == ids(by_ws)
    assert ids(by_poll) == ids(by_ws)
    assert by_sse == by_ws == by_poll
    offsets = [offset(i) for i in ids(by_ws)]
    assert offsets == list(range(offset(start) + 1, offset(start) + 51))
    for got, want in zip(by_ws, sent, strict=True):
        assert {"id", "type", "master", "time", "data"} <= set(got)
        assert (got["type"], got["master"], got["time"], got["data"]) == (
            want["type"], want["master"], want["time"], want["data"])
    ws.assert_nothing_more()
    poller.assert_nothing_more()
    assert ws.control == [] and sse.gaps == [] and poller.gaps == []


def test_replay_from_earliest_matches_live_delivery(server, clients):
    """Subscribing with since=earliest after the fact yields exactly what live subscribers got,
    on all three transports."""
    ws_live = WSClient(server.ws_url)
    clients.append(ws_live)
    ws_live.subscribe()
    m1 = Master("m1")
    for _ in range(4):
        server.ingest(m1.batch(10, type="build.updated"))
    live = ws_live.events(40)

    ws = WSClient(server.ws_url)
    clients.append(ws)
    ws.subscribe({}, "earliest")
    sse = SSEClient(server.url, "since=earliest")
    clients.append(sse)
    poller = Poller(server.url, "earliest", limit=7)
    assert ws.events(40) == live
    assert sse.events(40) == live
    assert poller.events(40) == live
    assert poller.requests >= 6  # limit=7 paged the answer
    ws.assert_nothing_more()
    poller.assert_nothing_more()


def test_websocket_commands(server, clients):
    """Over /ws: ``ping`` answers ``pong`` with the head cursor; ``unsubscribe`` stops delivery
    (``unsubscribed``); a new ``subscribe`` replaces the previous one on the same socket (its
    filter applies from then on); a non-JSON or unknown command gets an ``error`` message and
    the socket stays usable."""
    ws = WSClient(server.ws_url)
    clients.append(ws)
    m1 = Master()
    ws.send({"cmd": "ping"})
    assert ws.recv() == {"type": "pong", "cursor": server.health()["cursor"]}
    ws.conn.send("{not json")
    assert ws.recv()["error"] == "malformed_json"
    ws.send({"cmd": "dance"})
    assert ws.recv()["error"] == "bad_command"
    ws.conn.send("[1, 2]")
    assert ws.recv()["error"] == "bad_command"

    ws.subscribe({"builder": "linux"})
    server.ingest([m1.event(builder="linux"), m1.event(builder="mac")])
    assert seqs(ws.events(1)) == [("m1", m1.incarnation, 1)]
    ws.subscribe({"builder": "mac"})  # replaces the linux subscription
    server.ingest([m1.event(builder="linux"), m1.event(builder="mac")])
    assert seqs(ws.events(1)) == [("m1", m1.incarnation, 4)]
    ws.send({"cmd": "unsubscribe"})
    assert ws.recv() == {"type": "unsubscribed"}
    server.ingest([m1.event(builder="linux"), m1.event(builder="mac")])
    ws.send({"cmd": "ping"})
    pong = ws.recv()
    assert pong["type"] == "pong", "nothing is delivered after unsubscribe"
    assert offset(pong["cursor"]) == m1.seq
    assert server.health()["subscribers"].get("websocket", 0) == 0


def test_longpoll_live_answer_respects_limit(server):
    """A long-poll held at the head answers when a batch arrives, with at most ``limit`` events
    and the id of the last one as cursor; the following polls get the rest of the batch."""
    m1 = Master()
    head = server.health()["cursor"]
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(poll, server.url, head, 30, limit=4)
        server.wait_subscribers("longpoll", 1)
        server.ingest(m1.batch(10))
        first = held.result()
    assert seqs(first["events"]) == [("m1", m1.incarnation, s) for s in range(1, 5)]
    assert first["cursor"] == first["events"][-1]["id"]
    poller = Poller(server.url, first["cursor"], limit=4)
    rest = poller.events(6)
    assert seqs(rest) == [("m1", m1.incarnation, s) for s in range(5, 11)]
    poller.assert_nothing_more()
