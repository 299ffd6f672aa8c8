"""The machine-readable specs (firehose.specs): valid documents, sharing the event schemas with
firehose.schema, naming exactly the routes the site serves, and served by the site.

No PyPI package ships the official AsyncAPI 3.0 JSON Schema (pydantic-asyncapi's model is
stricter than the specification: it requires a reply's ``address`` and a WebSocket binding's
``query``, both optional in AsyncAPI 3.0), so the AsyncAPI document is checked structurally
against the 3.0 specification's required fields, every ``$ref`` must resolve, and every schema
in it is checked as JSON Schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft7Validator, Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from firehose import __version__
from firehose.config import WebhookConfig
from firehose.cursor import parse_cursor
from firehose.event import EVENT_TYPES, FILTER_FIELDS
from firehose.hub import Hub
from firehose.ingest import MasterTokens
from firehose.journal import MemoryJournal
from firehose.schema import BATCH_SCHEMA, DELIVERED_SCHEMA, SCHEMA_VERSION
from firehose.specs import CURSOR_PATTERN, asyncapi, event_schemas, openapi
from firehose.state import BuildState
from firehose.web import build_site
from firehose.webhooks.dispatcher import make_dispatcher
from tests.unit.helpers import make_event


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references: {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def _inline(doc: dict[str, Any], schema: Any) -> Any:
    """``schema`` with every local ``$ref`` replaced by its target (the schemas hold no cycle)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(doc, _resolve(doc, schema["$ref"]))
        return {k: _inline(doc, v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline(doc, v) for v in schema]
    return schema


def test_openapi_document_is_valid_openapi_3_1() -> None:
    """openapi-spec-validator accepts the document as OpenAPI 3.1 (schemas included)."""
    doc = openapi()
    assert doc["openapi"] == "3.1.0"
    validate_openapi(doc)


@pytest.mark.parametrize("make", [openapi, asyncapi], ids=["openapi", "asyncapi"])
def test_every_reference_resolves_and_every_schema_is_valid_json_schema(make: Any) -> None:
    """Every ``$ref`` of both documents points inside it, and every component schema is a valid
    JSON Schema for both dialects in play (2020-12 for OpenAPI 3.1, draft-07 for AsyncAPI)."""
    doc = make()
    for ref in _refs(doc):
        _resolve(doc, ref)
    for name, schema in doc["components"]["schemas"].items():
        assert "$schema" not in schema and "$id" not in schema, name
        Draft202012Validator.check_schema(schema)
        Draft7Validator.check_schema(schema)


#: Component and channel keys, as AsyncAPI 3.0 allows them.
_KEY = re.compile(r"^[a-zA-Z0-9.\-_]+$")


def test_asyncapi_document_has_the_structure_of_asyncapi_3() -> None:
    """The fields AsyncAPI 3.0 requires are there with the right types (info, servers' host and
    protocol, channels' messages with payloads, operations' action and channel); operations send
    or receive messages of their own channel, and every reply names messages of its channel."""
    doc = asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    assert isinstance(doc["info"]["title"], str) and isinstance(doc["info"]["version"], str)
    for server in doc["servers"].values():
        assert isinstance(server["host"], str) and server["protocol"] in ("ws", "http")
        assert "://" not in server["host"]
    for name, channel in doc["channels"].items():
        assert _KEY.match(name) and channel["address"].startswith("/")
        for key, message in channel["messages"].items():
            assert _KEY.match(key), key
            assert message["contentType"] == "application/json" and "payload" in message, key
    for name, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), name
        channel = op["channel"]["$ref"]
        for message in op["messages"]:
            assert message["$ref"].startswith(channel + "/messages/"), (name, message)
        if "reply" in op:
            for message in op["reply"]["messages"]:
                assert message["$ref"].startswith(op["reply"]["channel"]["$ref"] + "/messages/")
    ws = doc["channels"]["ws"]["messages"]
    assert {"subscribe", "unsubscribe", "ping", "subscribed", "unsubscribed", "pong", "error", "gap"} <= set(ws)
    assert set(EVENT_TYPES) <= set(ws) and set(EVENT_TYPES) <= set(doc["channels"]["sse"]["messages"])


