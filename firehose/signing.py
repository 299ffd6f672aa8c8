"""Webhook signatures: how the server signs a delivery and how a receiver checks one.

A delivery carries ``X-Firehose-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with
the hook's secret>`` and ``X-Firehose-Timestamp``, which repeats the body's ``sent_at`` (which
the signature covers), so a receiver can refuse stale replays.

This module is the one definition of that scheme, for the dispatcher and for receivers alike.
It imports only ``hashlib``/``hmac`` and what ``firehose/__init__`` imports (no Twisted): a
receiver that verifies a signature must not load the server to do it.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from firehose.event import loads

SIGNATURE_HEADER = "X-Firehose-Signature"
TIMESTAMP_HEADER = "X-Firehose-Timestamp"

#: Seconds a delivery's timestamp may differ from the receiver's clock in :func:`verify`.
TOLERANCE = 300.0


def sign(secret: str | bytes, body: bytes) -> str:
    """The value of ``X-Firehose-Signature`` for ``body``: ``sha256=<hex>``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def signature_headers(secret: str | bytes, body: bytes, sent_at: int) -> dict[str, str]:
    """The two headers that make ``body`` (whose ``sent_at`` is ``sent_at``) a signed delivery."""
    return {TIMESTAMP_HEADER: str(sent_at), SIGNATURE_HEADER: sign(secret, body)}


def verify(
    secret: str | bytes,
    body: bytes,
    signature: str | None,
    timestamp: str | None = None,
    tolerance: float | None = TOLERANCE,
    now: float | None = None,
) -> bool:
    """Check a delivery as a receiver should: the HMAC of the raw body (constant time), and,
    given the ``X-Firehose-Timestamp`` header, that it is recent (``tolerance`` seconds) and
    agrees with the signed ``sent_at`` in the body.

    :param timestamp: the header's value; ``None`` (or ``tolerance=None``) checks only the HMAC.
    :param now: the receiver's clock (``time.time()`` unless given, for tests).
    """
    if not signature or not hmac.compare_digest(sign(secret, body), signature):
        return False
    if timestamp is None or tolerance is None:
        return True
    try:
        sent = int(loads(body)["sent_at"])
        stamp = int(timestamp)
    except (ValueError, KeyError, TypeError):
        return False
    current = time.time() if now is None else now
    return sent == stamp and abs(current - stamp) <= tolerance
