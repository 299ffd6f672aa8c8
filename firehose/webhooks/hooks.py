"""A registered hook: its persisted record, and the check of the filter it is given."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from firehose.filters import FilterError, parse_json
from firehose.webhooks.errors import WebhookError


@dataclass
class Hook:
    """One registered webhook and its delivery state (persisted)."""

    id: str
    url: str
    filter: dict[str, list[str]]
    secret: str
    cursor: str | None = None
    active: bool = True
    source: str = "api"
    failures: int = 0
    last_error: str | None = None
    disabled_reason: str | None = None
    delivered: int = 0
    created: float = 0.0
    last_delivery: float | None = None

    def view(self) -> dict[str, Any]:
        """What the API shows: everything but the secret."""
        out = asdict(self)
        del out["secret"]
        return out


def check_filter(flt: Any) -> dict[str, list[str]]:
    """A hook's filter (JSON form, ``None`` for everything) in normal form; raise
    :class:`WebhookError` with the filter parser's message."""
    try:
        return parse_json(flt if flt is not None else {}).as_dict()
    except FilterError as exc:
        raise WebhookError(str(exc)) from None