def test_both_documents_carry_the_package_and_schema_versions() -> None:
    """``info.version`` names the package version and the event schema version, which the
    schemas served at /schema carry too."""
    for doc in (openapi(), asyncapi()):
        assert doc["info"]["version"] == f"{__version__}+schema.{SCHEMA_VERSION}"
        assert doc["info"]["x-schema-version"] == SCHEMA_VERSION
    assert BATCH_SCHEMA["x-schema-version"] == DELIVERED_SCHEMA["x-schema-version"] == SCHEMA_VERSION
    assert re.fullmatch(r"\d+\.\d+", SCHEMA_VERSION)


def test_documents_share_the_event_schemas_built_from_the_schema_module() -> None:
    """Both documents hold the same event schemas, and these are firehose.schema's own: with
    references inlined, ``Event`` and ``IngestBatch`` are DELIVERED_SCHEMA and BATCH_SCHEMA
    less their document keywords; every entity has its data schema."""
    shared = event_schemas()
    for doc in (openapi(), asyncapi()):
        for name, schema in shared.items():
            assert doc["components"]["schemas"][name] == schema, name
    doc = openapi()
    strip = {"$schema", "$id"}
    assert _inline(doc, shared["Event"]) == {k: v for k, v in DELIVERED_SCHEMA.items() if k not in strip}
    assert _inline(doc, shared["IngestBatch"]) == {
        **{k: v for k, v in BATCH_SCHEMA.items() if k not in strip},
        "items": {"title": "firehose event as a master sends it", **BATCH_SCHEMA["items"]},
    }
    for entity in {t.partition(".")[0] for t in EVENT_TYPES}:
        assert entity.capitalize() + "Data" in shared


def test_a_delivered_event_matches_the_event_component_and_its_typed_message() -> None:
    """A real event, as the hub encodes it, validates against ``Event`` in OpenAPI's dialect and
    against its type's AsyncAPI message payload; one with a wrong data type does not."""
    event = {**make_event(3, type="build.finished"), "id": "e1:3"}
    openapi_doc = openapi()
    Draft202012Validator(_inline(openapi_doc, openapi_doc["components"]["schemas"]["Event"])).validate(event)
    doc = asyncapi()
    payload = _inline(doc, doc["channels"]["ws"]["messages"]["build.finished"]["payload"])
    Draft7Validator(payload).validate(event)
    bad = {**event, "data": {**event["data"], "buildid": "not a number"}}
    assert not Draft7Validator(payload).is_valid(bad)


@given(st.from_regex(CURSOR_PATTERN, fullmatch=True))
def test_the_cursor_pattern_accepts_only_what_the_server_parses(text: str) -> None:
    """Every string the specs' cursor pattern admits is a cursor firehose.cursor parses."""
    assert parse_cursor(text).epoch == text.partition(":")[0]


def _site() -> Resource:
    journal = MemoryJournal(epoch="e1")
    hub = Hub(journal)
    clock = Clock()
    dispatcher = make_dispatcher(hub, WebhookConfig(admin_token="admin-token-123"), ":memory:", clock)
    site = build_site(hub=hub, journal=journal, clock=clock, tokens=MasterTokens({"m1": "tok1"}),
                      state=BuildState(), webhooks=dispatcher, webhook_admin_token="admin-token-123")
    return site.resource


def _served_paths(root: Resource) -> set[str]:
    """The first two levels of the site's resource tree, as paths (``/api/builds``...)."""
    paths = {"/"}
    for name, child in root.children.items():
        path = "/" + name.decode()
        paths.add(path)
        paths.update(f"{path}/{sub.decode()}" for sub in getattr(child, "children", {}))
    return paths


def test_every_route_the_site_serves_is_in_a_document_and_every_documented_one_is_served() -> None:
    """The routes mounted by build_site are exactly the OpenAPI paths (by their fixed part),
    with /ws, the one route that is not plain HTTP, in the AsyncAPI document instead."""
    served = _served_paths(_site())
    documented = {re.sub(r"/\{.*$", "", p) for p in openapi()["paths"]}  # the part before any parameter
    websocket = {ch["address"] for ch in asyncapi()["channels"].values()} - documented
    assert websocket == {"/ws"}
    assert served == documented | websocket


