"""Server-side filters: one language for query strings and WebSocket JSON.

A filter maps fields to alternatives: ``builder=linux*,mac*&type=build.*`` matches an event whose
builder matches either glob *and* whose type matches ``build.*``.  ``*`` is the only wildcard.
A field the event does not have never matches.  Parsing rejects unknown fields and empty
patterns with a message, so a typo is an error rather than a silent empty stream.

Globs are matched without a regex: a pattern is split on ``*`` into literal pieces, found left to
right with ``str.find``.  A translated regex (``.*`` per star) backtracks: ``*`` twelve times and
a final letter, against a long value without that letter, took minutes on the reactor thread,
freezing every client.  Finding the pieces in order costs at most ``len(value) * len(pattern)``
character comparisons whatever the pattern, and in practice one pass over the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from firehose.event import FILTER_FIELDS

_PROP = re.compile(r"^prop\.[A-Za-z0-9_.:-]{1,100}$")
_MAX_PATTERNS = 64
_MAX_PATTERN_LEN = 256
_STARS = re.compile(r"\*{2,}")


class Filterable(Protocol):
    """Anything with filter values: an :class:`~firehose.event.Event`, or a state record."""

    def values(self, field: str) -> tuple[str, ...]: ...


class FilterError(ValueError):
    """A filter that cannot be parsed; the message says which field and why."""


#: A glob with a ``*``: its head, the head's length, its middle pieces, its tail, the tail's length.
_Glob = tuple[str, int, tuple[str, ...], str, int]


def _pieces(pattern: str) -> _Glob:
    """Split a glob that has a ``*`` into its anchored head, its middle pieces and its tail.

    Empty middle pieces (runs of ``*``) are dropped: ``a**b`` is ``a*b``.
    """
    parts = pattern.split("*")
    head, tail = parts[0], parts[-1]
    return head, len(head), tuple(p for p in parts[1:-1] if p), tail, len(tail)


class GlobSet:
    """Any of several ``*`` globs, matched in time linear in the value (see the module's doc).

    Exact strings go in a set, ``head*`` and ``*tail`` globs in tuples for one
    ``str.startswith``/``str.endswith`` call each (the common filters, kept cheap because the hub
    matches every event once per distinct filter); the rest are matched piece by piece.  Also used
    by :mod:`firehose.client` so that its local matching means the same as the server's.

    :param patterns: the globs; ``*`` is the only wildcard, everything else is literal.
    """

    __slots__ = ("exact", "prefixes", "suffixes", "globs", "heads", "tails")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact: list[str] = []
        prefixes: list[str] = []
        suffixes: list[str] = []
        globs: list[_Glob] = []
        for pattern in patterns:
            if "*" not in pattern:
                exact.append(pattern)
                continue
            glob = _pieces(pattern)
            head, _, middle, tail, _ = glob
            if not middle and not tail:
                prefixes.append(head)
            elif not middle and not head:
                suffixes.append(tail)
            else:
                globs.append(glob)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.suffixes = tuple(suffixes)
        self.globs = tuple(globs)
        # With several general globs, what each needs is checked for all at once: a value that
        # starts with no glob's head (or ends with no glob's tail) skips the loop in two C calls.
        self.heads = tuple(g[0] for g in globs)
        self.tails = tuple(g[3] for g in globs)

    def match(self, value: str) -> bool:
        """Whether ``value`` as a whole matches any of the globs."""
        if value in self.exact:
            return True
        if self.prefixes and value.startswith(self.prefixes):
            return True
        if self.suffixes and value.endswith(self.suffixes):
            return True
        globs = self.globs
        if not globs:
            return False
        if len(globs) > 1 and not (value.startswith(self.heads) and value.endswith(self.tails)):
            return False
        for head, lhead, middle, tail, ltail in globs:
            # The head and tail are anchored and must not overlap; each middle piece is then
            # taken at its leftmost place after the previous one, which is the classic greedy
            # glob match: leftmost leaves the most room for the pieces after it, so if any
            # placement works this one does, and no position is ever revisited.
            end = len(value) - ltail
            if end < lhead or not value.startswith(head) or not value.endswith(tail):
                continue
            pos = lhead
            for piece in middle:
                pos = value.find(piece, pos, end)
                if pos < 0:
                    break
                pos += len(piece)
            else:
                return True
        return False


class _Field(GlobSet):
    """The alternatives for one field of a filter."""

    __slots__ = ("name", "patterns")

    def __init__(self, name: str, patterns: tuple[str, ...]) -> None:
        super().__init__(patterns)
        self.name = name
        self.patterns = patterns

    def matches(self, values: tuple[str, ...]) -> bool:
        for value in values:
            if self.match(value):
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
                raise FilterError(
                    f"pattern too long in filter field {name!r} (at most {_MAX_PATTERN_LEN} characters)"
                )
            # ``a**b`` means ``a*b``: one spelling, so that equal filters share a key in the hub.
            out.append(_STARS.sub("*", pattern))
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
