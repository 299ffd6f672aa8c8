"""Cursors: the opaque ``"<epoch>:<offset>"`` strings that name a position in the stream.

The epoch is a random token chosen when a journal is created; a cursor from another journal
(the database was deleted, or belongs to another server) is recognised as such instead of
silently meaning some unrelated position.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_CURSOR = re.compile(r"^([0-9a-z]{1,32}):([0-9]{1,19})$")

#: ``since`` keywords: ``earliest`` replays everything retained, ``now`` starts live.
EARLIEST = "earliest"
NOW = "now"


class CursorError(ValueError):
    """A string that is not a cursor."""


class Cursor(NamedTuple):
    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"


def format_cursor(epoch: str, offset: int) -> str:
    return f"{epoch}:{offset}"


def parse_cursor(text: str) -> Cursor:
    """Parse a cursor; raise :class:`CursorError` with a message fit for an HTTP 400."""
    match = _CURSOR.match(text.strip())
    if match is None:
        raise CursorError(
            f"malformed cursor {text[:80]!r}: expected '<epoch>:<offset>' as found in an "
            "event's 'id', or 'earliest' or 'now'"
        )
    return Cursor(match.group(1), int(match.group(2)))


def parse_since(since: object) -> str | Cursor:
    """Where a subscription starts, as every reader of ``since`` must understand it: ``NOW`` for
    ``None``, ``""`` and ``"now"`` (live only), ``EARLIEST`` for ``"earliest"``, otherwise the
    parsed :class:`Cursor` (raising :class:`CursorError` for anything else, a value from JSON
    that is not a string included)."""
    if since is not None and not isinstance(since, str):
        raise CursorError(f"'since' must be a cursor string, 'earliest' or 'now', not {type(since).__name__}")
    if since is None or since == "" or since == NOW:
        return NOW
    if since == EARLIEST:
        return EARLIEST
    return parse_cursor(since)
