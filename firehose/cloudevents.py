"""Events as CloudEvents 1.0: the mapping from the firehose envelope, pure and in one place.

A subscriber that already speaks CloudEvents (Knative, Argo Events, an event router, the SDKs)
asks for ``format=cloudevents`` and gets each event as a CloudEvent in structured JSON mode,
on every transport; webhooks may use binary mode (``ce-*`` headers) from the same attributes.
Only events are mapped: gaps and control messages are not events and keep their own shape.

The mapping (docs/protocol.md, "CloudEvents", is the public description):

- ``id`` is the event's cursor, unique in the stream, so a CloudEvent's ``id`` resumes a
  subscription exactly as a firehose event's ``id`` does;
- ``source`` names the master that produced it, ``urn:firehose:master:<name>`` (master names
  are URI-safe by the schema's pattern);
- ``type`` is ``org.buildbot.firehose.<entity>.<verb>.v<major>``: reverse-DNS under Buildbot's
  domain, versioned by the major of :data:`firehose.schema.SCHEMA_VERSION`, which changes only
  when a field is removed or changes meaning (a consumer routing on ``type`` is never handed a
  shape it does not know);
- ``subject`` is the entity as a path of its Buildbot ids, parent first (``builds/311``,
  ``builds/311/steps/1204``), so a prefix selects a build with its steps and logs;
- ``time`` is the event's ``time`` in RFC 3339 (UTC, ``Z``);
- ``dataschema`` is ``urn:firehose:schema:<SCHEMA_VERSION>:<entity>``, the schema of ``data``
  for that entity (served in ``GET /schema``), changing with every schema version;
- ``data`` is the firehose event's ``data``, unchanged;
- extensions: ``sequence`` (the cursor's offset zero-padded to 20 digits, so string order is
  stream order within an epoch), ``firehoseepoch`` (the cursor's epoch), ``firehosemaster``,
  ``firehoseincarnation``, ``firehoseseq``.  ``firehoseseq`` is the decimal string of ``seq``:
  a CloudEvents Integer is 32 bits and ``seq`` may reach 2^63-1.

Nothing here imports Twisted: the webhook sender and tests use it as they are.
"""

from __future__ import annotations

import datetime
from typing import Any
from urllib.parse import quote

from firehose.event import Event, dumps
from firehose.schema import SCHEMA_VERSION

#: The ``format`` values a subscriber may ask for; the first is the default.
FORMATS: tuple[str, ...] = ("firehose", "cloudevents")
FIREHOSE = "firehose"
CLOUDEVENTS = "cloudevents"

SPECVERSION = "1.0"
#: Prefix of every ``type``: reverse-DNS, under Buildbot's domain.
TYPE_PREFIX = "org.buildbot.firehose."
#: The ``type`` version: the event schema's major.
TYPE_VERSION = "v" + SCHEMA_VERSION.split(".")[0]
SOURCE_PREFIX = "urn:firehose:master:"
DATASCHEMA_PREFIX = f"urn:firehose:schema:{SCHEMA_VERSION}:"
DATACONTENTTYPE = "application/json"
#: Media type of one structured-mode CloudEvent in JSON (an HTTP body of its own).
CONTENT_TYPE = "application/cloudevents+json"
#: Digits of ``sequence``: a cursor's offset has at most 19.
SEQUENCE_DIGITS = 20

#: The collection and id field naming each entity in ``subject``, by the first part of the event type.
_SUBJECTS: dict[str, tuple[str, str]] = {
    "build": ("builds", "buildid"),
    "request": ("buildrequests", "buildrequestid"),
    "buildset": ("buildsets", "buildsetid"),
    "change": ("changes", "changeid"),
}
_string = {"type": "string", "minLength": 1}
#: JSON Schema (2020-12 and draft-07 alike: no ``$schema``, no ``$id``) of one structured
#: CloudEvent as :func:`encode` makes it, for /openapi.json and /asyncapi.json to share rather
#: than copy.  ``data`` is any object here; its schema per entity is what ``dataschema`` names.
CLOUDEVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A firehose event as a CloudEvent 1.0, structured JSON mode "
    "(`format=cloudevents`). `id` is the cursor; `sequence` is the cursor's offset, zero-padded.",
    "required": ["specversion", "id", "source", "type", "datacontenttype", "dataschema", "sequence",
                 "firehoseepoch", "firehosemaster", "firehoseincarnation", "firehoseseq", "data"],
    "additionalProperties": False,
    "properties": {
        "specversion": {"const": SPECVERSION},
        "id": _string,
        "source": {"type": "string", "pattern": "^urn:firehose:master:"},
        "type": {"type": "string", "pattern": r"^org\.buildbot\.firehose\.[a-z]+\.[a-z]+\.v[0-9]+$"},
        "subject": _string,
        "time": {"type": "string", "format": "date-time"},
        "datacontenttype": {"const": DATACONTENTTYPE},
        "dataschema": {"type": "string", "pattern": "^urn:firehose:schema:"},
        "sequence": {"type": "string", "pattern": f"^[0-9]{{{SEQUENCE_DIGITS}}}$"},
        "firehoseepoch": _string,
        "firehosemaster": _string,
        "firehoseincarnation": _string,
        "firehoseseq": {"type": "string", "pattern": "^[1-9][0-9]*$"},
        "data": {"type": "object"},
    },
}
#: The latest instant RFC 3339 can write (four-digit years), in epoch seconds.
_MAX_TIME = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC).timestamp()


