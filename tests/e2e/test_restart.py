"""A restarted server keeps its events, its epoch and its cursors; other journals' cursors gap."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from .conftest import OPENER, Master, Poller, SSEClient, WSClient, http_get, ids, offset, poll, seqs, wait_for

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


# -- the build state across restarts (checkpoint, warm-up) ----------------------------------------

#: What /api answers that does not depend on the time it is asked (no elapsed/waited).
API_PATHS = ("/api/builders", "/api/builds?limit=500", "/api/running", "/api/queue?limit=500",
             "/api/revisions", "/api/revisions?branch=main&limit=500", "/api/masters", "/api/builds/m1/21")
_CLOCK_FIELDS = {"elapsed", "waited", "oldest_waited"}


def _timeless(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k not in _CLOCK_FIELDS}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def api_answers(server: Any) -> dict[str, Any]:
    out = {}
    for path in API_PATHS:
        status, body = http_get(server.url + path)
        assert status == 200, (path, status, body)
        out[path] = _timeless(json.loads(body))
    return out


def get_with_headers(url: str) -> tuple[int, dict[str, Any], Any]:
    req = urllib.request.Request(url)
    try:
        with OPENER.open(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def builds_history(master: Master, n: int, builders: tuple[str, ...] = ("linux", "mac", "win")) -> list[dict[str, Any]]:
    """Requests, builds with steps, changes and results for ``n`` revisions of main: what the
    state keeps (queue, running and finished builds, the pushlog, step samples, masters)."""
    events = [master.event("master.started", running=[], queued=[])]
    for i in range(1, n + 1):
        rev = f"rev{i:05d}"
        events.append(master.event("change.new", changeid=i, revision=rev, branch="main", author="a"))
        for j, builder in enumerate(builders):
            bid = i * 10 + j
            common = {"builder": builder, "branch": "main", "revision": rev}
            events.append(master.event("request.submitted", buildrequestid=bid, buildsetid=i, **common))
            if i == n and j == 0:
                continue  # the newest revision: one request still queued...
            events.append(master.event("request.claimed", buildrequestid=bid, buildsetid=i, **common))
            events.append(master.event("build.started", buildid=bid, number=i, buildrequestid=bid,
                                       started_at=1_700_000_000 + i, **common))
            events.append(master.event("step.started", buildid=bid, stepid=bid, name="compile", build_number=i,
                                       started_at=1_700_000_000 + i, **common))
            if i == n and j == 1:
                continue  # ...and one build still running
            events.append(master.event("step.finished", buildid=bid, stepid=bid, name="compile", build_number=i,
                                       started_at=1_700_000_000 + i, complete_at=1_700_000_005 + i,
                                       duration=5, result="success", **common))
            result = "failure" if (i + j) % 7 == 0 else "success"
            events.append(master.event("build.finished", buildid=bid, number=i, buildrequestid=bid,
                                       started_at=1_700_000_000 + i, complete_at=1_700_000_010 + i,
                                       result=result, **common))
    return events


def ingest_in_batches(server: Any, events: list[dict[str, Any]], size: int = 1000) -> None:
    for i in range(0, len(events), size):
        server.ingest(events[i:i + size])


def test_clean_restart_answers_from_the_checkpoint(start_server, tmp_path):
    """A clean stop writes the build state's checkpoint next to the journal; the next start
    loads it before it listens, so its very first /api answers are the ones given before the
    stop (nothing rebuilt, nothing warming), and /health says the state came from it."""
    db = tmp_path / "kept.sqlite"
    server = start_server(db=db)
    server.ingest_all(builds_history(Master("m1"), 40))
    before = api_answers(server)
    assert before["/api/running"]["total"] == 1 and before["/api/queue?limit=500"]["total"] == 1
    assert server.stop() == 0, server.log()
    assert "state: checkpoint written to" in server.log()
    assert (tmp_path / "kept.sqlite.state").is_file()

    server.start()
    health = server.health()
    assert health["state"] == {"status": "ready", "cursor": health["cursor"], "source": "checkpoint"}
    assert api_answers(server) == before
    assert "state: loaded the checkpoint" in server.log()


def test_killed_server_warms_up_then_answers_as_before(start_server, tmp_path):
    """Killed (SIGKILL: no checkpoint, none periodic), a server restarted on a large journal
    listens at once and rebuilds its state in the background: /health is 200 and says
    ``warming_up``, /api answers 503 ``warming_up`` with Retry-After and the progress, ingest
    is accepted; then every answer is the one given before the kill, with the events ingested
    during the warm-up counted once."""
    db = tmp_path / "killed.sqlite"
    config = tmp_path / "state.toml"
    config.write_text("[state]\ncheckpoint_interval = 0\nreplay_before_listening = 0\n")
    server = start_server("--config", str(config), db=db)
    m1 = Master("m1")
    ingest_in_batches(server, builds_history(m1, 2500))
    before = api_answers(server)
    head = server.health()["cursor"]
    server.kill()
    assert not (tmp_path / "killed.sqlite.state").exists()

    server.start()
    assert "state: warming up in the background" in server.log()
    health = server.health()
    assert health["status"] == "ok" and health["cursor"] == head
    assert health["state"]["status"] == "warming_up", health
    m2 = Master("m2")
    live = [m2.event("request.submitted", buildrequestid=1, builder="mac")]
    server.ingest(live)

    seen_503 = 0

    def answered() -> bool:
        nonlocal seen_503
        status, body, headers = get_with_headers(server.url + "/api/builders")
        if status == 503:
            assert body["error"] == "warming_up" and "warming up" in body["message"], body
            assert set(body["progress"]) >= {"replayed", "remaining", "percent"}, body
            assert 1 <= int(headers["Retry-After"]) <= 30
            seen_503 += 1
            return False
        assert status == 200, (status, body)
        return True

    wait_for(answered, "the state to warm up", deadline=60)
    assert seen_503 >= 1
    assert server.health()["state"]["status"] == "ready"
    after = api_answers(server)
    queue = after.pop("/api/queue?limit=500")
    want_queue = before.pop("/api/queue?limit=500")
    assert [(r["master"], r["buildrequestid"]) for r in queue["requests"]] == [
        (r["master"], r["buildrequestid"]) for r in want_queue["requests"]] + [("m2", 1)]
    masters = after.pop("/api/masters")
    assert masters["masters"][0] == before.pop("/api/masters")["masters"][0]
    for answer in (after, before):
        for body in answer.values():
            body.pop("cursor", None)
    assert after == before


def test_a_periodic_checkpoint_survives_a_kill(start_server, tmp_path):
    """With --checkpoint-interval 1 a forked child writes the state every second while the
    server runs; killed after one, the server starts from it, replays the events journaled
    after it, and answers as before the kill."""
    db = tmp_path / "periodic.sqlite"
    server = start_server("--checkpoint-interval", "1", db=db)
    m1 = Master("m1")
    history = builds_history(m1, 30)
    server.ingest_all(history[: len(history) // 2])
    wait_for(lambda: "checkpoint written to" in server.log() and "in the background" in server.log(),
             "a background checkpoint")
    written = server.log().count("in the background (offset")
    server.ingest_all(history[len(history) // 2:])
    before = api_answers(server)
    server.kill()
    logged = server.log()

    server.start()
    assert api_answers(server) == before
    new = server.log()[len(logged):]
    assert "state: loaded the checkpoint" in new, new
    assert written >= 1
