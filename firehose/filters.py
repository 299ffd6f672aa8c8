"""Server-side filters: one language for query strings and WebSocket JSON.

A filter maps fields to alternatives: ``builder=linux*,mac*&type=build.*`` matches an event whose
builder matches either glob *and* whose type matches ``build.*``.  ``*`` is the only wildcard.
A field the event does not have never matches.  Parsing rejects unknown fields and empty
patterns with a message, so a typo is an error rather than a silent empty stream.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from firehose.event import FILTER_FIELDS

_PROP = re.compile(r"^prop\.[A-Za-z0-9_.:-]{1,100}$")
_MAX_PATTERNS = 64
_MAX_PATTERN_LEN = 256


class Filterable(Protocol):
    """Anything with filter values: an :class:`~firehose.event.Event`, or a state record."""

    def values(self, field: str) -> tuple[str, ...]: ...


class FilterError(ValueError):
    """A filter that cannot be parsed; the message says which field and why."""


class _Field:
    """The alternatives for one field: exact strings in a set, globs as one regex."""

    __slots__ = ("name", "exact", "regex", "patterns")

    def __init__(self, name: str, patterns: tuple[str, ...]) -> None:
        self.name = name
        self.patterns = patterns
        self.exact = frozenset(p for p in patterns if "*" not in p)
        globs = [p for p in patterns if "*" in p]
        self.regex = (
            re.compile("|".join(".*".join(map(re.escape, g.split("*"))) for g in globs) + r"\Z")
            if globs
            else None
        )

    def matches(self, values: tuple[str, ...]) -> bool:
        for value in values:
            if value in self.exact:
                return True
            if self.regex is not None and self.regex.match(value):
                return True
        return False


class Filter:
    """A parsed filter; ``Filter.everything()`` matches every event."""

    __slots__ = ("_fields", "key")

    def __init__(self, fields: Mapping[str, tuple[str, ...]]) -> None:
        self._fields = tuple(_Field(name, pats) for name, pats in sorted(fields.items()))
        #: Equal filters have equal keys: the hub matches an event once per distinct filter.
        self.key = tuple((f.name, f.patterns) for f in self._fields)

    @classmethod
    def everything(cls) -> Filter:
        return cls({})

    @property
    def is_everything(self) -> bool:
        return not self._fields

    def matches(self, event: Filterable) -> bool:
        for field in self._fields:
            if not field.matches(event.values(field.name)):
                return False
        return True

    def as_dict(self) -> dict[str, list[str]]:
        """The filter in its JSON form (what a client sent, normalised)."""
        return {f.name: list(f.patterns) for f in self._fields}

    def __repr__(self) -> str:
        return f"Filter({self.as_dict()!r})"


def _check_field(name: str) -> None:
    if name in FILTER_FIELDS or _PROP.match(name):
        return
    raise FilterError(
        f"unknown filter field {name!r}: use one of {', '.join(FILTER_FIELDS)} or prop.<name>"
    )


def _patterns(name: str, values: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        for pattern in value.split(","):
            pattern = pattern.strip()
            if not pattern:
                raise FilterError(f"empty pattern in filter field {name!r}")
            if len(pattern) > _MAX_PATTERN_LEN:
                raise FilterError(f"pattern too long in filter field {name!r}")
            out.append(pattern)
    if len(out) > _MAX_PATTERNS:
        raise FilterError(f"too many patterns in filter field {name!r} (at most {_MAX_PATTERNS})")
    return tuple(dict.fromkeys(out))


def parse_query(args: Mapping[str, list[str]], reserved: Iterable[str] = ()) -> Filter:
    """Build a filter from decoded query arguments, ignoring the transport's own ``reserved`` ones.

    A field given twice (``?builder=a&builder=b``) means the same as ``builder=a,b``.
    """
    skip = set(reserved)
    fields: dict[str, tuple[str, ...]] = {}
    for name, values in args.items():
        if name in skip:
            continue
        _check_field(name)
        fields[name] = _patterns(name, values)
    return Filter(fields)


def parse_json(obj: Any) -> Filter:
    """Build a filter from its JSON form: ``{"builder": "linux*", "type": ["build.*"]}``."""
    if obj is None:
        return Filter.everything()
    if not isinstance(obj, dict):
        raise FilterError("a filter must be a JSON object of field -> pattern(s)")
    fields: dict[str, tuple[str, ...]] = {}
    for name, value in obj.items():
        _check_field(name)
        if isinstance(value, str):
            values = [value]
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            values = value
        else:
            raise FilterError(
                f"filter field {name!r} must be a string or a non-empty list of strings"
            )
        fields[name] = _patterns(name, values)
    return Filter(fields)