def parse_format(value: str | None) -> str:
    """The format a subscriber asked for: ``None`` or ``""`` is the firehose envelope.

    :raises ValueError: for anything else, naming the allowed values (an HTTP 400
        ``bad_request``, a WebSocket ``error``).
    """
    if value is None or value == "":
        return FIREHOSE
    if value in FORMATS:
        return value
    allowed = ", ".join(FORMATS)
    raise ValueError(f"'format' must be one of {allowed}, not {value[:40]!r}")


def event_type(firehose_type: str) -> str:
    """``build.finished`` -> ``org.buildbot.firehose.build.finished.v1``."""
    return f"{TYPE_PREFIX}{firehose_type}.{TYPE_VERSION}"


def source(master: str) -> str:
    """The ``source`` of a master's events."""
    return SOURCE_PREFIX + quote(master, safe="")


def sequence(offset: int) -> str:
    """A cursor's offset as the ``sequence`` extension: zero-padded, so strings sort as numbers."""
    return f"{offset:0{SEQUENCE_DIGITS}d}"


def subject(firehose_type: str, data: dict[str, Any]) -> str | None:
    """The entity an event is about, as a path of Buildbot ids, or ``None`` (master events,
    whose entity is the ``source`` itself, or an event lacking the id)."""
    entity = firehose_type.partition(".")[0]
    if entity in _SUBJECTS:
        collection, field = _SUBJECTS[entity]
        return _path(collection, data.get(field))
    if entity == "worker":
        return _path("workers", data.get("worker"))
    if entity in ("step", "log"):
        build = _path("builds", data.get("buildid"))
        step = _path("steps", data.get("stepid"))
        if build is None or step is None:
            return None
        if entity == "step":
            return f"{build}/{step}"
        log = _path("logs", data.get("logid"))
        return None if log is None else f"{build}/{step}/{log}"
    return None


def _path(collection: str, ident: Any) -> str | None:
    if isinstance(ident, bool) or not isinstance(ident, int | str) or ident == "":
        return None
    return f"{collection}/{quote(str(ident), safe='')}"


def rfc3339(seconds: float) -> str | None:
    """Epoch seconds in RFC 3339 (UTC, ``Z``, microseconds when there are any), or ``None``
    beyond what it can write (the schema allows times up to 2^53 seconds)."""
    if not 0 <= seconds <= _MAX_TIME:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")


def attributes(event: Event) -> dict[str, Any]:
    """The context attributes of ``event`` (everything but ``data``), all strings: what a
    structured event carries beside ``data`` and a binary-mode message puts in ``ce-*``
    headers (``datacontenttype`` then goes in ``Content-Type``)."""
    obj = event.obj
    epoch, _, _ = event.cursor.rpartition(":")
    ftype = obj["type"]
    entity = ftype.partition(".")[0]
    attrs: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event.cursor,
        "source": source(obj["master"]),
        "type": event_type(ftype),
    }
    subj = subject(ftype, obj["data"])
    if subj is not None:
        attrs["subject"] = subj
    when = rfc3339(obj["time"])
    if when is not None:
        attrs["time"] = when
    attrs["datacontenttype"] = DATACONTENTTYPE
    attrs["dataschema"] = DATASCHEMA_PREFIX + entity
    attrs["sequence"] = sequence(event.offset)
    attrs["firehoseepoch"] = epoch
    attrs["firehosemaster"] = obj["master"]
    attrs["firehoseincarnation"] = obj["incarnation"]
    attrs["firehoseseq"] = str(obj["seq"])
    return attrs


def structured(event: Event) -> dict[str, Any]:
    """``event`` as a structured-mode CloudEvent (a JSON object)."""
    ce = attributes(event)
    ce["data"] = event.obj["data"]
    return ce


def encode(event: Event) -> bytes:
    """``event`` as a structured-mode CloudEvent in compact JSON: what ``format=cloudevents``
    delivers.  Transports call it once per event and cache the result with their frames."""
    return dumps(structured(event))


def binary_headers(event: Event) -> dict[str, str]:
    """The HTTP headers of ``event`` in binary mode: ``ce-<attribute>`` for each attribute
    and ``Content-Type`` for ``datacontenttype``; the body is then ``data`` as JSON
    (:func:`data_bytes`).  Values are percent-encoded where the HTTP binding asks (outside
    printable ASCII, space, ``"`` and ``%``)."""
    headers: dict[str, str] = {}
    for name, value in attributes(event).items():
        if name == "datacontenttype":
            headers["Content-Type"] = value
        else:
            headers["ce-" + name] = _header_value(value)
    return headers


def data_bytes(event: Event) -> bytes:
    """The body of ``event`` in binary mode: its ``data`` as compact JSON."""
    return dumps(event.obj["data"])


def _header_value(value: str) -> str:
    return "".join(
        ch if "!" <= ch <= "~" and ch not in '"%' else quote(ch, safe="") for ch in value
    )
