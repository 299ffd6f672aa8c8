"""The query API's errors: every error under ``/api`` is the JSON ``{"error", "message"}``
body (unknown paths and methods included), and a stream-only filter field is a 400."""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock

from firehose.hub import Hub
from firehose.ingest import MasterTokens
from firehose.journal import MemoryJournal
from firehose.state import BuildState
from firehose.web import build_site


@pytest.fixture
def client() -> StubTreq:
    journal = MemoryJournal(epoch="e1")
    state = BuildState()
    state.rebuild(journal)
    site = build_site(hub=Hub(journal), journal=journal, clock=Clock(), tokens=MasterTokens({}), state=state)
    return StubTreq(site.resource)


def call(client: StubTreq, path: str, method: str = "GET") -> tuple[int, Any, str]:
    d = client.request(method, "http://firehose.test/api/" + path)
    client.flush()
    response = d.result
    content = response.content()
    client.flush()
    raw = content.result
    ctype = response.headers.getRawHeaders(b"content-type", [b""])[0].decode()
    return response.code, json.loads(raw) if raw else None, ctype


@pytest.mark.parametrize("path", ["nope", "nope/deeper", "queue/extra", "running/1", "masters/m1"])
def test_unknown_paths_are_json_404s(client: StubTreq, path: str) -> None:
    """An unknown ``/api/...`` path (Twisted's HTML 404 page before), or a path below an
    endpoint that takes none, is a JSON 404 ``not_found``; an unknown endpoint's message lists
    the endpoints."""
    code, body, ctype = call(client, path)
    assert (code, body["error"], ctype) == (404, "not_found", "application/json")
    if path.startswith("nope"):
        assert "/api/queue" in body["message"] and "/api/builds" in body["message"]


@pytest.mark.parametrize("path", ["", "builds", "nope"])
def test_other_methods_are_json_errors(client: StubTreq, path: str) -> None:
    """A POST under ``/api`` is a JSON error (405 with Allow, or 404 for an unknown path), not
    Twisted's HTML page."""
    code, body, ctype = call(client, path, "POST")
    assert ctype == "application/json" and body["error"] in ("method_not_allowed", "not_found")
    assert code == (404 if path == "nope" else 405)


@pytest.mark.parametrize("path, field, accepted", [
    ("builds?type=build.finished", "type", "worker, result or prop.<name>"),
    ("running?type=build.started", "type", "prop.<name>"),
    ("queue?prop.owner=alice", "prop.owner", "repository"),
    ("queue?worker=w1", "worker", "builder"),
    ("builders?result=failure", "result", "use builder"),
    ("revisions?branch=main&type=build.*", "type", "use builder"),
    ("masters?builder=linux", "builder", "takes no filter field"),
])
def test_stream_only_filter_fields_are_refused(client: StubTreq, path: str, field: str, accepted: str) -> None:
    """A filter field the endpoint's records do not have (``type=`` on ``/api/builds``: state
    records are no events) is a 400 ``bad_filter`` naming the field and what the endpoint
    accepts, instead of an empty list (or, on ``/api/masters``, being ignored)."""
    code, body, _ = call(client, path)
    assert (code, body["error"]) == (400, "bad_filter")
    assert repr(field) in body["message"] and accepted in body["message"]


def test_the_fields_an_endpoint_has_are_accepted_the_others_refused(client: StubTreq) -> None:
    """The refusal is per endpoint: the fields its records have still filter (200), the same
    field elsewhere is refused (``worker`` on builds, not on the queue)."""
    for path, code in (("builds?builder=a&worker=w&result=failure&prop.owner=x&master=m&revision=r", 200),
                       ("queue?builder=a&branch=b&project=p&repository=r", 200), ("builders?builder=l*", 200),
                       ("masters", 200), ("queue?builder=a&worker=w", 400)):
        assert call(client, path)[0] == code, path
