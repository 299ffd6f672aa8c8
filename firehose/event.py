"""The event envelope, and the one place JSON is encoded and decoded.

An event is encoded once, when the journal gives it an offset; every subscriber then receives the
same bytes. Filter fields are read from the decoded data lazily and cached on the event, so a
filter costs a dictionary lookup per subscriber, not a decode.
"""

from __future__ import annotations

from typing import Any

import orjson

#: Every event type a master may publish, ``<entity>.<verb>``.
EVENT_TYPES: tuple[str, ...] = (
    "build.started",
    "build.updated",
    "build.finished",
    "step.started",
    "step.finished",
    "request.submitted",
    "request.claimed",
    "request.completed",
    "request.cancelled",
    "buildset.submitted",
    "buildset.completed",
    "change.new",
    "worker.connected",
    "worker.disconnected",
    "master.started",
    "master.stopped",
    "master.heartbeat",
    "log.started",
    "log.lines",
    "log.finished",
)

#: Buildbot's result codes, by the names events carry in ``data.result``.
RESULT_NAMES: dict[int, str] = {
    0: "success",
    1: "warnings",
    2: "failure",
    3: "skipped",
    4: "exception",
    5: "retry",
    6: "cancelled",
}

#: Fields a filter may name, besides ``prop.<name>``.  Each is read from the event's ``data``
#: except ``type`` and ``master``, which are on the envelope.
FILTER_FIELDS: tuple[str, ...] = (
    "type",
    "master",
    "builder",
    "branch",
    "project",
    "repository",
    "revision",
    "worker",
    "result",
)
#: The filter fields a build request record of the query state has (``/api/queue``).
REQUEST_FILTER_FIELDS: tuple[str, ...] = ("master", "builder", "branch", "revision", "project", "repository")
#: The filter fields a build record has (``prop.<name>`` too).
BUILD_FILTER_FIELDS: tuple[str, ...] = (*REQUEST_FILTER_FIELDS, "worker", "result")

# The codec, in one place.  orjson, on evidence: per ~700-byte event it encodes in ~0.5 us and
# decodes in ~2 us, where simplejson (C speedups) takes ~13 and ~6 (../shared/notes/fanout.md;
# docs/performance.md), and every event is decoded once at ingest, encoded once, and decoded
# again when replayed or rebuilt.  It is strict where it should be: no NaN, no lone surrogates.
_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` as compact UTF-8 JSON."""
    return orjson.dumps(obj, option=_OPTIONS)


def loads(data: bytes | str) -> Any:
    """Decode JSON; raises ``ValueError`` on malformed input (including invalid UTF-8)."""
    return orjson.loads(data)


class Event:
    """One journaled event: its offset in the journal and its encoded JSON.

    It holds nothing of any transport: each transport frames the bytes its own way, once per
    event, in its own cache (:mod:`firehose.transports.frames`).

    :param offset: position in the journal, strictly increasing.
    :param cursor: the opaque cursor string of this event (its public ``id``).
    :param encoded: the JSON object delivered to subscribers, encoded once.
    :param obj: the decoded object, when the creator already has it (saves a decode).
    """

    __slots__ = ("offset", "cursor", "type", "encoded", "_obj", "_fields")

    def __init__(
        self,
        offset: int,
        cursor: str,
        type: str,
        encoded: bytes,
        obj: dict[str, Any] | None = None,
    ) -> None:
        self.offset = offset
        self.cursor = cursor
        self.type = type
        self.encoded = encoded
        self._obj = obj
        self._fields: dict[str, tuple[str, ...]] = {}

    @classmethod
    def build(
        cls,
        offset: int,
        cursor: str,
        *,
        type: str,
        master: str,
        incarnation: str,
        seq: int,
        time: float,
        data: dict[str, Any],
    ) -> Event:
        """Make the delivered form of an ingested event and encode it."""
        obj = {
            "id": cursor,
            "type": type,
            "master": master,
            "incarnation": incarnation,
            "seq": seq,
            "time": time,
            "data": data,
        }
        return cls(offset, cursor, type, dumps(obj), obj)

    @property
    def obj(self) -> dict[str, Any]:
        """The decoded event (decoded at most once)."""
        if self._obj is None:
            self._obj = loads(self.encoded)
        return self._obj

    def values(self, field: str) -> tuple[str, ...]:
        """The string values of a filter field for this event, cached (see :func:`field_values`)."""
        cached = self._fields.get(field)
        if cached is None:
            obj = self.obj
            cached = self._fields[field] = field_values(obj, obj["data"], field)
        return cached

    def __repr__(self) -> str:
        return f"<Event {self.cursor} {self.type}>"


def field_values(envelope: dict[str, Any], data: dict[str, Any], field: str) -> tuple[str, ...]:
    """The string values a filter field has for an event (or a record shaped like its data).

    ``type`` and ``master`` are read from the envelope, ``prop.<name>`` from
    ``data["properties"]``, the rest from ``data``.  ``result`` matches both the name
    (``failure``) and the code (``2``).  A list value (a buildset's branches, say) yields each
    of its items; an absent field yields nothing, so it never matches.
    """
    if field in ("type", "master"):
        raw: Any = envelope.get(field)
    elif field.startswith("prop."):
        props = data.get("properties")
        raw = props.get(field[5:]) if isinstance(props, dict) else None
    else:
        raw = data.get(field)
    values = _strings(raw)
    if field == "result":
        code = data.get("results")
        if isinstance(code, int) and not isinstance(code, bool):
            values += (str(code),)
    return values


def _strings(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, list | tuple):
        return tuple(_scalar(v) for v in raw if v is not None)
    return (_scalar(raw),)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return dumps(value).decode("utf-8")
    return str(value)
