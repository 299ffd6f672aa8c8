"""A registered hook: its persisted record, and the checks of what it is given (filter,
secrets, body format)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from firehose.filters import FilterError, parse_json
from firehose.signing import standard_key
from firehose.webhooks.bodies import FORMATS
from firehose.webhooks.errors import WebhookError

#: Secrets that may still sign beside the current one while a receiver rolls over.
MAX_PREVIOUS_SECRETS = 4


@dataclass
class Hook:
    """One registered webhook and its delivery state (persisted).

    :param previous_secrets: secrets that still sign the Standard Webhooks signature beside
        ``secret`` (newest first), so a receiver can move to the new secret without downtime.
    :param redeliveries: how many times a redelivery was asked for; part of each batch's
        ``webhook-id``, so a receiver that dedupes by it does not drop what it asked for again.
    """

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
    previous_secrets: list[str] = field(default_factory=list)
    format: str = "firehose"
    redeliveries: int = 0

    @property
    def secrets(self) -> list[str]:
        """Every secret that signs a delivery, the current one first."""
        return [self.secret, *self.previous_secrets]

    def view(self) -> dict[str, Any]:
        """What the API shows: everything but the secrets (their number is shown)."""
        out = asdict(self)
        del out["secret"], out["previous_secrets"]
        out["secrets"] = len(self.secrets)
        return out


def check_filter(flt: Any) -> dict[str, list[str]]:
    """A hook's filter (JSON form, ``None`` for everything) in normal form; raise
    :class:`WebhookError` with the filter parser's message."""
    try:
        return parse_json(flt if flt is not None else {}).as_dict()
    except FilterError as exc:
        raise WebhookError(str(exc)) from None


def check_secret(value: Any, name: str = "secret", min_length: int = 16) -> str:
    """A usable secret: a string of ``min_length`` characters or more, and, in Standard
    Webhooks form (``whsec_<base64>``), one whose key decodes (of 16 bytes at least when
    ``min_length`` asks for 16 characters, as a guessable key would be no secret)."""
    if not isinstance(value, str) or len(value) < min_length:
        raise WebhookError(f"{name!r} must be a string of at least {min_length} characters")
    try:
        key = standard_key(value)
    except ValueError as exc:
        raise WebhookError(f"{name!r}: {exc}") from None
    if value.startswith("whsec_") and len(key) < min(min_length, 16):
        raise WebhookError(f"{name!r}: the key after 'whsec_' must be at least 16 bytes")
    return value


def check_previous_secrets(value: Any, min_length: int = 16) -> list[str]:
    """The ``previous_secrets`` list (each checked as a secret), at most
    :data:`MAX_PREVIOUS_SECRETS`."""
    if not isinstance(value, list) or len(value) > MAX_PREVIOUS_SECRETS:
        raise WebhookError(f"'previous_secrets' must be a list of at most {MAX_PREVIOUS_SECRETS} secrets")
    return [check_secret(s, "previous_secrets", min_length) for s in value]


def check_format(value: Any) -> str:
    """A hook's body format (``None`` for the default, ``firehose``), one of
    :data:`~firehose.webhooks.bodies.FORMATS`."""
    if value is None:
        return FORMATS[0]
    if value not in FORMATS:
        raise WebhookError(f"'format' must be one of {', '.join(FORMATS)}")
    return str(value)
