"""JSON Schema of what a master sends to ``POST /ingest``, shared by the server and the plugin.

The schema is strict about the envelope (a retry must be recognisable as one) and about the
identity fields each type needs to be useful, and open about the rest of ``data``: a newer
plugin may add fields without breaking an older server.  It is compiled once with
fastjsonschema (tens of times faster than interpreting it, which matters on the ingest path).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, cast

import fastjsonschema

from firehose.event import EVENT_TYPES

_TYPE_SET = frozenset(EVENT_TYPES)

#: Names of masters: what a filter or a metric label may safely contain.
MASTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

#: The largest ``seq``: the journal stores it in an SQLite INTEGER (signed 64 bits).
MAX_SEQ = 2**63 - 1
#: The largest ``time`` (seconds): beyond 2**53 a JavaScript client no longer reads it exactly.
MAX_TIME = 2**53
#: How deeply an event may nest (the event object is level 1, its ``data`` level 2).  The
#: encoder refuses about 254 levels, and nothing a master reports needs more than a handful.
MAX_DEPTH = 32
#: The most events one ingest batch may hold (the plugin sends at most 1000 by default).
MAX_BATCH_EVENTS = 10_000
#: The version of the event schema, ``MAJOR.MINOR`` (docs/protocol.md, "Versioning"): optional
#: fields and new control messages bump the minor; removing a field, or changing what one means,
#: the major.  Carried by the schemas below (``x-schema-version``) and by /openapi.json and
#: /asyncapi.json.
SCHEMA_VERSION = "1.0"

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
        "seq": {"type": "integer", "minimum": 1, "maximum": MAX_SEQ},
        "type": {"enum": list(EVENT_TYPES)},
        "time": {"type": "number", "minimum": 0, "maximum": MAX_TIME},
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



def _field_names(schema: Any) -> frozenset[str]:
    names: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            names.update(node.get("properties", {}) if isinstance(node.get("properties"), dict) else ())
            names.update(n for n in node.get("required", ()) if isinstance(n, str))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return frozenset(names)


#: Every field name the schema knows: the fixed vocabulary of events (``buildid``,
#: ``builder``, ...), as opposed to free-form keys such as property names.
FIELD_NAMES: frozenset[str] = _field_names(EVENT_SCHEMA)

#: Schema of the body of ``POST /ingest``: a non-empty array of events from one master.
BATCH_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "$id": "https://firehose.invalid/schema/ingest-batch.json",
    "title": "firehose ingest batch",
    "x-schema-version": SCHEMA_VERSION,
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_BATCH_EVENTS,
    "items": EVENT_SCHEMA,
}

#: Schema of an event as subscribers receive it: what a master sent, plus its cursor ``id``.
DELIVERED_SCHEMA: dict[str, Any] = {
    **EVENT_SCHEMA,
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "firehose event",
    "x-schema-version": SCHEMA_VERSION,
    "required": ["id", *EVENT_SCHEMA["required"]],
    "properties": {**EVENT_SCHEMA["properties"], "id": {"type": "string"}},
}


class SchemaError(ValueError):
    """The input does not match the schema; the message says where and why.

    :param code: the ``error`` code of the 422 answer, naming the kind of problem.
    """

    def __init__(self, message: str, code: str = "schema") -> None:
        super().__init__(message)
        self.code = code


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
    return fastjsonschema.compile(_type_schema(event_type))


#: Keywords that say nothing about validity; a schema with any keyword not here or below gets no
#: fast check (fastjsonschema decides alone).
_ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "x-schema-version", "default", "examples"})
_FAST_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "object": (dict,), "array": (list,),
    "boolean": (bool,), "null": (type(None),),
}
#: The keywords that apply to one kind of value: the fast check knows them only with that one
#: kind declared (JSON Schema ignores ``minimum`` on a string, say).
_FOR_KINDS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("pattern", "minLength", "maxLength"), ("string",)),
    **dict.fromkeys(("minimum", "maximum"), ("integer", "number")),
    **dict.fromkeys(("properties", "required", "additionalProperties"), ("object",)),
    "items": ("array",),
}
#: fastjsonschema's own reading of a pattern: every unescaped ``$`` is the end of the string.
_DOLLAR = re.compile(r"(?<!\\)\$")


class _Unsupported(Exception):
    """A schema keyword (or combination) the fast check does not know: no fast check."""


class _FastCode:
    """Python source of a function that says ``True`` only of a value the schema accepts.

    It is a conservative copy of the schema: exact types only (``type(v) is int``, so ``5.0``,
    ``True`` or a ``str`` subclass is "not sure"), and ``False`` means only "not sure": the
    caller then asks fastjsonschema, which decides and words the error.  So what is accepted,
    and every error message, stays fastjsonschema's; the fast check only skips its work for
    the events that are plainly valid (nearly all).
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def const(self, value: Any) -> str:
        name = self.name("_k")
        self.consts[name] = value
        return name

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def check(self, schema: Any, var: str, depth: int) -> None:
        """Lines that ``return False`` unless ``var`` is plainly valid against ``schema``."""
        if not isinstance(schema, dict):
            raise _Unsupported(schema)
        unknown = set(schema) - _ANNOTATIONS - {
            "type", "properties", "required", "additionalProperties", "items", "enum", "pattern",
            "minLength", "maxLength", "minimum", "maximum",
        }
        if unknown:
            raise _Unsupported(unknown)
        kind = schema.get("type")
        kinds = _kinds(schema)
        if kind is not None:
            if kinds is None or any(k not in _FAST_TYPES for k in kinds):
                raise _Unsupported(kind)
            types = tuple(t for k in kinds for t in _FAST_TYPES[k])
            if len(types) == 1:
                self.emit(depth, f"if type({var}) is not {self.const(types[0])}: return False")
            else:
                self.emit(depth, f"if type({var}) not in {self.const(types)}: return False")
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not all(type(v) is str for v in values):
                raise _Unsupported(values)
            self.emit(depth, f"if type({var}) is not str or {var} not in {self.const(frozenset(values))}: return False")
        # The keywords below apply to one kind of value: only with that one kind declared.
        for word in schema:
            if word in _FOR_KINDS and (kinds is None or len(kinds) != 1 or kinds[0] not in _FOR_KINDS[word]):
                raise _Unsupported((word, kind))
        if "pattern" in schema:
            regex = re.compile(_DOLLAR.sub(r"\\Z", schema["pattern"]))
            self.emit(depth, f"if not {self.const(regex.search)}({var}): return False")
        for word, op in (("minLength", "<"), ("maxLength", ">")):
            if word in schema:
                self.emit(depth, f"if len({var}) {op} {int(schema[word])}: return False")
        for word, op in (("minimum", "<"), ("maximum", ">")):
            if word in schema:
                bound = schema[word]
                if type(bound) not in (int, float):
                    raise _Unsupported(bound)
                self.emit(depth, f"if {var} {op} {self.const(bound)}: return False")
        if kinds == ["object"]:
            self._object(schema, var, depth)
        if kinds == ["array"] and "items" in schema:
            item = self.name("_i")
            self.emit(depth, f"for {item} in {var}:")
            self.check(schema["items"], item, depth + 1)

    def _object(self, schema: dict[str, Any], var: str, depth: int) -> None:
        props = schema.get("properties", {})
        required = schema.get("required", [])
        extra = schema.get("additionalProperties", True)
        if not isinstance(props, dict) or not isinstance(required, list) or extra not in (True, False):
            raise _Unsupported(schema)
        if required:
            self.emit(depth, f"if not {self.const(frozenset(required))} <= {var}.keys(): return False")
        if extra is False:
            self.emit(depth, f"if not {var}.keys() <= {self.const(frozenset(props))}: return False")
        for key, sub in props.items():
            value = self.name("_v")
            kinds = _kinds(sub) if isinstance(sub, dict) and set(sub) - _ANNOTATIONS == {"type"} else None
            if kinds and kinds[0] in _DEFAULTS and key not in required:
                # Only a type to check: one line, with a default of an accepted type standing
                # in for an absent value (it is only looked at, never changed).
                before = len(self.lines)
                self.check(sub, f"{var}.get({key!r}, {self.const(_DEFAULTS[kinds[0]])})", depth)
                if len(self.lines) != before + 1:
                    raise _Unsupported(sub)  # cannot happen: a type is one line
                continue
            if key in required:
                self.emit(depth, f"{value} = {var}[{key!r}]")
                self.check(sub, value, depth)
            else:
                self.emit(depth, f"{value} = {var}.get({key!r}, _missing)")
                self.emit(depth, f"if {value} is not _missing:")
                start = len(self.lines)
                self.check(sub, value, depth + 1)
                if len(self.lines) == start:
                    self.lines.pop()  # nothing to check (an empty schema): drop the ``if``
                    self.lines.pop()


