"""A restarted server keeps its events, its epoch and its cursors; other journals' cursors gap."""

from __future__ import annotations

import json

import pytest

from .conftest import Master, Poller, SSEClient, WSClient, http_get, ids, offset, poll, seqs, wait_for

pytestmark = pytest.mark.slow


def test_restart_keeps_events_cursors_and_dedup_state(start_server, tmp_path, clients):
    """Ingest 30 events, stop the server with SIGTERM (while subscribers are connected), start a
    new process on the same database: the epoch and head are unchanged, resuming from an old
    cursor on every transport yields exactly the later events with their old ids, new events
    continue the offsets, and a batch acknowledged before the restart, sent again, is counted
    as duplicates and not published a second time."""
    db = tmp_path / "kept.sqlite"
    first = start_server(db=db)
    m1 = Master()
    batches = [m1.batch(10, type="build.updated") for _ in range(3)]
    for b in batches:
        first.ingest(b)
    before = Poller(first.url, "earliest").events(30)
    health = first.health()
    ws = WSClient(first.ws_url)
    clients.append(ws)
    ws.subscribe()
    sse = SSEClient(first.url)
    clients.append(sse)
    first.wait_subscribers("sse", 1)
    assert first.stop() == 0, first.log()

    second = start_server(db=db)
    after = second.health()
    assert after["epoch"] == health["epoch"]
    assert after["cursor"] == health["cursor"] == before[-1]["id"]
    assert after["earliest"] == health["earliest"]
    assert after["masters"] == {"m1": {"incarnation": m1.incarnation, "last_seq": 30}}

    old = before[9]["id"]
    ws = WSClient(second.ws_url)
    clients.append(ws)
    ws.subscribe({}, old)
    sse = SSEClient(second.url, headers={"Last-Event-ID": old})
    clients.append(sse)
    poller = Poller(second.url, old)
    assert ws.events(20) == before[10:]
    assert sse.events(20) == before[10:]
    assert poller.events(20) == before[10:]

    new = m1.batch(10)
    answer = second.ingest(new)
    assert answer == {"accepted": 10, "duplicates": 0, "cursor": f"{after['epoch']}:{offset(old) + 30}"}
    got = ws.events(10)
    assert seqs(got) == seqs(new)
    assert [offset(i) for i in ids(got)] == list(range(offset(before[-1]["id"]) + 1, offset(before[-1]["id"]) + 11))
    assert sse.events(10) == got

    # Re-sent after the restart: a batch acknowledged before it, then one half old, half new.
    answer = second.ingest(batches[2])
    assert (answer["accepted"], answer["duplicates"]) == (0, 10)
    assert answer["cursor"] == got[-1]["id"]
    overlap = new[5:] + m1.batch(5)
    answer = second.ingest(overlap)
    assert (answer["accepted"], answer["duplicates"]) == (5, 5)
    tail = ws.events(5)
    assert seqs(tail) == seqs(overlap[5:])
    assert sse.events(5) == tail
    ws.assert_nothing_more()
    assert poller.events(15) == got + tail
    poller.assert_nothing_more()
    assert second.metric("firehose_events_duplicate_total", master="m1") == 15


def test_cursor_of_another_journal_gets_an_epoch_gap(start_server, clients):
    """A cursor made by another journal (another epoch) is never silently reinterpreted: every
    transport first says ``gap`` with reason ``epoch``, naming the cursor to resume from and the
    earliest one, then delivers this journal's events from its start."""
    a, b = start_server(), start_server()
    ma, mb = Master("m1", "a"), Master("m1", "b")
    a.ingest(ma.batch(5))
    foreign = poll(a.url, "earliest")["events"][2]["id"]
    b.ingest(mb.batch(4))
    epoch_b = b.health()["epoch"]
    assert epoch_b != a.health()["epoch"]
    want_gap = {"type": "gap", "reason": "epoch", "since": foreign,
                "cursor": f"{epoch_b}:0", "earliest": f"{epoch_b}:0"}

    ws = WSClient(b.ws_url)
    clients.append(ws)
    ws.subscribe({}, foreign)
    assert ws.recv() == want_gap
    by_ws = ws.events(4)
    assert seqs(by_ws) == [("m1", "b", s) for s in range(1, 5)]

    sse = SSEClient(b.url, headers={"Last-Event-ID": foreign})
    clients.append(sse)
    assert sse.events(4) == by_ws
    assert sse.gaps == [want_gap]

    answer = poll(b.url, foreign)
    assert answer == {"events": [], "gap": want_gap, "cursor": want_gap["cursor"], "more": True, "head": answer["head"]}
    assert poll(b.url, answer["cursor"])["events"] == by_ws


