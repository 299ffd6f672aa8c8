"""Filters and cursors: parsing, matching, and the errors a user sees."""

from __future__ import annotations

import pytest

from firehose.cursor import CursorError, parse_cursor
from firehose.event import Event
from firehose.filters import FilterError, parse_json, parse_query


def event(type: str = "build.finished", **data: object) -> Event:
    base = {"buildid": 1, "number": 1, "builder": "linux-x64"}
    base.update(data)
    return Event.build(1, "e:1", type=type, master="m1", incarnation="i", seq=1, time=1.0, data=base)


def test_glob_and_alternatives() -> None:
    """``*`` globs, commas mean any of, and every field must match."""
    flt = parse_query({"builder": ["mac*,linux-*"], "type": ["build.*"]})
    assert flt.matches(event())
    assert not flt.matches(event(type="step.finished", stepid=1, name="x"))
    assert not flt.matches(event(builder="win64"))


def test_glob_is_anchored_and_literal_otherwise() -> None:
    """A pattern matches the whole value, and regex characters in it are literal."""
    assert not parse_query({"builder": ["linux"]}).matches(event())
    assert parse_query({"builder": ["*x64"]}).matches(event())
    assert not parse_query({"builder": ["linux.x64"]}).matches(event())


def test_repeated_field_means_any_of() -> None:
    """``?builder=a&builder=b`` is the same as ``builder=a,b``."""
    assert parse_query({"builder": ["win", "linux-x64"]}).matches(event())


def test_result_matches_name_and_code() -> None:
    """``result`` matches the result name and the numeric code."""
    e = event(result="failure", results=2)
    assert parse_query({"result": ["failure"]}).matches(e)
    assert parse_query({"result": ["2"]}).matches(e)
    assert not parse_query({"result": ["success,0"]}).matches(e)


def test_property_filter() -> None:
    """``prop.<name>`` matches a build property's value; absent properties never match."""
    e = event(properties={"got_revision": "abc123", "owner": "alice"})
    assert parse_json({"prop.owner": "ali*"}).matches(e)
    assert not parse_json({"prop.missing": "*"}).matches(e)


def test_missing_field_never_matches() -> None:
    """An event without the field does not match, even with ``*``."""
    assert not parse_query({"branch": ["*"]}).matches(event())


def test_list_values_match_any_item() -> None:
    """A list value (say a buildset's branches) matches if any item does."""
    assert parse_query({"branch": ["release"]}).matches(event(branch=["main", "release"]))


def test_reserved_arguments_are_ignored() -> None:
    """Transport arguments such as ``since`` are not filter fields."""
    assert parse_query({"since": ["x"], "builder": ["*"]}, reserved=("since",)).as_dict() == {"builder": ["*"]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"bulder": ["x"]}, "unknown filter field 'bulder'"),
        ({"builder": [""]}, "empty pattern"),
        ({"builder": ["a,,b"]}, "empty pattern"),
        ({"prop.": ["x"]}, "unknown filter field"),
    ],
)
def test_bad_query_filters_are_errors(args: dict[str, list[str]], message: str) -> None:
    """Malformed filters raise with a message naming the problem."""
    with pytest.raises(FilterError, match=message):
        parse_query(args)


@pytest.mark.parametrize("obj", [[], "builder", {"builder": 3}, {"builder": []}, {"builder": [1]}])
def test_bad_json_filters_are_errors(obj: object) -> None:
    """A JSON filter must be an object of strings or non-empty string lists."""
    with pytest.raises(FilterError):
        parse_json(obj)


def test_cursor_round_trip_and_errors() -> None:
    """Cursors parse to (epoch, offset); anything else is a CursorError."""
    assert tuple(parse_cursor("ab12:42")) == ("ab12", 42)
    assert str(parse_cursor("ab12:42")) == "ab12:42"
    for bad in ["", "42", "ab:", ":1", "AB:1", "ab:-1", "ab:1:2"]:
        with pytest.raises(CursorError):
            parse_cursor(bad)


def test_runs_of_stars_are_one_star() -> None:
    """``a**b`` means ``a*b``, and both spellings give the same filter key (one match per event
    for the hub, whichever a client sent)."""
    flt = parse_query({"builder": ["linux**x64,***"]})
    assert flt.as_dict() == {"builder": ["linux*x64", "*"]}
    assert flt.key == parse_query({"builder": ["linux*x64,*"]}).key
    assert flt.matches(event())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"builder": ["*" * 257]}, r"pattern too long in filter field 'builder' \(at most 256 characters\)"),
        ({"builder": [",".join(f"b{i}" for i in range(65))]}, r"too many patterns .*\(at most 64\)"),
    ],
)
def test_limits_are_errors_naming_the_limit(args: dict[str, list[str]], message: str) -> None:
    """A pattern over 256 characters, or over 64 patterns in a field, is a FilterError whose
    message states the limit (the transports answer it with 400 or an error frame)."""
    with pytest.raises(FilterError, match=message):
        parse_query(args)
    assert parse_query({"builder": ["*" * 255 + "x"]}).as_dict() == {"builder": ["*x"]}


def test_every_alternative_is_anchored() -> None:
    """Each glob of several must match the whole value: ``*a,b*c`` does not match ``xab``
    (a regex alternation anchored only at its end matched ``xa`` as a prefix)."""
    assert not parse_query({"builder": ["*a,b*c"]}).matches(event(builder="xab"))
    assert parse_query({"builder": ["*a,b*c"]}).matches(event(builder="xa"))


def test_star_matches_across_lines() -> None:
    """``*`` stands for any characters, a newline included (a regex ``.`` stops at one)."""
    assert parse_json({"prop.note": "first*last"}).matches(event(properties={"note": "first\nlast"}))


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("a*a", "a", False),  # head and tail may not share the value's one character
        ("ab*ba", "aba", False),
        ("ab*ba", "abba", True),
        ("*ab*b", "ab", False),  # a middle piece may not reach into the tail
        ("*ab*b", "abb", True),
        ("*a*a*", "a", False),
        ("a**", "a", True),
        ("**", "", True),
    ],
)
def test_pieces_of_a_glob_do_not_overlap(pattern: str, value: str, expected: bool) -> None:
    """The head, the middle pieces and the tail of a glob each cover their own characters."""
    assert parse_query({"builder": [pattern]}).matches(event(builder=value)) is expected
