"""The machine-readable contract: an OpenAPI 3.1 document of every HTTP endpoint and an
AsyncAPI 3.0 document of the streams (``/ws``, ``/sse``), served at ``/openapi.json`` and
``/asyncapi.json``.

Both documents are built, not written: the event schemas come from the very objects
:mod:`firehose.schema` validates with (:data:`~firehose.schema.BATCH_SCHEMA`,
:data:`~firehose.schema.DELIVERED_SCHEMA` and the per-entity ``data`` schemas inside them), the
filter fields from :data:`~firehose.event.FILTER_FIELDS`, the event types from
:data:`~firehose.event.EVENT_TYPES`; so a change to the schema is a change to the specs, and the
two can never disagree.  Each document holds each schema once, under ``components/schemas``,
and refers to it by ``$ref`` wherever it is used.

The module is pure (no Twisted): a client generator, a test or a script can build the documents
without a server.  Each part is a small function, so that a later feature (another ``format``,
more fields in a poll answer, another endpoint) is a local edit: a parameter added to
:func:`_parameters`, a property to one schema of :func:`_http_schemas`, a path to
:func:`_paths`.
"""

from __future__ import annotations

import copy
from typing import Any

from firehose import __version__
from firehose.cloudevents import CLOUDEVENT_SCHEMA, FORMATS
from firehose.event import (
    BUILD_FILTER_FIELDS,
    EVENT_TYPES,
    FILTER_FIELDS,
    REQUEST_FILTER_FIELDS,
    RESULT_NAMES,
)
from firehose.schema import (
    BATCH_SCHEMA,
    DELIVERED_SCHEMA,
    EVENT_SCHEMA,
    SCHEMA_VERSION,
)

#: What a cursor looks like (``firehose.cursor`` parses exactly this, after stripping spaces).
CURSOR_PATTERN = r"^[0-9a-z]{1,32}:[0-9]{1,19}$"
#: A ``prop.<name>`` filter field (``firehose.filters``).
PROP_PATTERN = r"^prop\.[A-Za-z0-9_.:-]{1,100}$"

#: Both documents' ``info.version``: the package's version, the event schema's as build metadata.
DOCUMENT_VERSION = f"{__version__}+schema.{SCHEMA_VERSION}"

_REF = "#/components/schemas/"
#: Keys of draft-07 that mean something else, or nothing, in JSON Schema 2020-12: refused, so
#: that a schema added to firehose.schema with one of them fails the build instead of
#: silently meaning another thing in the documents.
_NOT_2020 = ("definitions", "dependencies", "additionalItems")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _entity_names() -> list[str]:
    return list(dict.fromkeys(t.partition(".")[0] for t in EVENT_TYPES))


def _data_name(entity: str) -> str:
    return entity.capitalize() + "Data"


