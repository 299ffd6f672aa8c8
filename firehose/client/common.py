"""What every client of the firehose shares: its errors, :class:`Gap`, filter dicts, and the
checks of ``since`` and of the server URL.

Plain standard library (plus the server's own filter parser and cursor reader, which are pure),
so the blocking client never imports Twisted through here.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from firehose.cursor import NOW, CursorError, parse_cursor, parse_since
from firehose.filters import FilterError, parse_json

#: Gap reasons that mean events were lost; ``slow`` and ``error`` only mean "resume from here",
#: which the clients do by themselves.
LOSS_REASONS = ("epoch", "expired")


class FirehoseError(Exception):
    """Base of the client's errors."""


class RequestError(FirehoseError):
    """The server refused the request (bad filter, bad cursor...): retrying cannot help.

    :ivar code: the protocol's error code (``bad_filter``, ``bad_cursor``, ``bad_request``...).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Unavailable(FirehoseError):
    """The server could not be reached (and the caller asked not to wait for it)."""


class Gap(dict[str, Any]):
    """A ``gap`` message: events between ``since`` and ``cursor`` are not coming.

    It is a ``dict`` (the message as the server sent it, ``type == "gap"``), so code that
    prints or serialises what a stream yields works unchanged; the properties are shortcuts.
    """

    @property
    def reason(self) -> str:
        return str(self.get("reason"))

    @property
    def cursor(self) -> str | None:
        return self.get("cursor")

    @property
    def lost(self) -> bool:
        """Whether events were lost (``epoch``, ``expired``) rather than merely interrupted."""
        return self.reason in LOSS_REASONS


def is_event(item: Mapping[str, Any]) -> bool:
    """Whether a message is an event (its type has a dot) rather than a control message."""
    return "." in str(item.get("type", ""))


def filter_dict(filter: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, list[str]]:
    """Merge a filter dict and keyword fields into ``{field: [patterns]}`` and validate it.

    ``prop__owner`` stands for ``prop.owner``; ``None`` values are dropped; a comma-separated
    string means alternatives, as in a query string.  Raises :class:`RequestError`
    (``bad_filter``) with the server's own message for an unknown field or an empty pattern.
    """
    merged: dict[str, list[str]] = {}
    items = list((filter or {}).items()) + [(k.replace("__", "."), v) for k, v in fields.items()]
    for name, value in items:
        if value is None:
            continue
        values = [value] if isinstance(value, str) else list(value)
        for v in values:
            if not isinstance(v, str):
                raise RequestError("bad_filter", f"filter field {name!r} must be a string or a list of strings")
            merged.setdefault(name, []).extend(p.strip() for p in v.split(","))
    try:
        parse_json(merged)
    except FilterError as exc:
        raise RequestError("bad_filter", str(exc)) from None
    return merged


def check_since(since: str | None) -> str | None:
    """Validate ``since`` the way the server will read it (:func:`firehose.cursor.parse_since`),
    so a typo fails at once rather than on the first request.

    :returns: ``None`` for "from now on" (``None``, ``""``, ``"now"``), else ``since`` as given.
    :raises RequestError: ``bad_cursor``, with the server's own message.
    """
    try:
        where = parse_since(since)
    except CursorError as exc:
        raise RequestError("bad_cursor", str(exc)) from None
    return None if where == NOW else since


def offset_after(a: str, b: str) -> bool:
    """Whether cursor ``a`` names a position after ``b`` in the same epoch (else ``True``: a
    position in another epoch, or something unreadable, cannot be proved to be a repeat)."""
    try:
        ca, cb = parse_cursor(a), parse_cursor(b)
    except CursorError:
        return True
    return ca.epoch != cb.epoch or ca.offset > cb.offset


def base_url(url: str) -> str:
    """``http://host:port`` and the path a proxy may put the server under (query, fragment and
    a trailing ``/`` dropped; ``ws`` becomes ``http``).

    :raises RequestError: ``bad_url`` for anything that is not an http(s) or ws(s) URL.
    """
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise RequestError("bad_url", f"not a firehose URL: {url!r} (expected http://host:port)")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def base_urls(url: str | Sequence[str]) -> list[str]:
    """Every :func:`base_url` in ``url``: one URL, several separated by commas (or spaces), or
    a list of them, in the order given (the order a client tries them in).

    Several URLs are for several nodes of *one* firehose (sharing its journal, so a cursor
    from one is valid on the others); a load balancer in front needs just its own URL.

    :raises RequestError: ``bad_url`` for an empty list or any URL that is not one.
    """
    items = [url] if isinstance(url, str) else list(url)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise RequestError("bad_url", f"not a firehose URL: {item!r} (expected http://host:port)")
        out.extend(base_url(u) for u in re.split(r"[\s,]+", item) if u)
    if not out:
        raise RequestError("bad_url", f"no firehose URL in {url!r} (expected http://host:port)")
    return out