def test_cursor_ahead_of_the_stream_is_rejected(server, clients):
    """A cursor of this epoch beyond the newest event is an error (400 ``bad_cursor`` on /sse and
    /poll, an ``error`` message on /ws), not a silent wait; so is a string that is no cursor."""
    epoch = server.health()["epoch"]
    for bad in (f"{epoch}:99", "not-a-cursor"):
        for path in ("/sse", "/poll"):
            status, body = http_get(f"{server.url}{path}?since={bad}")
            assert status == 400, (path, bad, body)
            assert json.loads(body)["error"] == "bad_cursor", (path, bad, body)
        ws = WSClient(server.ws_url)
        clients.append(ws)
        ws.send({"cmd": "subscribe", "filter": {}, "since": bad})
        reply = ws.recv()
        assert (reply["type"], reply["error"]) == ("error", "bad_cursor"), reply


def test_acknowledged_events_survive_a_kill(start_server, tmp_path):
    """A 200 from /ingest means durable: events acknowledged just before the process is killed
    with SIGKILL (no clean shutdown) are all there, with the same ids, after a restart."""
    db = tmp_path / "killed.sqlite"
    first = start_server(db=db)
    m1 = Master()
    last = None
    for _ in range(5):
        last = first.ingest(m1.batch(20))["cursor"]
    first.kill()
    second = start_server(db=db)
    assert second.health()["cursor"] == last
    events = Poller(second.url, "earliest").events(100)
    assert seqs(events) == [("m1", m1.incarnation, s) for s in range(1, 101)]
    assert events[-1]["id"] == last


def test_cursor_older_than_retention_gets_an_expired_gap(start_server, tmp_path, clients):
    """With --retention-events 5, a restart applies retention: a cursor pointing before the
    oldest retained event is answered on every transport with a ``gap`` of reason ``expired``
    naming the earliest cursor, followed by the retained events; nothing is silently skipped."""
    db = tmp_path / "retained.sqlite"
    first = start_server("--retention-events", "5", db=db)
    m1 = Master()
    first.ingest(m1.batch(20))
    old = poll(first.url, "earliest", limit=3)["events"][2]["id"]
    assert first.stop() == 0
    second = start_server("--retention-events", "5", db=db)
    epoch = second.health()["epoch"]
    wait_for(lambda: second.health()["earliest"] == f"{epoch}:15", "retention to apply at start")
    want_gap = {"type": "gap", "reason": "expired", "since": old,
                "cursor": f"{epoch}:15", "earliest": f"{epoch}:15"}
    want = [("m1", m1.incarnation, s) for s in range(16, 21)]

    ws = WSClient(second.ws_url)
    clients.append(ws)
    ws.subscribe({}, old)
    assert ws.recv() == want_gap
    assert seqs(ws.events(5)) == want
    sse = SSEClient(second.url, f"since={old}")
    clients.append(sse)
    assert seqs(sse.events(5)) == want
    assert sse.gaps == [want_gap]
    answer = poll(second.url, old)
    assert answer == {"events": [], "gap": want_gap, "cursor": want_gap["cursor"], "more": True, "head": answer["head"]}
    assert seqs(poll(second.url, answer["cursor"])["events"]) == want
