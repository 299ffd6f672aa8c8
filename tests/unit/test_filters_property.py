"""Glob matching, generated: agreement with reference matchers, and hostile globs answered.

The reference is written independently of :class:`firehose.filters.GlobSet`: a dynamic
programme over (pattern position, value position) that follows the definition of ``*``
(any run of characters, the empty one included), cross-checked with ``fnmatch.fnmatchcase``.
Hostile globs (many stars, a final character the value lacks) froze the reactor with the old
backtracking regex; here they must be answered, and correctly, within the test's timeout.
"""

from __future__ import annotations

import fnmatch
import functools
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from firehose.client.waiting import _glob
from firehose.filters import GlobSet, parse_json

#: Characters special to regexes or to fnmatch and a non-ASCII letter: all literal here.
SPECIAL = "-.?[]\\^$+()|{}é"
PATTERN_CHARS = "ab*" + SPECIAL
#: Values also get newlines (which a regex ``.`` does not match); patterns cannot have them,
#: since the parser strips the white space around each pattern.
VALUE_CHARS = "ab\n" + SPECIAL

#: Mostly over 'a', 'b' (and '*'): few letters make overlaps of pieces, heads and tails common,
#: which is where a glob matcher goes wrong (``head*tail`` alone: can they overlap?); the rest
#: over every character.
patterns = st.one_of(
    st.text("ab*", min_size=1, max_size=12),
    st.builds(lambda head, tail: head + "*" + tail, st.text("ab", max_size=4), st.text("ab", max_size=4)),
    st.text(PATTERN_CHARS, min_size=1, max_size=12),
)
values = st.one_of(st.text("ab", max_size=30), st.text(VALUE_CHARS, max_size=30))


def reference(pattern: str, value: str) -> bool:
    """Whether ``value`` matches ``pattern`` by the definition: a ``*`` stands for any run of
    characters, every other character for itself, and the whole value must be covered."""

    @functools.cache
    def fits(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(value)
        if pattern[i] == "*":
            # The star takes nothing (next pattern char), or one more character of the value.
            return fits(i + 1, j) or (j < len(value) and fits(i, j + 1))
        return j < len(value) and pattern[i] == value[j] and fits(i + 1, j + 1)

    return fits(0, 0)


def fnmatch_reference(pattern: str, value: str) -> bool:
    """``fnmatch`` with its other wildcards (``?`` and ``[``) escaped into literals."""
    escaped = "".join("[?]" if c == "?" else "[[]" if c == "[" else c for c in pattern)
    return fnmatch.fnmatchcase(value, escaped)


class Record:
    """A filterable record with given values for ``builder`` (several, like a list field)."""

    def __init__(self, *builders: str) -> None:
        self.builders = builders

    def values(self, field: str) -> tuple[str, ...]:
        return self.builders if field == "builder" else ()


def fill(pattern: str, fillers: list[str]) -> str:
    """``pattern`` with its stars replaced by ``fillers`` in order (by nothing once they run out)."""
    it = iter(fillers)
    return "".join(next(it, "") if c == "*" else c for c in pattern)


def filled(pattern: str) -> st.SearchStrategy[str]:
    """Values made from ``pattern`` by replacing each ``*`` with generated text: they match by
    construction (random values alone match a long pattern about one time in fifty)."""
    n = pattern.count("*")
    fillers = st.lists(st.text("ab", max_size=3) | st.text(VALUE_CHARS, max_size=8), min_size=n, max_size=n)
    return fillers.map(lambda f: fill(pattern, f))


def near(pattern: str) -> st.SearchStrategy[str]:
    """Random values, matching values, and near misses: a matching value with one character
    taken out or put in (what tells a wrong anchor or an overlap of head and tail)."""
    edit = st.tuples(filled(pattern), st.integers(0, 40), st.sampled_from(["", *VALUE_CHARS]))
    return st.one_of(
        values,
        filled(pattern),
        edit.map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + (not t[2]) :]),
    )


@st.composite
def pattern_and_matching_value(draw: st.DrawFn) -> tuple[str, str]:
    pattern = draw(patterns)
    return pattern, draw(filled(pattern))


@given(patterns, st.data())
def test_one_glob_agrees_with_the_references(pattern: str, data: st.DataObject) -> None:
    """For any pattern of up to 12 characters and value of up to 30 (random, matching, or one
    edit from matching), GlobSet, a filter on ``builder``, and the client's own glob all
    answer what the definition of ``*`` answers."""
    value = data.draw(near(pattern))
    expected = reference(pattern, value)
    assert fnmatch_reference(pattern, value) == expected
    assert GlobSet([pattern]).match(value) == expected
    assert parse_json({"builder": pattern}).matches(Record(value)) == expected
    assert bool(_glob(pattern).match(value)) == expected