def _portable(schema: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a firehose.schema object valid as JSON Schema 2020-12 (OpenAPI 3.1's
    dialect) and as draft-07 (AsyncAPI's): without the document keywords ``$schema`` and ``$id``
    (a nested ``$id`` would move the base of every ``$ref`` below it), and checked to use none
    of the keywords whose meaning changed between the two drafts."""
    out = copy.deepcopy(schema)
    out.pop("$schema", None)
    out.pop("$id", None)
    stack: list[Any] = [out]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            bad = [k for k in _NOT_2020 if k in node]
            if bad or isinstance(node.get("items"), list):
                raise ValueError(f"schema uses draft-07-only keywords {bad or ['items: [...]']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def _event_with_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The event schema with each entity's ``data`` schema replaced by a ``$ref`` to its own
    component (``BuildData``, ...): the same rule, each data schema written once."""
    out = _portable(schema)
    for rule in out.get("allOf", []):
        entity = rule["if"]["properties"]["type"]["pattern"].lstrip("^").split("\\.")[0]
        rule["then"]["properties"]["data"] = _ref(_data_name(entity))
    return out


def event_schemas() -> dict[str, dict[str, Any]]:
    """The event schemas both documents share, by component name.

    ``Event`` is an event as subscribers receive it, ``IngestEvent`` as a master sends it,
    ``IngestBatch`` the body of ``POST /ingest``; ``BuildData``, ``StepData``... the ``data`` of
    each entity's events (an event's ``type`` is ``<entity>.<verb>``).
    """
    data: dict[str, dict[str, Any]] = {}
    for rule in EVENT_SCHEMA["allOf"]:
        entity = rule["if"]["properties"]["type"]["pattern"].lstrip("^").split("\\.")[0]
        data[_data_name(entity)] = _portable(rule["then"]["properties"]["data"])
    batch = _portable(BATCH_SCHEMA)
    batch["items"] = _ref("IngestEvent")
    return {
        "Event": _event_with_refs(DELIVERED_SCHEMA),
        "IngestEvent": {"title": "firehose event as a master sends it", **_event_with_refs(EVENT_SCHEMA)},
        "IngestBatch": batch,
        **data,
    }


def _stream_schemas() -> dict[str, dict[str, Any]]:
    """Cursors, filters and the control messages: shared by the HTTP answers and the streams."""
    filter_json = {
        "type": "object",
        "description": "A filter in its JSON form: field -> a glob or a non-empty list of globs "
        "(any of them); every field given must match. `*` is the only wildcard.",
        "properties": {f: {"$ref": _REF + "Patterns"} for f in FILTER_FIELDS},
        "patternProperties": {PROP_PATTERN: _ref("Patterns")},
        "additionalProperties": False,
    }
    return {
        "CloudEvent": CLOUDEVENT_SCHEMA,
        "Cursor": {
            "type": "string",
            "pattern": CURSOR_PATTERN,
            "description": "An opaque position in the stream, '<epoch>:<offset>'. Every event's "
            "`id` is its cursor; pass one back as `since` to resume after it.",
            "examples": ["3f9a1c02:1842"],
        },
        "Since": {
            "description": "Where a subscription starts: `now` (or empty: the next event "
            "published), `earliest` (the oldest event kept), or a cursor (the event after it).",
            "anyOf": [{"type": "string", "enum": ["now", "earliest", ""]}, _ref("Cursor")],
        },
        "Patterns": {
            "description": "One glob, or several: any of them matches (a comma inside a string "
            "also separates alternatives).",
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": 256},
                {"type": "array", "minItems": 1, "maxItems": 64,
                 "items": {"type": "string", "minLength": 1, "maxLength": 256}},
            ],
        },
        "Filter": filter_json,
        "NormalFilter": {
            "type": "object",
            "description": "A filter as the server understood it: every field -> its list of globs.",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
        "Gap": {
            "type": "object",
            "description": "Events between `since` and `cursor` are not coming: resume from "
            "`cursor`. `earliest` is the position just before the oldest event kept.",
            "required": ["type", "reason", "since", "cursor", "earliest"],
            "properties": {
                "type": {"const": "gap"},
                "reason": {
                    "enum": ["epoch", "expired", "slow", "error"],
                    "description": "epoch: `since` is from another journal (the stream goes on "
                    "from the earliest event); expired: older than retention (goes on from "
                    "`cursor`); slow: the subscriber fell too far behind, error: the journal "
                    "could not be read (the subscription ends: resume from `cursor`).",
                },
                "since": {"type": ["string", "null"]},
                "cursor": _ref("Cursor"),
                "earliest": _ref("Cursor"),
            },
        },
    }


def _error(*codes: str) -> dict[str, Any]:
    """The JSON error body, its ``error`` one of ``codes``."""
    return {
        "allOf": [_ref("Error")],
        "properties": {"error": {"enum": list(codes)}},
    }


def _record(description: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A state record: its identity fields typed, the rest open (records grow new fields)."""
    return {"type": "object", "description": description, "required": list(required)}


def _answer(description: str, props: dict[str, Any], required: tuple[str, ...]) -> dict[str, Any]:
    """An ``/api`` answer: the given properties and the ``cursor`` it reflects."""
    return {
        "type": "object",
        "description": description,
        "required": [*required, "cursor"],
        "properties": {**props, "cursor": _ref("Cursor")},
    }


def _list(key: str, item: str, description: str, paged: bool = True, **extra: Any) -> dict[str, Any]:
    props: dict[str, Any] = {key: {"type": "array", "items": _ref(item)}, **extra}
    required: tuple[str, ...] = (key,)
    if paged:
        props["next_offset"] = {
            "type": ["integer", "null"],
            "description": "the `offset` of the next page, or null when this page is the last",
        }
        required = (key, "next_offset")
    return _answer(description, props, required)


_NUMBER = {"type": "number"}
_STAT = {"count": {"type": "integer"}, "total": _NUMBER, "mean": _NUMBER, "p50": _NUMBER,
         "p95": _NUMBER, "max": _NUMBER}


def _http_schemas() -> dict[str, dict[str, Any]]:
    """Bodies of the HTTP answers (other than events)."""
    webhook = {
        "type": "object",
        "required": ["id", "url", "filter", "cursor", "active", "source", "failures", "last_error",
                     "disabled_reason", "delivered", "created", "last_delivery", "queued",
                     "retrying", "format", "secrets", "redeliveries"],
        "properties": {
            "id": {"type": "string"},
            "url": {"type": "string"},
            "filter": _ref("NormalFilter"),
            "cursor": {"type": ["string", "null"], "description": "the last event acknowledged "
                       "(or `earliest` before the first delivery of a hook registered so)"},
            "active": {"type": "boolean"},
            "source": {"enum": ["api", "config"]},
            "failures": {"type": "integer", "description": "consecutive failed deliveries"},
            "last_error": {"type": ["string", "null"]},
            "disabled_reason": {"type": ["string", "null"]},
            "delivered": {"type": "integer", "description": "events delivered in all"},
            "created": {"type": "number", "description": "epoch seconds"},
            "last_delivery": {"type": ["number", "null"], "description": "epoch seconds"},
            "queued": {"type": "integer", "description": "events read and waiting to be sent"},
            "retrying": {"type": "boolean", "description": "a retry is scheduled"},
            "format": _ref("WebhookFormat"),
            "secrets": {"type": "integer", "minimum": 1, "description": "how many secrets sign "
                        "(`secret` and `previous_secrets`); the secrets themselves are never shown"},
            "redeliveries": {"type": "integer", "minimum": 0, "description": "redeliveries asked "
                             "for; later batches' `webhook-id` ends in `/r<n>`"},
        },
    }
    previous_secrets = {"type": "array", "maxItems": 4, "items": {"type": "string", "minLength": 16},
                        "description": "secrets that still sign (Standard Webhooks) beside `secret`, "
                        "for a rotation without downtime (docs/client.md, 'Rotating a secret')"}
    return {
        "Error": {
            "type": "object",
            "description": "Every HTTP error: a code to branch on and a sentence for people.",
            "required": ["error", "message"],
            "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
        },
        "IngestAnswer": {
            "type": "object",
            "description": "The batch is durable in the journal: the master may forget it.",
            "required": ["accepted", "duplicates", "cursor"],
            "properties": {
                "accepted": {"type": "integer", "minimum": 0},
                "duplicates": {"type": "integer", "minimum": 0,
                               "description": "events the journal already held (a resent batch)"},
                "cursor": _ref("Cursor"),
            },
        },
        "PollAnswer": {
            "type": "object",
            "description": "Pass `cursor` as the next poll's `since` while `more` is true: that loop pages "
            "through history. `cursor` may be past the last event: it moves past every event the poll "
            "examined, matched or not.",
            "required": ["events", "cursor", "more", "head"],
            "properties": {
                "events": {"type": "array", "maxItems": 1000,
                           "items": {"anyOf": [_ref("Event"), _ref("CloudEvent")]},
                           "description": "at most `limit`, oldest first; CloudEvents when format=cloudevents; "
                           "empty when `gap` is present"},
                "cursor": _ref("Cursor"),
                "more": {"type": "boolean",
                         "description": "true: the stream holds events after `cursor` this answer did not "
                         "cover (it reached `limit`, or examined its 2,000 events of history): poll again at "
                         "once. false: caught up, `cursor` equals `head`"},
                "head": _ref("Cursor"),
                "gap": _ref("Gap"),
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "version", "epoch", "cursor", "earliest", "subscribers", "masters"],
            "properties": {
                "status": {"enum": ["ok", "degraded"]},
                "reason": {"type": "string", "description": "why degraded"},
                "since": {"type": ["number", "null"], "description": "degraded since (epoch seconds)"},
                "version": {"type": "string"},
                "epoch": {"type": "string"},
                "cursor": _ref("Cursor"),
                "earliest": _ref("Cursor"),
                "subscribers": {"type": "object", "additionalProperties": {"type": "integer"}},
                "masters": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["incarnation", "last_seq"],
                        "properties": {"incarnation": {"type": "string"}, "last_seq": {"type": "integer"}},
                    },
                },
            },
        },
        "SchemaDocuments": {
            "type": "object",
            "required": ["batch", "event"],
            "properties": {
                "batch": {"type": "object", "description": "JSON Schema (draft-07) of an ingest body"},
                "event": {"type": "object", "description": "JSON Schema (draft-07) of a delivered event"},
            },
        },
        "Request": _record("A build request.", ("master", "buildrequestid", "status")),
        "Build": {
            **_record("A build (finished or not). `/api/builds/{master}/{buildid}` adds `steps`, "
                      "`properties` and, for a finished build that did not succeed, `failure`.",
                      ("master", "buildid", "finished")),
            "properties": {
                "steps": {"type": "array", "items": _ref("Step")},
                "failure": _ref("FailureSummary"),
            },
        },
        "Step": {
            **_record("A step of a build.", ("stepid", "state_string")),
            "properties": {
                "stepid": {"type": "integer"},
                "state_string": {"type": ["string", "null"],
                                 "description": "Buildbot's own status text of the step (`state` in step events)"},
            },
        },
        "FailureSummary": {
            "type": "object",
            "description": "What went wrong (docs/api.md#failure-summaries): the steps that failed "
            "(result failure or exception; when none, those that did not succeed) and the build's URL.",
            "required": ["steps", "url"],
            "properties": {
                "steps": {"type": "array", "items": {
                    "type": "object",
                    "required": ["name", "number", "result", "state_string", "duration", "log_tail"],
                    "properties": {
                        "name": {"type": ["string", "null"]},
                        "number": {"type": ["integer", "null"]},
                        "result": {"type": ["string", "null"]},
                        "state_string": {"type": ["string", "null"]},
                        "duration": {"type": ["number", "null"]},
                        "log_tail": {"anyOf": [_ref("LogTail"), {"type": "null"}]},
                    },
                }},
                "url": {"type": ["string", "null"], "description": "the build on its Buildbot master"},
            },
        },
        "LogTail": {
            "type": "object",
            "description": "The last lines of a step's log (its `stdio` log when it has one): at most "
            "40 lines and 4 KiB, redacted by the plugin. `truncated`: earlier lines are not kept.",
            "required": ["log", "lines", "truncated"],
            "properties": {
                "log": {"type": "string"},
                "lines": {"type": "array", "maxItems": 40, "items": {"type": "string", "maxLength": 4096}},
                "truncated": {"type": "boolean"},
            },
        },
        "Builder": {
            "type": "object",
            "required": ["builder", "masters", "tags", "last_build", "duration_p50"],
            "properties": {
                "builder": {"type": "string"},
                "masters": {"type": "array", "items": {"type": "string"}},
                "tags": {"type": "array", "items": {"type": "string"}},
                "last_build": {"anyOf": [_ref("Build"), {"type": "null"}]},
                "duration_p50": {"type": ["number", "null"],
                                 "description": "median duration (seconds) of its newest 100 finished builds"},
            },
        },
        "Revision": {
            **_record("A revision of a branch, each builder's cell in `builders`; `state` and `result` "
                      "say whether the push is done (docs/api.md#is-my-push-done); `failures` lists "
                      "the counted builds that failed.",
                      ("builders", "state", "result", "failures")),
            "properties": {
                "state": {"enum": ["pending", "running", "done"]},
                "result": {"anyOf": [{"enum": list(RESULT_NAMES.values())}, {"type": "null"}]},
                "failures": {"type": "array", "items": {
                    "type": "object", "required": ["builder", "master", "buildid", "result"],
                    "properties": {"builder": {"type": "string"}, "master": {"type": ["string", "null"]},
                                   "buildid": {"type": ["integer", "null"]},
                                   "result": {"enum": ["failure", "exception"]}}}},
            },
        },
        "TimeBucket": {
            "type": "object",
            "description": "One bucket: `start` (Unix time) and the statistics of its samples' seconds.",
            "required": ["start", "count", "mean", "p50", "p95", "max"],
            "properties": {"start": _NUMBER, "count": {"type": "integer", "minimum": 1}, "mean": _NUMBER,
                           "p50": _NUMBER, "p95": _NUMBER, "max": _NUMBER},
        },
        "TimeBuckets": {"type": "array", "description": "Buckets with samples, oldest first.",
                        "items": _ref("TimeBucket")},
        "TrendBuckets": {
            "type": "array",
            "description": "Build durations, oldest first: `count` finished builds, `failed` of them with "
            "failure or exception, `failure_rate` = failed / count.",
            "items": {"allOf": [_ref("TimeBucket")],
                      "required": ["failed", "failure_rate"],
                      "properties": {"failed": {"type": "integer", "minimum": 0},
                                     "failure_rate": {"type": "number", "minimum": 0, "maximum": 1}}},
        },
        "StepTiming": {"type": "object", "required": ["builder", "step", *_STAT],
                       "properties": {"builder": {"type": "string"}, "step": {"type": "string"}, **_STAT}},
        "Webhook": webhook,
        "NewWebhook": {
            "allOf": [_ref("Webhook")],
            "required": ["secret"],
            "properties": {"secret": {"type": "string", "description": "shown this once"}},
        },
        "WebhookRegistration": {
            "type": "object",
            "required": ["url"],
            "additionalProperties": False,
            "properties": {
                "url": {"type": "string", "format": "uri",
                        "description": "http or https; only public addresses unless the server "
                        "allows more networks (docs/client.md, 'Which receivers')"},
                "filter": _ref("Filter"),
                "secret": {"type": "string", "minLength": 16, "description": "generated unless given "
                           "(`whsec_<base64>`); a `whsec_` secret must be base64 of 16 bytes or more"},
                "previous_secrets": previous_secrets,
                "format": _ref("WebhookFormat"),
                "since": _ref("Since"),
                "id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$",
                       "description": "generated unless given"},
            },
        },
        "WebhookChange": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "active": {"type": "boolean", "description": "true re-enables, false pauses"},
                "secret": {"type": "string", "minLength": 16, "description": "signs from the next POST "
                           "on; the one it replaces keeps signing (first of `previous_secrets`) unless "
                           "`previous_secrets` is given too"},
                "previous_secrets": previous_secrets,
                "format": _ref("WebhookFormat"),
            },
        },
        "WebhookFormat": {"enum": ["firehose", "cloudevents", "cloudevents-binary"], "default": "firehose",
                          "description": "the body of each POST (docs/client.md, 'The payload')"},
        "WebhookDelivery": {
            "type": "object",
            "description": "One POST to the receiver and how it ended.",
            "required": ["time", "webhook_id", "first", "last", "events", "attempt", "status", "error",
                         "duration_ms"],
            "properties": {
                "time": {"type": "number", "description": "epoch seconds it was sent"},
                "webhook_id": {"type": "string", "description": "the batch's `webhook-id`, the same on "
                               "every retry"},
                "first": {"anyOf": [_ref("Cursor"), {"type": "null"}], "description": "null: gaps only"},
                "last": {"anyOf": [_ref("Cursor"), {"type": "null"}]},
                "events": {"type": "integer", "minimum": 0},
                "attempt": {"type": "integer", "minimum": 1, "description": "1, then 2 for the first retry"},
                "status": {"type": ["integer", "null"], "description": "the receiver's HTTP status; null "
                           "without an answer"},
                "error": {"type": ["string", "null"], "description": "what went wrong; null once "
                          "acknowledged"},
                "duration_ms": {"type": "number", "minimum": 0, "description": "milliseconds"},
            },
        },
        "WebhookDeliveries": {
            "type": "object",
            "required": ["hook", "deliveries"],
            "properties": {
                "hook": {"type": "string"},
                "deliveries": {"type": "array", "maxItems": 100, "items": _ref("WebhookDelivery"),
                               "description": "newest first; kept in memory, lost at a restart"},
            },
        },
        "WebhookRedelivery": {
            "type": "object",
            "required": ["since"],
            "additionalProperties": False,
            "properties": {"since": {"anyOf": [_ref("Cursor"), {"const": "earliest"}],
                                     "description": "not ahead of the hook's cursor"}},
        },
    }


# -- OpenAPI ---------------------------------------------------------------------------------


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


def _errors(**by_status: tuple[str, ...]) -> dict[str, Any]:
    """Error responses by status (``s400=("bad_filter", ...)``) with the JSON error body."""
    return {
        status[1:]: _json(_error(*codes), "error: " + ", ".join(codes))
        for status, codes in by_status.items()
    }


def _filter_params(fields: tuple[str, ...], props: bool = True) -> list[dict[str, Any]]:
    """The filter as query parameters: a field each, alternatives separated by commas (or the
    field repeated), and every ``prop.<name>`` through one exploded object parameter."""
    return [{"$ref": f"#/components/parameters/filter.{f}"} for f in (*fields, *(("prop",) if props else ()))]


def _parameters() -> dict[str, dict[str, Any]]:
    """Query and header parameters used by several operations."""
    glob = {"type": "string", "minLength": 1}
    out: dict[str, dict[str, Any]] = {
        f"filter.{f}": {
            "name": f,
            "in": "query",
            "description": f"filter on `{f}`: globs (`*`), commas for alternatives"
            + (f"; names ({', '.join(RESULT_NAMES.values())}) or codes" if f == "result" else ""),
            "schema": glob,
        }
        for f in FILTER_FIELDS
    }
    out["filter.prop"] = {
        "name": "prop",
        "in": "query",
        "style": "form",
        "explode": True,
        "description": "filters on build properties: `prop.<name>=<globs>`, the value compared "
        "as a string (numbers as JSON writes them, `true`/`false`)",
        "schema": {"type": "object", "patternProperties": {PROP_PATTERN: glob},
                   "additionalProperties": False},
    }
    out["since"] = {
        "name": "since", "in": "query", "schema": _ref("Since"),
        "description": "where to start (default `now`)",
    }
    out["limit"] = {
        "name": "limit", "in": "query", "description": "the most items in the answer",
        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
    }
    out["offset"] = {
        "name": "offset", "in": "query", "description": "items to skip (a previous answer's `next_offset`)",
        "schema": {"type": "integer", "minimum": 0, "maximum": 1_000_000},
    }
    out["format"] = {
        "name": "format", "in": "query",
        "description": "`cloudevents`: each event as a CloudEvent 1.0, structured JSON mode "
        "(docs/protocol.md#cloudevents); `firehose` (default): the firehose envelope. Gaps and "
        "control messages are the same in both.",
        "schema": {"type": "string", "enum": list(FORMATS), "default": "firehose"},
    }
    return out


_API_ERRORS = _errors(s400=("bad_filter", "bad_request"))


def _get(summary: str, schema: dict[str, Any], params: list[dict[str, Any]] | None = None,
         errors: dict[str, Any] | None = None, tag: str = "api", op: str = "") -> dict[str, Any]:
    return {"get": {
        "operationId": op,
        "summary": summary,
        "tags": [tag],
        "parameters": params or [],
        "responses": {"200": _json(schema, "the answer"), **(_API_ERRORS if errors is None else errors)},
    }}


def _buckets(description: str, buckets: str) -> dict[str, Any]:
    """The answer of ``/api/trend`` and ``/api/waits``: ``buckets`` names their schema."""
    return _answer(description, {
        "bucket": _NUMBER, "window": _NUMBER,
        "builders": {"type": "array", "items": {
            "type": "object", "required": ["builder"],
            "properties": {"builder": {"type": "string"},
                           "buckets": {**_ref(buckets), "description": "left out with `series=all`"}}}},
        "all": {"type": "object", "required": ["buckets"], "description": "left out with `series=each`",
                "properties": {"buckets": _ref(buckets)}},
    }, ("bucket", "window", "builders"))


def _api_paths() -> dict[str, Any]:
    paging = [{"$ref": "#/components/parameters/limit"}, {"$ref": "#/components/parameters/offset"}]
    builder = [{"$ref": "#/components/parameters/filter.builder"}]
    branch = {"name": "branch", "in": "query", "schema": {"type": "string"}}
    window = {"name": "window", "in": "query", "description": "seconds back from now (default 7 days)",
              "schema": {"type": "number", "minimum": 1, "maximum": 366 * 86400}}
    by_builder = {"type": "object", "additionalProperties": {
        "type": "object", "required": ["pending", "oldest_waited"],
        "properties": {"pending": {"type": "integer"}, "oldest_waited": _NUMBER}}}
    total = {"type": "integer", "description": "matching items in all pages"}
    bucketed: list[dict[str, Any]] = [
        *builder,
        {"name": "bucket", "in": "query", "description": "seconds per bucket (default 3600)",
         "schema": {"type": "number", "minimum": 60, "maximum": 30 * 86400}},
        {**window, "schema": {"type": "number", "minimum": 60, "maximum": 366 * 86400}},
        {"name": "series", "in": "query",
         "description": "`both` (default), `all` (only the matched builders together; each builder "
                        "listed by name) or `each` (only per builder)",
         "schema": {"type": "string", "enum": ["both", "all", "each"]}},
    ]
    return {
        "/api": _get("the endpoints", _answer("The /api endpoints.", {
            "endpoints": {"type": "array", "items": {"type": "string"}}}, ("endpoints",)),
            errors={}, op="apiIndex"),
        "/api/queue": _get("build requests waiting to start, oldest first",
                           _list("requests", "Request", "Each with `waited` seconds.",
                                 by_builder=by_builder, total=total),
                           _filter_params(REQUEST_FILTER_FIELDS, props=False) + paging, op="queue"),
        "/api/running": _get("builds in progress, oldest first",
                             _list("builds", "Build", "Each with `elapsed` and `current_step`.", total=total),
                             _filter_params(BUILD_FILTER_FIELDS) + paging, op="running"),
        "/api/builds": _get("finished builds, newest first; with `revision=`, also its queued requests and "
                            "running builds, each with `status` (pending, running, finished)",
                            _list("builds", "Build", "Finished builds (with `revision=`: every build of it)."),
                            _filter_params(BUILD_FILTER_FIELDS) + paging, op="builds"),
        "/api/builds/{master}/{buildid}": {
            "parameters": [
                {"name": "master", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "buildid", "in": "path", "required": True,
                 "schema": {"type": "integer", "minimum": 0}},
            ],
            **_get("one build with its steps and properties",
                   _answer("The build.", {"build": _ref("Build")}, ("build",)),
                   errors={**_API_ERRORS, **_errors(s404=("not_found",))}, op="build"),
        },
        "/api/builders": _get("builders seen, with masters, tags and last build",
                              _answer("Builders by name.", {"builders": {"type": "array", "items": _ref("Builder")}},
                                      ("builders",)), builder, op="builders"),
        "/api/revisions": _get(
            "without `branch`: the branches; with it: the pushlog, newest revision first",
            {"oneOf": [
                _answer("The branches known, most recently active first.",
                        {"branches": {"type": "array", "items": {"type": "string"}}}, ("branches",)),
                _list("revisions", "Revision", "The branch's revisions (with `revision=`: that revision's rows).",
                      branch={"type": "string"}, revision={"type": "string"}),
            ]},
            [{**branch, "description": "the branch of the pushlog"},
             {"name": "revision", "in": "query", "description": "the rows of this revision (exact), in any "
              "branch (or in `branch`): is one push done", "schema": {"type": "string", "minLength": 1,
                                                                       "maxLength": 256}},
             *builder, *paging], op="revisions"),
        "/api/lastgreen": _get(
            "the newest revision of the branch whose counted builders all succeeded",
            _answer("`revision` is null when none is green.", {
                "branch": {"type": "string"},
                "revision": {"anyOf": [_ref("Revision"), {"type": "null"}]}}, ("branch", "revision")),
            [{**branch, "required": True}, *builder], op="lastgreen"),
        "/api/steps": _get(
            "step durations (seconds) per builder and step name, largest first",
            _list("steps", "StepTiming", "Durations in seconds.", window=_NUMBER),
            [*builder, window, {"name": "sort", "in": "query",
                                "schema": {"enum": ["total", "mean", "p50", "p95", "max", "count"]}}, *paging],
            op="steps"),
        "/api/trend": _get(
            "build durations over time, bucketed by start time, oldest first; with failures",
            _buckets("Per builder, its buckets (each with `failed` and `failure_rate`), and `all`: the "
                     "matched builders together.", "TrendBuckets"),
            bucketed, op="trend"),
        "/api/waits": _get(
            "queue waits over time: how long requests waited for their build, by submission time",
            _buckets("Per builder, its buckets of waits (seconds), and `all`: the matched builders together.",
                     "TimeBuckets"),
            bucketed, op="waits"),
        "/api/masters": _get(
            "masters (status, last heartbeat) and workers",
            _answer("Masters and workers.", {
                "masters": {"type": "array", "items": _record("A master.", ("master",))},
                "workers": {"type": "array", "items": _record("A worker.")}}, ("masters", "workers")),
            errors={}, op="masters"),
    }


def _webhook_paths() -> dict[str, Any]:
    auth = _errors(s401=("unauthorized",), s403=("no_admin_token",))
    auth["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    hook_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    not_found = _errors(s404=("not_found",))
    secured: list[dict[str, list[str]]] = [{"adminToken": []}]

    def op(op_id: str, summary: str, responses: dict[str, Any], body: str | None = None,
           links: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": ["webhooks"],
                               "security": secured, "responses": {**responses, **auth}}
        if body is not None:
            out["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
        if links:
            out["responses"]["201"]["links"] = links
        return out

    by_id = {"id": "$response.body#/id"}
    links = {
        "GetWebhook": {"operationId": "getWebhook", "parameters": by_id},
        "ChangeWebhook": {"operationId": "changeWebhook", "parameters": by_id},
        "DeleteWebhook": {"operationId": "deleteWebhook", "parameters": by_id},
        "ListWebhookDeliveries": {"operationId": "listWebhookDeliveries", "parameters": by_id},
        "RedeliverWebhook": {"operationId": "redeliverWebhook", "parameters": by_id},
    }
    return {
        "/api/webhooks": {
            "get": op("listWebhooks", "the hooks, oldest first",
                      {"200": _json({"type": "object", "required": ["webhooks"], "properties": {
                          "webhooks": {"type": "array", "items": _ref("Webhook")}}}, "the hooks")}),
            "post": op("createWebhook", "register a hook",
                       {"201": _json(_ref("NewWebhook"), "registered; the only answer with the secret",
                                     headers={"Location": {"schema": {"type": "string"},
                                                           "description": "/api/webhooks/<id>"}}),
                        **_errors(s400=("bad_webhook", "bad_cursor"), s409=("bad_webhook",))},
                       body="WebhookRegistration", links=links),
        },
        "/api/webhooks/{id}": {
            "parameters": [hook_id],
            "get": op("getWebhook", "one hook", {"200": _json(_ref("Webhook"), "the hook"), **not_found}),
            "patch": op("changeWebhook", "pause or re-enable a hook (it resumes at its cursor), rotate "
                        "its secret, change its format",
                        {"200": _json(_ref("Webhook"), "the hook"), **not_found,
                         **_errors(s400=("bad_webhook",), s409=("bad_webhook",))}, body="WebhookChange"),
            "delete": op("deleteWebhook", "remove a hook",
                         {"200": _json({"type": "object", "required": ["deleted"],
                                        "properties": {"deleted": {"type": "string"}}}, "removed"),
                          **not_found}),
        },
        "/api/webhooks/{id}/deliveries": {
            "parameters": [hook_id],
            "get": op("listWebhookDeliveries", "the hook's last 100 delivery attempts, newest first "
                      "(in memory: lost at a restart)",
                      {"200": _json(_ref("WebhookDeliveries"), "the delivery log"), **not_found}),
        },
        "/api/webhooks/{id}/redeliver": {
            "parameters": [hook_id],
            "post": op("redeliverWebhook", "deliver again every event after `since`: the hook's cursor "
                       "moves back there (saved) and delivery restarts from it",
                       {"200": _json(_ref("Webhook"), "the hook"), **not_found,
                        **_errors(s400=("bad_webhook", "bad_cursor"))}, body="WebhookRedelivery"),
        },
    }


def _paths() -> dict[str, Any]:
    stream = [{"$ref": "#/components/parameters/since"}, {"$ref": "#/components/parameters/format"},
              *_filter_params(FILTER_FIELDS)]
    bad_request = _errors(s400=("bad_filter", "bad_cursor", "bad_request"))
    retry_after = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
    ingest_errors = _errors(
        s400=("malformed_json",), s401=("unauthorized",), s403=("wrong_master", "no_masters"),
        s413=("too_large",), s422=("schema", "too_deep", "seq_order", "unstorable"),
        s503=("unavailable",),
    )
    ingest_errors["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    ingest_errors["503"]["headers"] = retry_after
    return {
        "/": {"get": {
            "operationId": "dashboard", "summary": "the dashboard page", "tags": ["other"],
            "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
        }},
        "/ingest": {"post": {
            "operationId": "ingest",
            "summary": "publish a batch of events of one master (what the Buildbot plugin sends)",
            "description": "Answered 200 only once the whole batch is durable: that answer is the "
            "acknowledgement. A rejected batch changes nothing. A batch may be resent any number "
            "of times: events already held count as `duplicates`.",
            "tags": ["ingest"],
            "security": [{"masterToken": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("IngestBatch")}}},
            "responses": {"200": _json(_ref("IngestAnswer"), "stored"), **ingest_errors},
        }},
        "/poll": {"get": {
            "operationId": "poll",
            "summary": "long-poll: the events after `since` matching the filter, or wait for some",
            "description": "Answers at once when matching events follow `since`: up to `limit` of them, "
            "having examined at most 2,000 events of history. Otherwise it answers when one is published "
            "or `timeout` seconds pass (then `events` is empty). `timeout` bounds only the wait for new "
            "events. A gap is answered at once, with `gap` and no events.",
            "tags": ["stream"],
            "parameters": [
                *stream,
                {"name": "timeout", "in": "query", "description": "seconds to wait (default 30)",
                 "schema": {"type": "number", "minimum": 0, "maximum": 300}},
                {"name": "limit", "in": "query", "description": "the most events per answer (default 100)",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
            ],
            "responses": {"200": _json(_ref("PollAnswer"), "events, or none after the timeout"), **bad_request},
        }},
        "/sse": {"get": {
            "operationId": "sse",
            "summary": "Server-Sent Events: a streaming GET that does not end (see /asyncapi.json)",
            "description": "Each event is an SSE message: `id:` its cursor, `event:` its type, "
            "`data:` the event (an `Event`, see /asyncapi.json) on one line. A gap is `event: "
            "gap`, its `id:` the cursor to resume from. The stream opens with `retry: 2000` and "
            "a comment naming the head cursor; a `: keepalive` comment every 15 s. "
            "`Last-Event-ID` (sent by EventSource when it reconnects) wins over `since`. "
            "Errors in the request are answered before any stream starts.",
            "tags": ["stream"],
            "x-streaming": True,
            "parameters": [
                *stream,
                {"name": "Last-Event-ID", "in": "header", "schema": _ref("Since"),
                 "description": "resume after this cursor (wins over `since`)"},
            ],
            "responses": {
                "200": {"description": "the stream, until the client leaves (or a slow/error gap)",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                **bad_request,
            },
        }},
        **_api_paths(),
        **_webhook_paths(),
        "/health": {"get": {
            "operationId": "health", "summary": "is this node serving and storing?", "tags": ["other"],
            "responses": {
                "200": _json(_ref("Health"), "`status: ok`"),
                "503": _json(_ref("Health"), "`status: degraded`: the journal cannot be written "
                             "(no batch is acknowledged); `reason` and `since` say why and since when"),
            },
        }},
        "/schema": {"get": {
            "operationId": "schema", "summary": "the JSON Schemas of an ingest batch and of an event",
            "tags": ["other"],
            "responses": {"200": _json(_ref("SchemaDocuments"), "the schemas")},
        }},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics", "tags": ["other"],
            "responses": {"200": {"description": "Prometheus text exposition format 0.0.4",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "this document", "tags": ["other"],
            "responses": {"200": _json({"type": "object", "required": ["openapi"]}, "OpenAPI 3.1")},
        }},
        "/asyncapi.json": {"get": {
            "operationId": "asyncapi", "summary": "the AsyncAPI 3.0 document of /ws and /sse",
            "tags": ["other"],
            "responses": {"200": _json({"type": "object", "required": ["asyncapi"]}, "AsyncAPI 3.0")},
        }},
    }


def _info(title: str, description: str) -> dict[str, Any]:
    return {
        "title": title,
        "version": DOCUMENT_VERSION,
        "description": description,
        "x-schema-version": SCHEMA_VERSION,
        "x-package-version": __version__,
    }


def openapi(server: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every HTTP endpoint.

    :param server: the base URL to name in ``servers`` (default: relative, ``/``: the server
        that served the document).
    """
    schemas = {**event_schemas(), **_stream_schemas(), **_http_schemas()}
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": _info(
            "firehose",
            "A live, resumable event stream of Buildbot masters: ingest, long-poll, SSE, "
            "queries of the build state (`/api`) and webhooks. The WebSocket and SSE streams are "
            f"described in /asyncapi.json. Event schema version {SCHEMA_VERSION} "
            "(docs/protocol.md says what may change without a new version).",
        ),
        "servers": [{"url": server or "/"}],
        "tags": [{"name": n} for n in ("ingest", "stream", "api", "webhooks", "other")],
        "paths": _paths(),
        "components": {
            "schemas": schemas,
            "parameters": _parameters(),
            "securitySchemes": {
                "masterToken": {"type": "http", "scheme": "bearer",
                                "description": "a master's token: it may publish only that master's events"},
                "adminToken": {"type": "http", "scheme": "bearer",
                               "description": "the webhook admin token (--webhook-admin-token)"},
            },
        },
    }


# -- AsyncAPI --------------------------------------------------------------------------------


def _message(name: str, schema: dict[str, Any], summary: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "title": name, "summary": summary, "contentType": "application/json",
            "payload": schema, **extra}


def _event_message(event_type: str) -> dict[str, Any]:
    entity = event_type.partition(".")[0]
    return _message(event_type, {
        "allOf": [_ref("Event")],
        "properties": {"type": {"const": event_type}, "data": _ref(_data_name(entity))},
    }, f"a {event_type} event", **{"x-sse-event": event_type})


def _command_schemas() -> dict[str, dict[str, Any]]:
    """The WebSocket commands and the control messages that answer them."""
    return {
        "Subscribe": {
            "type": "object", "required": ["cmd"],
            "description": "Start (or replace) the socket's subscription.",
            "properties": {
                "cmd": {"const": "subscribe"},
                "filter": {"anyOf": [_ref("Filter"), {"type": "null"}]},
                "since": {"anyOf": [_ref("Since"), {"type": "null"}]},
                "format": {"anyOf": [{"enum": list(FORMATS)}, {"type": "null"}]},
            },
        },
        "Unsubscribe": {"type": "object", "required": ["cmd"], "properties": {"cmd": {"const": "unsubscribe"}}},
        "Ping": {"type": "object", "required": ["cmd"], "properties": {"cmd": {"const": "ping"}}},
        "Subscribed": {
            "type": "object", "required": ["type", "filter", "cursor", "format"],
            "description": "`cursor` is the head when the subscription was made; events follow.",
            "properties": {"type": {"const": "subscribed"}, "filter": _ref("NormalFilter"),
                           "cursor": _ref("Cursor"), "format": {"enum": list(FORMATS)}},
        },
        "Unsubscribed": {"type": "object", "required": ["type"], "properties": {"type": {"const": "unsubscribed"}}},
        "Pong": {"type": "object", "required": ["type", "cursor"],
                 "properties": {"type": {"const": "pong"}, "cursor": _ref("Cursor")}},
        "CommandError": {
            "type": "object", "required": ["type", "error", "message"],
            "description": "A command was refused; the socket stays open (and a current "
            "subscription goes on).",
            "properties": {"type": {"const": "error"},
                           "error": {"enum": ["malformed_json", "bad_command", "bad_filter", "bad_cursor"]},
                           "message": {"type": "string"}},
        },
    }


def asyncapi(host: str = "127.0.0.1:8080") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the streams: ``/ws`` (commands in, events and control
    messages out) and ``/sse`` (events and gaps out).

    :param host: ``host:port`` to name in ``servers``.
    """
    events = {t: _event_message(t) for t in EVENT_TYPES}
    control = {
        "subscribe": _message("subscribe", _ref("Subscribe"), "subscribe (replaces the current subscription)"),
        "unsubscribe": _message("unsubscribe", _ref("Unsubscribe"), "end the subscription"),
        "ping": _message("ping", _ref("Ping"), "ask for the head cursor"),
        "subscribed": _message("subscribed", _ref("Subscribed"), "the subscription is made"),
        "unsubscribed": _message("unsubscribed", _ref("Unsubscribed"), "no more events"),
        "pong": _message("pong", _ref("Pong"), "the head cursor"),
        "error": _message("error", _ref("CommandError"), "a command was refused"),
        "gap": _message("gap", _ref("Gap"), "events are missing: resume from `cursor`",
                        **{"x-sse-event": "gap"}),
        "cloudevent": _message("cloudevent", _ref("CloudEvent"),
                               "an event as a CloudEvent (format=cloudevents); on SSE its `event:` is the firehose type"),
    }
    messages = {**control, **events}

    def refs(channel: str, names: list[str]) -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/{channel}/messages/{n}"} for n in names]

    sse_query = {
        "type": "object",
        "description": "`since` and the filter fields (globs, commas for alternatives, "
        "`prop.<name>`), as on /poll.",
        "properties": {"since": _ref("Since"), "format": {"enum": list(FORMATS)},
                       **{f: {"type": "string", "minLength": 1} for f in FILTER_FIELDS}},
        "patternProperties": {PROP_PATTERN: {"type": "string", "minLength": 1}},
        "additionalProperties": False,
    }
    event_names = list(EVENT_TYPES)
    return {
        "asyncapi": "3.0.0",
        "id": "urn:firehose:streams",
        "info": _info(
            "firehose streams",
            "The live, resumable event stream over WebSocket (`/ws`) and Server-Sent Events "
            "(`/sse`). Events are told from control messages by their `type`: an event's has "
            "a dot (`build.finished`), a control message's never. Every event's `id` is its "
            "cursor: resume with `since=<id>` to get every later matching event once, in order. "
            "HTTP endpoints, long-poll included, are in /openapi.json.",
        ),
        "defaultContentType": "application/json",
        "servers": {
            "ws": {"host": host, "protocol": "ws", "description": "WebSocket (wss behind TLS)"},
            "http": {"host": host, "protocol": "http", "description": "SSE (https behind TLS)"},
        },
        "channels": {
            "ws": {
                "address": "/ws",
                "title": "WebSocket",
                "description": "Send commands as JSON text messages; each event arrives as one "
                "message. Client messages are at most 64 KiB and rate-limited (past the limit the "
                "socket is closed with 1008); the server pings every 30 s. No compression.",
                "servers": [{"$ref": "#/servers/ws"}],
                "messages": messages,
                "bindings": {"ws": {"method": "GET", "bindingVersion": "0.1.0"}},
            },
            "sse": {
                "address": "/sse",
                "title": "Server-Sent Events",
                "description": "`GET /sse?<filter>&since=<cursor>` (or `Last-Event-ID`). Each "
                "message: `id:` the cursor, `event:` the type (`x-sse-event`), `data:` the JSON "
                "payload. After a `slow` or `error` gap the server ends the stream; reconnecting "
                "with its id catches up.",
                "servers": [{"$ref": "#/servers/http"}],
                "messages": {"gap": control["gap"], "cloudevent": control["cloudevent"], **events},
            },
        },
        "operations": {
            "subscribe": {
                "action": "send", "channel": {"$ref": "#/channels/ws"},
                "summary": "subscribe with a filter, from `since`",
                "messages": refs("ws", ["subscribe"]),
                "reply": {"channel": {"$ref": "#/channels/ws"}, "messages": refs("ws", ["subscribed", "error"])},
            },
            "unsubscribe": {
                "action": "send", "channel": {"$ref": "#/channels/ws"},
                "messages": refs("ws", ["unsubscribe"]),
                "reply": {"channel": {"$ref": "#/channels/ws"}, "messages": refs("ws", ["unsubscribed"])},
            },
            "ping": {
                "action": "send", "channel": {"$ref": "#/channels/ws"},
                "messages": refs("ws", ["ping"]),
                "reply": {"channel": {"$ref": "#/channels/ws"}, "messages": refs("ws", ["pong", "error"])},
            },
            "receiveWebSocket": {
                "action": "receive", "channel": {"$ref": "#/channels/ws"},
                "summary": "events of the subscription, and gaps",
                "messages": refs("ws", ["gap", "cloudevent", *event_names]),
            },
            "receiveSSE": {
                "action": "receive", "channel": {"$ref": "#/channels/sse"},
                "summary": "events matching the query's filter, and gaps",
                "messages": refs("sse", ["gap", "cloudevent", *event_names]),
                "bindings": {"http": {"method": "GET", "query": sse_query, "bindingVersion": "0.3.0"}},
            },
        },
        "components": {
            "schemas": {**event_schemas(), **_stream_schemas(), **_command_schemas()},
        },
    }


__all__ = ["CURSOR_PATTERN", "DOCUMENT_VERSION", "asyncapi", "event_schemas", "openapi"]