def _kinds(schema: dict[str, Any]) -> list[str] | None:
    """The kinds ``type`` names, or ``None`` when it names none (or is not a name or list)."""
    kind = schema.get("type")
    kinds = [kind] if isinstance(kind, str) else kind
    return kinds if isinstance(kinds, list) and kinds and all(isinstance(k, str) for k in kinds) else None


#: A value of each kind, standing in for an absent optional value whose type is checked.
_DEFAULTS: dict[str, Any] = {
    "string": "", "integer": 0, "number": 0, "object": {}, "array": [], "boolean": False, "null": None,
}


def _fast_check(schema: dict[str, Any]) -> Callable[[Any], bool] | None:
    """A function that is ``True`` only of values ``schema`` accepts (see :class:`_FastCode`),
    or ``None`` when the schema uses what the fast check does not know."""
    code = _FastCode()
    try:
        code.check(schema, "e", 1)
    except _Unsupported:
        return None
    source = "def check(e):\n" + "\n".join(code.lines) + "\n    return True\n"
    namespace: dict[str, Any] = {**code.consts, "_missing": object()}
    exec(compile(source, "<firehose.schema fast check>", "exec"), namespace)  # noqa: S102 (our own source)
    return cast(Callable[[Any], bool], namespace["check"])


def _type_schema(event_type: str) -> dict[str, Any]:
    """The event schema with ``data`` checked by its entity's schema directly."""
    entity = event_type.partition(".")[0]
    schema = {k: v for k, v in EVENT_SCHEMA.items() if k != "allOf"}
    schema["properties"] = {**EVENT_SCHEMA["properties"], "data": _DATA_BY_ENTITY.get(entity, {"type": "object"})}
    return {**schema, "$schema": BATCH_SCHEMA["$schema"]}