@given(pattern_and_matching_value())
def test_values_built_from_a_glob_match_it(case: tuple[str, str]) -> None:
    """A value made by filling each ``*`` of a pattern with any text matches the pattern."""
    pattern, value = case
    assert reference(pattern, value)
    assert GlobSet([pattern]).match(value)
    assert parse_json({"builder": pattern}).matches(Record(value))


@given(st.lists(patterns, min_size=1, max_size=6), st.data())
def test_alternatives_and_several_values_agree_with_the_reference(
    alternatives: list[str], data: st.DataObject
) -> None:
    """A field with several patterns matches a record when any pattern matches any of its
    values, through a JSON list, a comma-joined query string, and the client's glob alike."""
    near_any = st.sampled_from(alternatives).flatmap(near)
    builders = data.draw(st.lists(near_any, max_size=3))
    expected = any(reference(p, v) for p in alternatives for v in builders)
    assert parse_json({"builder": alternatives}).matches(Record(*builders)) == expected
    assert parse_json({"builder": ",".join(alternatives)}).matches(Record(*builders)) == expected
    assert any(bool(_glob(",".join(alternatives)).match(v)) for v in builders) == expected


# ---------------------------------------------------------------------------------------------
# Hostile globs: long values, many stars, at the parser's limits
# ---------------------------------------------------------------------------------------------

#: Middle pieces of hostile globs: each occurs all over the generated values.
PIECES = st.sampled_from(["", "a", "b", "ab", "ba", "aab"])


@st.composite
def hostile_glob(draw: st.DrawFn, absent: str = "") -> str:
    """``*`` k times then ``x`` (k up to 255: the pattern limit is 256), or stars between
    pieces that the value contains everywhere, then a final ``x``.  With ``absent``, that
    piece (which the values lack) is put among the others: a glob that never matches, but
    only after the pieces before it were found."""
    if draw(st.booleans()):
        k = draw(st.integers(1, 250))
        return "*" * k + (absent + "*" if absent else "") + "x"
    pieces = draw(st.lists(PIECES, min_size=1, max_size=60))
    if absent:
        pieces.insert(draw(st.integers(0, len(pieces))), absent)
    return "*" + "*".join(pieces) + "*x"


class Scanned(str):
    """A value that adds up the stretches ``str.find`` went through in it: from where a search
    starts to the end of what it found, or to where it was told to stop."""

    scanned = 0

    def find(self, sub: str, start: Any = None, end: Any = None) -> int:
        found = super().find(sub, start, end)
        lo, hi, _ = slice(start, end).indices(len(self))
        Scanned.scanned += (found + len(sub) if found >= 0 else hi) - lo
        return found


#: Long values over the pieces' letters: a unit of up to 4 of 'a'/'b' repeated up to 50 000 times.
long_values = st.builds(lambda unit, n: unit * n, st.text("ab", min_size=1, max_size=4), st.integers(1, 50_000))


@pytest.mark.timeout(120)
@settings(max_examples=60)
@given(st.lists(hostile_glob("c"), min_size=1, max_size=64), long_values)
@example(["*" * 250 + "c*x"], "ab" * 100_000)
@example(["*" + "*".join(["ab"] * 40 + ["a" * (i + 1), "c"]) + "*x" for i in range(64)], "ab" * 100_000)
def test_hostile_globs_against_long_values_they_do_not_match_are_answered(
    globs: list[str], value: str
) -> None:
    """Up to 64 many-star globs ending in ``x`` with a ``c`` somewhere (each accepted by the
    parser) match no value of up to 200 000 characters of ``a``/``b``: neither without the
    final ``x``, nor with it, nor with it not last.  The answer comes (the backtracking regex
    took 33 s for 12 stars against 30 characters, so this would hang).  GlobSet, also given
    the globs as written (before the parser collapses runs of stars), searches each value at
    most once per glob: the pieces of a glob are looked for in disjoint stretches of it."""
    flt = parse_json({"builder": globs})
    raw = GlobSet(globs)
    for v in (value, value + "x", value + "xa"):
        assert not flt.matches(Record(v))
        Scanned.scanned = 0
        assert not raw.match(Scanned(v))
        assert Scanned.scanned <= len(v) * len(globs)


@pytest.mark.timeout(120)
@settings(max_examples=60)
@given(hostile_glob(), st.lists(long_values, min_size=1, max_size=2))
@example("*" * 255 + "x", ["ab" * 100_000])
@example("*" + "*".join(["aab"] * 60) + "*x", ["ab" * 100_000, "b" * 100_000])
def test_hostile_globs_match_long_values_built_from_them(glob: str, fillers: list[str]) -> None:
    """A many-star glob matches a long value made by filling its first stars with long text
    (the others with nothing), and stops matching when the final character is taken off:
    correct answers at the limits, from the filter and from GlobSet given the raw glob."""
    value = fill(glob, fillers)
    flt = parse_json({"builder": glob})
    raw = GlobSet([glob])
    assert flt.matches(Record(value)) and raw.match(value)
    assert not flt.matches(Record(value[:-1])) and not raw.match(value[:-1])
