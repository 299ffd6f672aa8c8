"""JSON Schema of what a master sends to ``POST /ingest``, shared by the server and the plugin.

The schema is strict about the envelope (a retry must be recognisable as one) and about the
identity fields each type needs to be useful, and open about the rest of ``data``: a newer
plugin may add fields without breaking an older server.  It is compiled once with
fastjsonschema (tens of times faster than interpreting it, which matters on the ingest path).
"""

from __future__ import annotations

import functools
from typing import Any

import fastjsonschema

from firehose.event import EVENT_TYPES

#: Names of masters: what a filter or a metric label may safely contain.
MASTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

_str = {"type": "string"}
_int = {"type": "integer"}
_opt_int = {"type": ["integer", "null"]}
_opt_time = {"type": ["number", "null"]}
_opt_str = {"type": ["string", "null"]}

_sourcestamp = {
    "type": "object",
    "properties": {
        "repository": _opt_str,
        "branch": _opt_str,
        "revision": _opt_str,
        "project": _opt_str,
        "codebase": _opt_str,
    },
}

#: Fields every type may carry, read by filters; declared once so their types stay consistent.
_common = {
    "builder": _str,
    "builderid": _int,
    "branch": _opt_str,
    "project": _opt_str,
    "repository": _opt_str,
    "revision": _opt_str,
    "worker": _opt_str,
    "results": _opt_int,
    "result": _opt_str,
    "properties": {"type": "object"},
    "sourcestamps": {"type": "array", "items": _sourcestamp},
    "started_at": _opt_time,
    "complete_at": _opt_time,
}


def _data(*required: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**_common, **extra},
    }


_build = _data(
    "buildid",
    "number",
    "builder",
    buildid=_int,
    number=_int,
    buildrequestid=_opt_int,
    buildsetid=_opt_int,
    workerid=_opt_int,
    state=_opt_str,
    tags={"type": "array", "items": _str},
    url=_opt_str,
    duration=_opt_time,
)
_step = _data(
    "stepid",
    "buildid",
    "builder",
    "name",
    "number",
    stepid=_int,
    buildid=_int,
    build_number=_opt_int,
    name=_str,
    number=_int,
    duration=_opt_time,
    urls={"type": "array", "items": {"type": "object", "required": ["name", "url"]}},
)
_request = _data(
    "buildrequestid",
    "builder",
    buildrequestid=_int,
    buildsetid=_opt_int,
    reason=_opt_str,
    submitted_at=_opt_time,
    claimed_at=_opt_time,
)
_buildset = _data(
    "buildsetid",
    buildsetid=_int,
    reason=_opt_str,
    submitted_at=_opt_time,
    builders={"type": "array", "items": _str},
)
_change = _data(
    "changeid",
    changeid=_int,
    author=_opt_str,
    files={"type": "array", "items": _str},
    comments=_opt_str,
    revlink=_opt_str,
    when=_opt_time,
)
_worker = _data("worker", worker=_str, workerid=_opt_int, connected={"type": "boolean"})
_master = _data(last_seq=_opt_int)
_log = _data(
    "logid",
    "stepid",
    "buildid",
    "builder",
    logid=_int,
    stepid=_int,
    buildid=_int,
    name=_str,
    first_line=_opt_int,
    lines={"type": "array", "items": _str},
)

_DATA_BY_ENTITY: dict[str, dict[str, Any]] = {
    "build": _build,
    "step": _step,
    "request": _request,
    "buildset": _buildset,
    "change": _change,
    "worker": _worker,
    "master": _master,
    "log": _log,
}

#: Schema of one event as a master sends it.
EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["master", "incarnation", "seq", "type", "time", "data"],
    "additionalProperties": False,
    "properties": {
        "master": {"type": "string", "pattern": MASTER_NAME_PATTERN},
        "incarnation": {"type": "string", "minLength": 1, "maxLength": 64},
        "seq": {"type": "integer", "minimum": 1},
        "type": {"enum": list(EVENT_TYPES)},
        "time": {"type": "number", "minimum": 0},
        "data": {"type": "object"},
    },
    "allOf": [
        {
            "if": {"properties": {"type": {"pattern": f"^{entity}\\."}}},
            "then": {"properties": {"data": schema}},
        }
        for entity, schema in _DATA_BY_ENTITY.items()
    ],
}

#: Schema of the body of ``POST /ingest``: a non-empty array of events from one master.
BATCH_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "$id": "https://firehose.invalid/schema/ingest-batch.json",
    "title": "firehose ingest batch",
    "type": "array",
    "minItems": 1,
    "items": EVENT_SCHEMA,
}

#: Schema of an event as subscribers receive it: what a master sent, plus its cursor ``id``.
DELIVERED_SCHEMA: dict[str, Any] = {
    **EVENT_SCHEMA,
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "firehose event",
    "required": ["id", *EVENT_SCHEMA["required"]],
    "properties": {**EVENT_SCHEMA["properties"], "id": {"type": "string"}},
}


class SchemaError(ValueError):
    """The input does not match the schema; the message says where and why."""


@functools.cache
def _compiled(which: str) -> Any:
    """Compile a validator on first use: compiling takes ~0.25 s, which every importer (the CLI,
    a Buildbot master loading the plugin) would otherwise pay whether it validates or not."""
    if which == "batch":
        return fastjsonschema.compile(BATCH_SCHEMA)
    return fastjsonschema.compile({**EVENT_SCHEMA, "$schema": BATCH_SCHEMA["$schema"]})


@functools.cache
def _for_type(event_type: str) -> Any:
    """The event schema with ``data`` checked by its entity's schema directly: no ``if``/``then``
    (fastjsonschema evaluates each ``if`` by raising and catching an exception)."""
    entity = event_type.partition(".")[0]
    schema = {k: v for k, v in EVENT_SCHEMA.items() if k != "allOf"}
    schema["properties"] = {**EVENT_SCHEMA["properties"], "data": _DATA_BY_ENTITY.get(entity, {"type": "object"})}
    return fastjsonschema.compile({**schema, "$schema": BATCH_SCHEMA["$schema"]})


def validate_batch(batch: Any) -> list[dict[str, Any]]:
    """Check an ingest batch; return it, or raise :class:`SchemaError` naming the problem."""
    if isinstance(batch, list) and batch:
        try:
            for event in batch:
                if event["type"] not in EVENT_TYPES:
                    raise KeyError(event["type"])
                _for_type(event["type"])(event)
            return batch
        except (fastjsonschema.JsonSchemaValueException, KeyError, TypeError):
            pass  # the whole-batch validator below names the problem exactly
    try:
        _compiled("batch")(batch)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise SchemaError(_describe(exc)) from None
    return batch


def validate_event(event: Any) -> dict[str, Any]:
    """Check one event as a master would send it (the plugin checks its own output with this)."""
    try:
        if isinstance(event, dict) and event.get("type") in EVENT_TYPES:
            _for_type(event["type"])(event)
            return event
    except fastjsonschema.JsonSchemaValueException:
        pass  # the full validator below words the error as for any other event
    try:
        _compiled("event")(event)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise SchemaError(_describe(exc, "event")) from None
    return event


def _describe(exc: fastjsonschema.JsonSchemaValueException, root: str = "batch") -> str:
    """fastjsonschema names the root ``data``; name it for what was validated."""
    where = (exc.name or "data").replace("data", root, 1)
    return exc.message.replace(exc.name or "data", where, 1) if exc.name else exc.message