def test_filter_parameters_name_every_filter_field() -> None:
    """/poll and /sse document every filter field (and ``prop.<name>``); /api lists every field
    but ``type`` (records are not events)."""
    doc = openapi()
    params = doc["components"]["parameters"]

    def names(path: str) -> set[str]:
        out = set()
        for p in doc["paths"][path]["get"]["parameters"]:
            out.add((params[p["$ref"].rpartition("/")[2]] if "$ref" in p else p)["name"])
        return out

    for path in ("/poll", "/sse"):
        assert set(FILTER_FIELDS) | {"prop", "since"} <= names(path)
    assert set(FILTER_FIELDS) - {"type"} | {"prop", "limit", "offset"} <= names("/api/builds")
    assert "type" not in names("/api/builds")


@pytest.mark.parametrize("path, key", [("/openapi.json", "openapi"), ("/asyncapi.json", "asyncapi")])
def test_site_serves_the_documents_as_json(path: str, key: str) -> None:
    """GET /openapi.json and /asyncapi.json answer 200 JSON: the documents firehose.specs builds."""
    client = StubTreq(_site())
    response = client.get("http://firehose.test" + path)
    client.flush()
    result: list[Any] = []
    response.addCallback(result.append)
    assert result and result[0].code == 200
    assert result[0].headers.getRawHeaders("content-type") == ["application/json"]
    body: list[bytes] = []
    result[0].content().addCallback(body.append)
    client.flush()
    doc = json.loads(body[0])
    assert doc[key] == (openapi() if key == "openapi" else asyncapi())[key]
    assert doc == json.loads(json.dumps(openapi() if key == "openapi" else asyncapi()))


def test_the_insights_answers_conform_to_their_documented_schemas() -> None:
    """The answers the insights page reads (a failed build with its failure summary and log
    tail, the trend, the queue waits, the builders, one revision's rows) are valid by the 200
    response schemas of the OpenAPI document (schemathesis rarely generates the ids of a build
    that exists)."""
    from tests.unit.helpers import Scenario

    doc = openapi()
    journal = MemoryJournal(epoch="e1")
    state = BuildState()
    state.rebuild(journal)
    clock = Clock()
    clock.advance(1_700_001_000)
    site = build_site(hub=Hub(journal), journal=journal, clock=clock, tokens=MasterTokens({}), state=state)
    client = StubTreq(site.resource)
    m = Scenario("m1")
    m.request("submitted", 1, "linux", at=1_700_000_000)
    m.request("claimed", 1, "linux", at=1_700_000_005, claimed_at=1_700_000_005)
    m.build("started", 1, "linux", started_at=1_700_000_006, at=1_700_000_006, url="http://bb/#/builders/1/builds/1")
    m.step("started", 1, 1, "linux", "test", started_at=1_700_000_007)
    m.emit("log.lines", {"logid": 1, "stepid": 1, "buildid": 1, "builder": "linux", "name": "stdio",
                         "first_line": 0, "lines": ["FAIL: test_login", "1 failed"]})
    m.step("finished", 1, 1, "linux", "test", started_at=1_700_000_007, complete_at=1_700_000_020,
           result="failure", state="test failed")
    m.build("finished", 1, "linux", result="failure", started_at=1_700_000_006, at=1_700_000_030)
    journal.append(m.take())
    for path, template in [("builds/m1/1", "/api/builds/{master}/{buildid}"), ("trend", "/api/trend"),
                           ("waits", "/api/waits"), ("builders", "/api/builders"),
                           ("revisions?revision=r1", "/api/revisions")]:
        d = client.request("GET", "http://firehose.test/api/" + path)
        client.flush()
        response = d.result
        content = response.content()
        client.flush()
        body = json.loads(content.result)
        assert response.code == 200, body
        schema = doc["paths"][template]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        Draft202012Validator(_inline(doc, schema)).validate(body)
        if path == "builds/m1/1":
            assert body["build"]["failure"]["steps"][0]["log_tail"]["lines"] == ["FAIL: test_login", "1 failed"]
