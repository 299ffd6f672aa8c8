"""Resume by cursor: a client that comes back with its last id misses nothing, sees nothing twice."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from .conftest import DEADLINE, HOST, Master, Poller, SSEClient, WSClient, ids, offset, poll, seqs

pytestmark = pytest.mark.slow


def expected(master: Master, first: int, last: int) -> list[tuple[str, str, int]]:
    return [(master.name, master.incarnation, s) for s in range(first, last + 1)]


def test_websocket_resume_with_since(server, clients):
    """A WebSocket client reads 10 of 20 events, disconnects; 15 more are ingested; it
    subscribes again with since=<last id read> and gets exactly events 11..35."""
    m1 = Master()
    ws = WSClient(server.ws_url)
    clients.append(ws)
    ws.subscribe()
    server.ingest(m1.batch(5))
    server.ingest(m1.batch(15))
    first = ws.events(10)
    ws.close()
    server.ingest(m1.batch(15))

    ws = WSClient(server.ws_url)
    clients.append(ws)
    ack = ws.subscribe({}, first[-1]["id"])
    assert offset(ack["cursor"]) == offset(first[-1]["id"]) + 25  # the head when it subscribed
    rest = ws.events(25)
    assert seqs(first) == expected(m1, 1, 10)
    assert seqs(rest) == expected(m1, 11, 35)
    ws.assert_nothing_more()
    assert ws.control == []


@pytest.mark.parametrize("how", ["last-event-id", "since"])
def test_sse_resume(how, server, clients):
    """An SSE reader reads 10 of 20 events, disconnects; 15 more are ingested; it reconnects
    with its last id (as a browser does, in Last-Event-ID; or as ?since=) and gets exactly
    events 11..35 and then the live ones."""
    m1 = Master()
    sse = SSEClient(server.url)
    clients.append(sse)
    server.ingest(m1.batch(20))
    first = sse.events(10)
    sse.close()
    server.wait_subscribers("sse", 0)
    server.ingest(m1.batch(15))

    last = first[-1]["id"]
    if how == "last-event-id":
        sse = SSEClient(server.url, headers={"Last-Event-ID": last})
    else:
        sse = SSEClient(server.url, f"since={last}")
    clients.append(sse)
    replayed = sse.events(25)
    server.ingest(m1.batch(5))
    live = sse.events(5)
    assert seqs(first) == expected(m1, 1, 10)
    assert seqs(replayed + live) == expected(m1, 11, 40)
    assert sse.gaps == []


def test_longpoll_resume_from_last_event_id(server):
    """A long-poll client that stopped after a partial answer (limit=7) resumes with the id of
    the last event it processed and gets exactly the rest, including events ingested meanwhile;
    the cursor of an answer with events is the id of its last event."""
    m1 = Master()
    start = server.health()["cursor"]
    server.ingest(m1.batch(20))
    page = poll(server.url, start, limit=7)
    assert seqs(page["events"]) == expected(m1, 1, 7)
    assert page["cursor"] == page["events"][-1]["id"]
    server.ingest(m1.batch(15))
    poller = Poller(server.url, page["events"][-1]["id"])
    rest = poller.events(28)
    assert seqs(rest) == expected(m1, 8, 35)
    poller.assert_nothing_more()


def test_longpoll_timeout_zero_answers_with_the_events_available(server):
    """GET /poll?timeout=0 answers at once with the events that follow ``since`` (here: all 5,
    which the journal holds) - it must not answer empty merely because the journal read that
    fetches them has not completed when the zero-second timer fires."""
    m1 = Master()
    start = server.health()["cursor"]
    server.ingest(m1.batch(5))
    for since in (start, "earliest"):
        answer = poll(server.url, since, timeout=0)
        assert seqs(answer["events"]) == expected(m1, 1, 5), answer
        assert answer["cursor"] == answer["events"][-1]["id"]


def test_abandoned_long_poll_is_cleaned_up(server):
    """A long-poll request held by the server (nothing to answer yet) ends its subscription as
    soon as the client closes the connection."""
    head = server.health()["cursor"]
    sock = socket.create_connection((HOST, server.port), timeout=DEADLINE)
    try:
        sock.sendall(f"GET /poll?since={head}&timeout=120 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        server.wait_subscribers("longpoll", 1)
    finally:
        sock.close()
    server.wait_subscribers("longpoll", 0)


class Reconnecting:
    """A subscriber that reads ``chunk`` events per connection, then reconnects with its last id."""

    def __init__(self, open_client: Any, since: str, chunk: int) -> None:
        self.open_client = open_client
        self.since = since
        self.chunk = chunk
        self.connections = 0

    def read(self, total: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _ in range(total // self.chunk + 2):
            if len(out) >= total:
                break
            client = self.open_client(self.since)
            self.connections += 1
            try:
                got = client.events(min(self.chunk, total - len(out)))
            finally:
                client.close()
            out += got
            self.since = got[-1]["id"]
        return out


def test_resume_while_ingest_is_running(server):
    """Readers on each transport reconnect every few dozen events, from their last id, while a
    master keeps ingesting (the resume lands on the seam between journal replay and live
    delivery, again and again): together they see every event after their starting cursor
    exactly once and in order."""
    m1 = Master()
    for _ in range(6):
        server.ingest(m1.batch(200))  # a backlog longer than one replay page (500)
    since = server.health()["cursor"]
    backlog = m1.seq
    server.ingest(m1.batch(200))

    def open_ws(since: str) -> WSClient:
        ws = WSClient(server.ws_url)
        ws.subscribe({}, since)
        return ws

    readers = {
        "ws": Reconnecting(open_ws, since, 97),
        "sse": Reconnecting(lambda s: SSEClient(server.url, headers={"Last-Event-ID": s}), since, 89),
    }
    total = 200 + 60 * 10
    results: dict[str, list[dict[str, Any]]] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            results[name] = readers[name].read(total)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,), daemon=True) for name in readers]
    for t in threads:
        t.start()
    poller = Poller(server.url, since, limit=50)
    polled: list[dict[str, Any]] = []
    for _ in range(60):
        server.ingest(m1.batch(10))
        polled += poller.events(1) if len(polled) < total else []
    polled += poller.events(total - len(polled)) if len(polled) < total else []
    for t in threads:
        t.join(DEADLINE * 3)
        assert not t.is_alive(), "a reader did not finish"
    assert not errors, errors
    want = expected(m1, backlog + 1, backlog + total)
    for name, got in results.items():
        assert seqs(got) == want, name
        assert readers[name].connections >= total // readers[name].chunk
    assert seqs(polled) == want
    assert ids(results["ws"]) == ids(results["sse"]) == ids(polled)
    poller.assert_nothing_more()


def test_longpoll_loop_racing_ingest_sees_every_event_once(server):
    """Long-poll clients that always pass the previous answer's cursor, polling while two
    masters ingest one event per request: every event arrives exactly once and in each
    master's order, every answer's cursor is the id of its last event, and the server accepts
    every cursor it handed out."""
    masters = [Master("m1"), Master("m2")]
    per_master = 400
    total = per_master * len(masters)
    start = server.health()["cursor"]
    errors: list[BaseException] = []

    def produce(master: Master) -> None:
        try:
            for _ in range(per_master):
                server.ingest([master.event()])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def consume(limit: int) -> tuple[list[dict[str, Any]], list[Any]]:
        cursor, got, answers = start, [], []
        for _ in range(total * 2):
            if len(got) >= total or errors:
                break
            answer = poll(server.url, cursor, limit=limit)
            answers.append((cursor, ids(answer["events"]), answer["cursor"]))
            got += answer["events"]
            cursor = answer["cursor"]
        return got, answers

    producers = [threading.Thread(target=produce, args=(m,), daemon=True) for m in masters]
    with ThreadPoolExecutor(2) as pool:
        consumers = [pool.submit(consume, limit) for limit in (2, 3)]
        for t in producers:
            t.start()
        results = [c.result(timeout=DEADLINE * 4) for c in consumers]
    for t in producers:
        t.join(DEADLINE * 3)
    assert not errors, errors
    for got, answers in results:
        behind = [a for a in answers if a[1] and a[2] != a[1][-1]]
        assert not behind, f"answers whose cursor is not their last event's id (since, ids, cursor): {behind[:5]}"
        assert len(set(ids(got))) == len(got), "an event was delivered twice"
        assert ids(got) == sorted(ids(got), key=offset)
        for m in masters:
            assert [s for s in seqs(got) if s[0] == m.name] == expected(m, 1, per_master)


def test_longpoll_timeout_zero_loop_racing_ingest_misses_nothing(server):
    """A client polling with timeout=0 (never hold, answer with what is there) in a loop while a
    master ingests one event per request still receives every event exactly once: an empty
    answer never moves the cursor past events the client was not given."""
    m1 = Master()
    total = 300
    start = server.health()["cursor"]
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for _ in range(total):
                server.ingest([m1.event()])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    cursor, got, skips = start, [], []
    end = time.monotonic() + DEADLINE
    after_producer = 0  # polls made once every event is in: a few must be enough to catch up
    for _ in range(100_000):
        if offset(cursor) >= offset(start) + total or errors or time.monotonic() > end:
            break
        if not producer.is_alive():
            after_producer += 1
            if after_producer > 50:
                break
        answer = poll(server.url, cursor, timeout=0, limit=100)
        if not answer["events"] and answer["cursor"] != cursor:
            skips.append((cursor, answer["cursor"]))
        got += answer["events"]
        cursor = answer["cursor"]
    producer.join(DEADLINE * 3)
    assert not errors, errors
    assert not skips, f"empty answers that moved the cursor (since, cursor): {skips[:5]} ({len(skips)} in all)"
    assert seqs(got) == expected(m1, 1, total)
