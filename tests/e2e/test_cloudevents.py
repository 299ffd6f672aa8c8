"""``format=cloudevents`` against a real ``firehose serve``: what /sse, /poll and /ws deliver is
parsed by the CloudEvents SDK (2.x core API) with the attributes docs/protocol.md promises, and a
consumer resumes from a CloudEvent's ``id``."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from cloudevents.core.formats.json import JSONFormat

from firehose.schema import SCHEMA_VERSION

from .conftest import DEADLINE, Master, SSEClient, WSClient, http_get, poll

pytestmark = pytest.mark.slow

TYPES = ["request.submitted", "build.started", "step.started", "step.finished", "build.finished",
         "worker.connected", "change.new"]


def parse(raw: str | bytes) -> Any:
    """The CloudEvents SDK's reading of what the server sent (raises unless it is a valid one)."""
    return JSONFormat().read(None, raw)


def ingest(server: Any, master: Master, types: list[str]) -> None:
    server.ingest([master.event(type=t, builder="linux-build") for t in types])


def reference(server: Any) -> list[dict[str, Any]]:
    """Every event in the firehose format, to check the CloudEvents against."""
    return poll(server.url, "earliest", timeout=0, limit=1000)["events"]


def check(ces: list[Any], events: list[dict[str, Any]]) -> None:
    """Each CloudEvent is its firehose event, attribute by attribute, and ``sequence`` is in
    stream order as strings."""
    assert [c.get_id() for c in ces] == [e["id"] for e in events]
    for ce, ev in zip(ces, events, strict=True):
        entity = ev["type"].partition(".")[0]
        epoch, _, offset = ev["id"].partition(":")
        assert ce.get_specversion() == "1.0"
        assert ce.get_source() == f"urn:firehose:master:{ev['master']}"
        assert ce.get_type() == f"org.buildbot.firehose.{ev['type']}.v1"
        assert ce.get_time() == datetime.datetime.fromtimestamp(ev["time"], datetime.UTC)
        assert ce.get_datacontenttype() == "application/json"
        assert ce.get_dataschema() == f"urn:firehose:schema:{SCHEMA_VERSION}:{entity}"
        assert ce.get_data() == ev["data"]
        assert ce.get_extension("sequence") == f"{int(offset):020d}"
        assert ce.get_extension("firehoseepoch") == epoch
        assert ce.get_extension("firehosemaster") == ev["master"]
        assert ce.get_extension("firehoseincarnation") == ev["incarnation"]
        assert ce.get_extension("firehoseseq") == str(ev["seq"])
        data = ev["data"]
        expected = {
            "request": f"buildrequests/{data.get('buildrequestid')}",
            "build": f"builds/{data.get('buildid')}",
            "step": f"builds/{data.get('buildid')}/steps/{data.get('stepid')}",
            "worker": f"workers/{data.get('worker')}",
            "change": f"changes/{data.get('changeid')}",
        }[entity]
        assert ce.get_subject() == expected
    sequences = [c.get_extension("sequence") for c in ces]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)


def sse_cloudevents(sse: SSEClient, n: int) -> list[Any]:
    """``n`` SSE messages, each checked for ``id:`` = the CloudEvent's id and ``event:`` = the
    firehose type its CloudEvent ``type`` carries."""
    out = []
    for _ in range(n):
        msg = sse.next_message()
        assert msg is not None, "SSE stream ended"
        ce = parse(msg["data"])
        assert msg["id"] == ce.get_id()
        assert ce.get_type() == f"org.buildbot.firehose.{msg['event']}.v1"
        out.append(ce)
    return out


def ws_cloudevents(ws: WSClient, n: int) -> list[Any]:
    """``n`` WebSocket messages, raw, through the SDK (nothing else may come in between)."""
    return [parse(ws.conn.recv(timeout=DEADLINE)) for _ in range(n)]


def test_every_transport_delivers_cloudevents_the_sdk_reads(server, clients):
    """History then live events, from two masters, over /sse, /poll and /ws with
    format=cloudevents: every one is a valid CloudEvent matching its firehose event."""
    m1, m2 = Master("m1"), Master("m2")
    ingest(server, m1, TYPES)
    ingest(server, m2, TYPES[:3])

    sse = SSEClient(server.url, "format=cloudevents&since=earliest")
    clients.append(sse)
    assert sse.status == 200
    ws = WSClient(server.ws_url)
    clients.append(ws)
    ws.send({"cmd": "subscribe", "since": "earliest", "format": "cloudevents"})
    ack = ws.recv()
    assert (ack["type"], ack["format"]) == ("subscribed", "cloudevents")
    first = 10
    sse_ces = sse_cloudevents(sse, first)
    ws_ces = ws_cloudevents(ws, first)

    ingest(server, m1, TYPES[1:5])  # live, while both are subscribed
    sse_ces += sse_cloudevents(sse, 4)
    ws_ces += ws_cloudevents(ws, 4)
    events = reference(server)
    assert len(events) == 14
    answer = poll(server.url, "earliest", timeout=0, format="cloudevents", limit=1000)
    poll_ces = [parse(json.dumps(e)) for e in answer["events"]]
    assert answer["cursor"] == events[-1]["id"]
    for ces in (sse_ces, ws_ces, poll_ces):
        check(ces, events)


def test_a_consumer_resumes_from_a_cloudevents_id(server, clients):
    """The id of the last CloudEvent read resumes each transport right after it: Last-Event-ID
    on /sse, since= on /poll and in the WebSocket subscribe, in CloudEvents again."""
    ingest(server, Master("m1"), TYPES)
    events = reference(server)
    resume = parse(json.dumps(poll(server.url, "earliest", timeout=0, limit=3, format="cloudevents")
                              ["events"][-1])).get_id()
    assert resume == events[2]["id"]
    rest = events[3:]

    sse = SSEClient(server.url, "format=cloudevents", headers={"Last-Event-ID": resume})
    clients.append(sse)
    check(sse_cloudevents(sse, len(rest)), rest)

    answer = poll(server.url, resume, timeout=0, format="cloudevents")
    check([parse(json.dumps(e)) for e in answer["events"]], rest)

    ws = WSClient(server.ws_url)
    clients.append(ws)
    ws.send({"cmd": "subscribe", "since": resume, "format": "cloudevents"})
    assert ws.recv()["type"] == "subscribed"
    check(ws_cloudevents(ws, len(rest)), rest)


def test_the_firehose_format_and_bad_formats(server, clients):
    """Without ``format`` (or with ``format=firehose``) the envelope is today's; any other
    value is a 400 ``bad_request`` on /sse and /poll, and an error on /ws, naming the values."""
    ingest(server, Master("m1"), TYPES[:2])
    events = reference(server)
    assert poll(server.url, "earliest", timeout=0, format="firehose")["events"] == events
    sse = SSEClient(server.url, "since=earliest&format=firehose")
    clients.append(sse)
    assert sse.events(2) == events
    for path in ("/sse?format=CloudEvents", "/poll?format=cdevents&timeout=0"):
        status, body = http_get(server.url + path)
        error = json.loads(body)
        assert (status, error["error"]) == (400, "bad_request"), path
        assert "firehose, cloudevents" in error["message"]
    ws = WSClient(server.ws_url)
    clients.append(ws)
    ws.send({"cmd": "subscribe", "format": "xml"})
    error = ws.recv()
    assert (error["type"], error["error"]) == ("error", "bad_command")
    assert "firehose, cloudevents" in error["message"]
