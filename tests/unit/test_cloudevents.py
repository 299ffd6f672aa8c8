"""The CloudEvents mapping (firehose.cloudevents), checked by the CloudEvents SDK itself: every
structured event we emit is parsed and validated by ``cloudevents`` (2.x core API), and its
attributes are compared with what docs/protocol.md promises."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_binary
from cloudevents.core.formats.json import JSONFormat
from hypothesis import given
from hypothesis import strategies as st

from firehose import cloudevents
from firehose.event import EVENT_TYPES, Event, dumps
from firehose.schema import SCHEMA_VERSION, validate_event

MAX_OFFSET = 10**19 - 1  # a cursor's offset has at most 19 digits

#: A valid ``data`` per entity (the fields the schema requires, and the ids the subject names).
DATA: dict[str, dict[str, Any]] = {
    "build": {"buildid": 311, "number": 57, "builder": "linux-build", "result": "failure", "results": 2},
    "step": {"stepid": 1204, "buildid": 311, "builder": "linux-build", "name": "compile", "number": 2},
    "request": {"buildrequestid": 77, "builder": "linux-build", "buildsetid": 12},
    "buildset": {"buildsetid": 12, "builders": ["linux-build"]},
    "change": {"changeid": 901, "author": "alice"},
    "worker": {"worker": "linux w1", "workerid": 4},
    "master": {"last_seq": 9},
    "log": {"logid": 88, "stepid": 1204, "buildid": 311, "builder": "linux-build", "name": "stdio"},
}
SUBJECTS: dict[str, str | None] = {
    "build": "builds/311",
    "step": "builds/311/steps/1204",
    "request": "buildrequests/77",
    "buildset": "buildsets/12",
    "change": "changes/901",
    "worker": "workers/linux%20w1",
    "master": None,
    "log": "builds/311/steps/1204/logs/88",
}


def make(event_type: str = "build.finished", offset: int = 1842, epoch: str = "3f9a1c02", *,
         time: float = 1795746642.5, seq: int = 977, data: dict[str, Any] | None = None) -> Event:
    """A delivered event, as the journal makes it (validated as ingest would)."""
    body = dict(DATA[event_type.partition(".")[0]] if data is None else data)
    sent = {"master": "bm-linux-1", "incarnation": "20261127T043000-8c1f", "seq": seq,
            "type": event_type, "time": time, "data": body}
    validate_event(sent)
    return Event.build(offset, f"{epoch}:{offset}", **sent)


def parse(raw: bytes) -> Any:
    """Our bytes through the SDK: it raises on anything that is not a valid CloudEvent 1.0."""
    return JSONFormat().read(None, raw)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_type_is_a_valid_cloudevent_with_the_documented_attributes(event_type: str) -> None:
    """Each event type maps to a CloudEvent the SDK accepts, with id = cursor, the master as
    source, the reverse-DNS versioned type, the per-entity subject and dataschema, the event's
    time, its data unchanged, and the firehose extensions."""
    entity = event_type.partition(".")[0]
    event = make(event_type)
    ce = parse(cloudevents.encode(event))
    assert ce.get_specversion() == "1.0"
    assert ce.get_id() == "3f9a1c02:1842"
    assert ce.get_source() == "urn:firehose:master:bm-linux-1"
    assert ce.get_type() == f"org.buildbot.firehose.{event_type}.v1"
    assert ce.get_subject() == SUBJECTS[entity]
    assert ce.get_time() == datetime.datetime(2026, 11, 27, 2, 30, 42, 500000, tzinfo=datetime.UTC)
    assert ce.get_datacontenttype() == "application/json"
    assert ce.get_dataschema() == f"urn:firehose:schema:{SCHEMA_VERSION}:{entity}"
    assert ce.get_data() == DATA[entity]
    assert ce.get_extension("sequence") == "00000000000000001842"
    assert ce.get_extension("firehoseepoch") == "3f9a1c02"
    assert ce.get_extension("firehosemaster") == "bm-linux-1"
    assert ce.get_extension("firehoseincarnation") == "20261127T043000-8c1f"
    assert ce.get_extension("firehoseseq") == "977"


def test_type_version_follows_the_schema_major() -> None:
    """The ``v<N>`` of every type is the major of the event schema's version."""
    assert cloudevents.event_type("build.started").endswith(".v" + SCHEMA_VERSION.split(".")[0])


def test_structured_event_has_exactly_the_documented_members() -> None:
    """Nothing else rides along: the attributes of the table, the extensions and ``data``."""
    ce = cloudevents.structured(make("build.finished"))
    assert set(ce) == {"specversion", "id", "source", "type", "subject", "time", "datacontenttype",
                       "dataschema", "sequence", "firehoseepoch", "firehosemaster",
                       "firehoseincarnation", "firehoseseq", "data"}


def test_time_is_rfc3339_utc() -> None:
    """``time`` is written in RFC 3339 with a ``Z``, without a fraction for whole seconds."""
    assert cloudevents.structured(make(time=1795746642.0))["time"] == "2026-11-27T02:30:42Z"
    assert cloudevents.structured(make(time=0.25))["time"] == "1970-01-01T00:00:00.250000Z"


