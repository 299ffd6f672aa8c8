"""Server-side filters: one language, the same subset on every transport, clear errors."""

from __future__ import annotations

import itertools
import json
import re
import urllib.parse
from typing import Any

import pytest

from .conftest import Master, Poller, SSEClient, WSClient, http_get, query_string, seqs

pytestmark = pytest.mark.slow

BUILDERS = ["linux-x86", "linux-arm", "mac", "win"]
TYPES = ["build.started", "build.finished", "step.started", "step.finished", "request.submitted"]
OWNERS = ["alice", "bob", "carol"]
RESULTS = ["success", "warnings", "failure"]

#: Every filter below matches the marker event that ends each data set (see ``dataset``), so
#: reading up to the marker's id proves a transport sent nothing it should not have.
FILTERS: dict[str, dict[str, Any]] = {
    "builder-glob": {"builder": "linux*"},
    "type-glob": {"type": "build.*"},
    "type-alternatives": {"type": ["build.finished", "step.started"]},
    "comma-in-one-string": {"builder": "*-x86,mac"},
    "property": {"prop.owner": "alice"},
    "result-name": {"result": "failure"},
    "result-code-or-name": {"result": "warnings,2"},
    "several-fields": {"builder": "linux*", "type": "build.finished", "master": "m1"},
    "property-glob-and-result": {"prop.owner": "al*", "result": "failure"},
}

_counter = itertools.count()


