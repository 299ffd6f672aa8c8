"""``since``: the one parser every reader of a starting point uses."""

from __future__ import annotations

import pytest

from firehose.cursor import EARLIEST, NOW, Cursor, CursorError, parse_since


@pytest.mark.parametrize("since", [None, "", "now"])
def test_now_and_its_spellings(since: str | None) -> None:
    """``None``, an empty string and ``now`` all mean live only."""
    assert parse_since(since) == NOW


def test_earliest_and_a_cursor() -> None:
    """``earliest`` is the keyword; anything else must be a cursor."""
    assert parse_since("earliest") == EARLIEST
    assert parse_since("ab12:42") == Cursor("ab12", 42)


@pytest.mark.parametrize("since", ["latest", "ab12", "ab12:-1", "NOW", " :1", 7, ["ab12:1"], {"a": 1}])
def test_anything_else_is_a_cursor_error(since: str) -> None:
    """A word that is not a keyword is not silently taken as one: it is a malformed cursor."""
    with pytest.raises(CursorError):
        parse_since(since)