def test_a_time_rfc3339_cannot_write_is_left_out() -> None:
    """A time past year 9999 (the schema allows up to 2^53 s) is omitted, not wrapped or fatal:
    ``time`` is optional in CloudEvents, and the event is still delivered and valid."""
    event = make(time=float(2**53))
    assert "time" not in cloudevents.structured(event)
    parse(cloudevents.encode(event))  # still valid (the SDK then fills in its own clock's time)


def test_a_missing_id_leaves_the_subject_out() -> None:
    """An event lacking the id its subject would name has no subject rather than a wrong one."""
    assert cloudevents.subject("step.started", {"buildid": 1}) is None
    assert cloudevents.subject("log.lines", {"buildid": 1, "stepid": 2}) is None
    assert cloudevents.subject("build.started", {"buildid": True}) is None
    assert cloudevents.subject("build.started", {"buildid": 5}) == "builds/5"


def test_seq_beyond_32_bits_is_carried_exactly() -> None:
    """``firehoseseq`` is a string, so a seq past a CloudEvents Integer's 32 bits survives."""
    assert parse(cloudevents.encode(make(seq=2**63 - 1))).get_extension("firehoseseq") == str(2**63 - 1)


def test_binary_mode_headers_parse_to_the_same_event() -> None:
    """The ``ce-*`` headers and body of binary mode give the SDK the same event as structured
    mode (what a webhook in binary mode sends), a space in a subject percent-encoded."""
    event = make("worker.connected")
    headers = cloudevents.binary_headers(event)
    assert headers["ce-subject"] == "workers/linux%2520w1"  # '%' itself is encoded on the wire
    assert headers["Content-Type"] == "application/json"
    message = HTTPMessage(headers=headers, body=cloudevents.data_bytes(event))
    binary = from_binary(message, JSONFormat(), None)
    structured = parse(cloudevents.encode(event))
    assert binary.get_attributes() == structured.get_attributes()
    assert binary.get_data() == structured.get_data()


def test_master_name_is_a_uri_safe_source() -> None:
    """Every name the schema allows for a master gives a ``source`` without escaping needed."""
    assert cloudevents.source("bm_1.example-x") == "urn:firehose:master:bm_1.example-x"


@pytest.mark.parametrize("value,expected", [(None, "firehose"), ("", "firehose"),
                                            ("firehose", "firehose"), ("cloudevents", "cloudevents")])
def test_parse_format_accepts_the_formats(value: str | None, expected: str) -> None:
    """Absent (or empty) is today's envelope; the two names are themselves."""
    assert cloudevents.parse_format(value) == expected


@pytest.mark.parametrize("value", ["CloudEvents", "cdevents", "json", "x" * 500])
def test_parse_format_refuses_anything_else_naming_the_allowed_values(value: str) -> None:
    """Any other value is an error whose message lists the allowed ones and quotes little."""
    with pytest.raises(ValueError, match="firehose, cloudevents") as info:
        cloudevents.parse_format(value)
    assert len(str(info.value)) < 120


@given(st.integers(0, MAX_OFFSET), st.integers(0, MAX_OFFSET))
def test_sequence_string_order_is_numeric_order(a: int, b: int) -> None:
    """For any two cursor offsets, comparing ``sequence`` strings orders them as the numbers."""
    sa, sb = cloudevents.sequence(a), cloudevents.sequence(b)
    assert (sa < sb) == (a < b) and (sa == sb) == (a == b)
    assert len(sa) == len(sb) == cloudevents.SEQUENCE_DIGITS


@given(st.integers(0, MAX_OFFSET))
def test_sequence_of_an_emitted_event_is_its_offset(offset: int) -> None:
    """The emitted ``sequence`` reads back as the cursor's offset, and ``id`` is the cursor."""
    ce = parse(cloudevents.encode(make(offset=offset)))
    assert int(ce.get_extension("sequence")) == offset
    assert ce.get_id() == f"3f9a1c02:{offset}"


def test_data_is_the_events_data_byte_for_byte_in_value() -> None:
    """``data`` is the firehose event's ``data`` as it was ingested, properties included."""
    data = {**DATA["build"], "properties": {"owner": "alice", "n": 3, "nested": {"a": [1, None]}}}
    event = make(data=data)
    assert parse(cloudevents.encode(event)).get_data() == data
    assert cloudevents.data_bytes(event) == dumps(data)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_emitted_event_matches_the_published_schema(event_type: str) -> None:
    """``CLOUDEVENT_SCHEMA`` (what the specs publish) holds every event we emit, as a valid
    2020-12 schema, and refuses an event with a member we do not emit."""
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(cloudevents.CLOUDEVENT_SCHEMA)
    validator = jsonschema.Draft202012Validator(cloudevents.CLOUDEVENT_SCHEMA,
                                                format_checker=jsonschema.FormatChecker())
    emitted = cloudevents.structured(make(event_type))
    validator.validate(emitted)
    assert not validator.is_valid({**emitted, "extra": "x"})
    assert not validator.is_valid({**emitted, "sequence": "42"})