def dataset() -> list[dict[str, Any]]:
    """A mix of masters, builders, types, properties and results, ending with a marker event
    that every filter in FILTERS matches.  Each call uses new incarnations (never duplicates)."""
    n = next(_counter)
    m1, m2 = Master("m1", f"f{n}"), Master("m2", f"f{n}")
    events = []
    for i in range(40):
        type_ = TYPES[i % len(TYPES)]
        data: dict[str, Any] = {"properties": {"owner": OWNERS[i % 3]}, "branch": "main"}
        if type_.endswith("finished"):
            data.update(results=i % 3, result=RESULTS[i % 3])
        master = m2 if i % 3 == 0 else m1
        events.append(master.event(type=type_, builder=BUILDERS[(i // 2) % 4], **data))
    events.append(m1.event(type="build.finished", builder="linux-x86", results=2, result="failure",
                           properties={"owner": "alice"}))
    return events


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(map(re.escape, pattern.split("*"))) + r"\Z")


def matches(flt: dict[str, Any], event: dict[str, Any]) -> bool:
    """The documented filter semantics, written independently of the server's code."""
    for field, spec in flt.items():
        patterns = [p.strip() for v in ([spec] if isinstance(spec, str) else spec) for p in v.split(",")]
        data = event["data"]
        if field in ("type", "master"):
            values = [event[field]]
        elif field.startswith("prop."):
            values = [data.get("properties", {}).get(field[5:])]
        elif field == "result":
            values = [data.get("result"), str(data["results"]) if "results" in data else None]
        else:
            values = [data.get(field)]
        values = [v for v in values if v is not None]
        if not any(_glob(p).match(v) for p in patterns for v in values):
            return False
    return True


def normalised(flt: dict[str, Any]) -> dict[str, list[str]]:
    return {k: [p for v in ([s] if isinstance(s, str) else s) for p in v.split(",")] for k, s in flt.items()}


@pytest.fixture(scope="module")
def history(module_server) -> tuple[list[dict[str, Any]], str]:
    """A data set ingested before any filtered subscription exists, and its marker's id."""
    events = dataset()
    answer = module_server.ingest_all(events)
    return events, answer["cursor"]


@pytest.mark.parametrize("flt", FILTERS.values(), ids=FILTERS.keys())
def test_filter_yields_the_same_subset_on_every_transport(flt, module_server, history, clients):
    """One filter (JSON over WebSocket, query string on SSE and long-poll) selects exactly the
    matching events, in order, on all three transports: both when replaying history
    (since=earliest) and when delivering live events."""
    server = module_server
    events, marker_id = history
    assert 0 < sum(matches(flt, e) for e in events) < len(events), "the filter must select"
    qs = query_string(flt)

    # Replay: everything up to the first data set's marker (later tests ingested more after it).
    want = [e for e in events if matches(flt, e)]
    ws = WSClient(server.ws_url)
    clients.append(ws)
    ack = ws.subscribe(flt, "earliest")
    assert ack["filter"] == normalised(flt)
    sse = SSEClient(server.url, qs + "&since=earliest")
    clients.append(sse)
    assert sse.status == 200
    poller = Poller(server.url, "earliest", **dict(urllib.parse.parse_qsl(qs)))
    by_ws, by_sse, by_poll = ws.until_id(marker_id), sse.until_id(marker_id), poller.until_id(marker_id)
    assert seqs(by_ws) == seqs(want)
    assert by_sse == by_ws
    assert by_poll == by_ws
    ws.close()
    sse.close()

    # Live: subscribed at the head, then a fresh data set arrives.
    ws = WSClient(server.ws_url)
    clients.append(ws)
    ws.subscribe(flt, None)
    sse = SSEClient(server.url, qs)
    clients.append(sse)
    poller = Poller(server.url, server.health()["cursor"], **dict(urllib.parse.parse_qsl(qs)))
    fresh = dataset()
    server.ingest_all(fresh)
    want = [e for e in fresh if matches(flt, e)]
    by_ws, by_sse, by_poll = ws.events(len(want)), sse.events(len(want)), poller.events(len(want))
    assert seqs(by_ws) == seqs(want)
    assert by_sse == by_ws
    assert by_poll == by_ws
    ws.assert_nothing_more()
    poller.assert_nothing_more()


BAD_QUERIES = {
    "unknown-field": ("bogus=1", "bogus"),
    "empty-pattern": ("builder=", "builder"),
    "empty-alternative": ("builder=linux,,mac", "builder"),
    "bad-property-name": ("prop.=x", "prop."),
    "too-many-patterns": ("type=" + ",".join(f"t{i}" for i in range(65)), "type"),
}


@pytest.mark.parametrize("query,field", BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
def test_malformed_filter_is_a_400_on_sse_and_poll(query, field, module_server):
    """A malformed query-string filter gets HTTP 400 with a JSON body
    ``{"error": "bad_filter", "message": ...}`` naming the field, on /sse and on /poll."""
    for path in ("/sse", "/poll"):
        status, body = http_get(f"{module_server.url}{path}?{query}")
        assert status == 400, (path, status, body)
        err = json.loads(body)
        assert err["error"] == "bad_filter", (path, err)
        assert field in err["message"], (path, err)


BAD_JSON_FILTERS = {
    "unknown-field": {"bogus": "x"},
    "number": {"builder": 5},
    "empty-list": {"builder": []},
    "empty-pattern": {"builder": ""},
    "not-an-object": "builder=linux",
}


def test_malformed_filter_is_an_error_message_on_websocket(module_server, clients):
    """Each malformed filter sent over /ws is answered with
    ``{"type": "error", "error": "bad_filter"}``; the socket stays usable and a valid
    subscription made earlier on it keeps delivering."""
    ws = WSClient(module_server.ws_url)
    clients.append(ws)
    ws.subscribe({"master": "m2"}, None)
    for name, flt in BAD_JSON_FILTERS.items():
        ws.send({"cmd": "subscribe", "filter": flt, "since": None})
        reply = ws.recv()
        assert reply["type"] == "error", (name, reply)
        assert reply["error"] == "bad_filter", (name, reply)
        assert reply.get("message"), (name, reply)
    event = Master("m2", "ws-bad-filter").event()
    module_server.ingest([event])
    got = ws.events(1)
    assert seqs(got) == seqs([event])
    assert ws.control == []