def _never(event: Any) -> bool:
    return False


#: Per event type, its fast check (:func:`_fast_check`; made on first use, ~1 ms a type).
_FAST: dict[str, Callable[[Any], bool]] = {}


def _fast_for(event_type: str) -> Callable[[Any], bool]:
    check = _FAST.get(event_type)
    if check is None:
        check = _FAST[event_type] = _fast_check(_type_schema(event_type)) or _never
    return check


def validate_batch(batch: Any) -> list[dict[str, Any]]:
    """Check an ingest batch; return it, or raise :class:`SchemaError` naming the problem.

    Beyond the schema, every limit the journal and the encoder have is checked here, at the
    door, so that a batch accepted here can always be stored: a real integer ``seq`` (JSON
    Schema takes ``5.0`` for an integer, and a number past 2**64 arrives as a float), no
    nesting deeper than :data:`MAX_DEPTH`, and seqs strictly increasing within the batch for
    each ``(master, incarnation)`` (the journal would otherwise drop the later, smaller one as
    a duplicate, silently).
    """
    if isinstance(batch, list) and batch and len(batch) <= MAX_BATCH_EVENTS:
        fast = _FAST
        try:
            for event in batch:
                kind = event["type"]
                check = fast.get(kind) if type(kind) is str else None
                if check is None:
                    if kind not in _TYPE_SET:
                        raise KeyError(kind)
                    check = _fast_for(kind)
                if not check(event):
                    _for_type(kind)(event)
        except (fastjsonschema.JsonSchemaValueException, KeyError, TypeError):
            _validate_whole(batch)  # names the problem exactly
    else:
        _validate_whole(batch)
    last: dict[tuple[str, str], int] = {}
    room = MAX_DEPTH - 2
    for i, event in enumerate(batch):
        if type(event["seq"]) is not int or not _fits(event["data"], room):
            _check_limits(event, f"batch[{i}]")  # raises, naming the problem
        key = (event["master"], event["incarnation"])
        seq = event["seq"]
        previous = last.get(key)
        if previous is not None and seq <= previous:
            raise SchemaError(
                f"batch[{i}].seq is {seq}, not above {previous} before it: seqs must increase "
                "strictly within a batch",
                "seq_order",
            )
        last[key] = seq
    return batch


def _validate_whole(batch: Any) -> None:
    try:
        _compiled("batch")(batch)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise SchemaError(_describe(exc)) from None


def _check_limits(event: dict[str, Any], where: str) -> None:
    """What the schema cannot say about a schema-valid event: a real integer seq, the depth."""
    if type(event["seq"]) is not int:
        raise SchemaError(f"{where}.seq must be an integer, not {event['seq']!r}")
    if not _fits(event["data"], MAX_DEPTH - 2):
        path = _too_deep(event["data"], MAX_DEPTH - 2)
        raise SchemaError(f"{where}.data{path} nests deeper than {MAX_DEPTH} levels", "too_deep")


_CONTAINERS = {dict, list, tuple}


def _fits(value: Any, room: int) -> bool:
    """Whether no container is nested more than ``room`` levels below ``value``: the fast test
    (about 1 us for a typical event), run on every event; :func:`_too_deep` then names the path."""
    for item in value.values() if type(value) is dict else value:
        if type(item) in _CONTAINERS and (room <= 0 or not _fits(item, room - 1)):
            return False
    return True


def _too_deep(value: dict[Any, Any] | list[Any] | tuple[Any, ...], room: int) -> str | None:
    """The path below ``value`` of the first container more than ``room`` levels further down,
    or ``None``.  It stops there, so it never recurses further than :data:`MAX_DEPTH`."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if type(item) in _CONTAINERS:
            step = f".{str(key)[:40]}" if isinstance(value, dict) else f"[{key}]"
            if room <= 0:
                return step
            below = _too_deep(item, room - 1)
            if below is not None:
                return step + below
    return None


def validate_event(event: Any) -> dict[str, Any]:
    """Check one event as a master would send it (the plugin checks its own output with this)."""
    try:
        if isinstance(event, dict) and event.get("type") in EVENT_TYPES:
            if not _fast_for(event["type"])(event):
                _for_type(event["type"])(event)
            _check_limits(event, "event")
            return event
    except fastjsonschema.JsonSchemaValueException:
        pass  # the full validator below words the error as for any other event
    try:
        _compiled("event")(event)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise SchemaError(_describe(exc, "event")) from None
    _check_limits(event, "event")
    return event


def _describe(exc: fastjsonschema.JsonSchemaValueException, root: str = "batch") -> str:
    """fastjsonschema names the root ``data``; name it for what was validated."""
    where = (exc.name or "data").replace("data", root, 1)
    return exc.message.replace(exc.name or "data", where, 1) if exc.name else exc.message
