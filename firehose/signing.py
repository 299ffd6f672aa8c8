"""Webhook signatures: how the server signs a delivery and how a receiver checks one.

A delivery carries ``X-Firehose-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with
the hook's secret>`` and ``X-Firehose-Timestamp``, which repeats the body's ``sent_at`` (which
the signature covers), so a receiver can refuse stale replays.

Every delivery is also signed the `Standard Webhooks <https://www.standardwebhooks.com/>`_ way,
so receivers can use a library they already know: ``webhook-id`` (one id per batch, the same on
every retry of it), ``webhook-timestamp`` (integer seconds) and ``webhook-signature``, a
space-separated list of ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, one entry per
active secret, so a secret is rotated without downtime: while the new one is rolled out to the
receiver, old and new both sign.

The key of the Standard Webhooks signature (:func:`standard_key`): a secret in that scheme's own
form, ``whsec_<base64>``, means the decoded bytes (which is what the ``standardwebhooks``
library's ``Webhook("whsec_...")`` uses, so such a receiver verifies unmodified); any other
secret means its UTF-8 bytes (give the library ``Webhook(secret.encode())``: given a ``str`` it
would base64-decode it).  ``X-Firehose-Signature`` is keyed with the secret's UTF-8 bytes as
ever, whatever its form, and only by the hook's current secret.

This module is the one definition of both schemes, for the dispatcher and for receivers alike.
It imports only ``hashlib``/``hmac``/``base64`` and what ``firehose/__init__`` imports (no
Twisted): a receiver that verifies a signature must not load the server to do it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Mapping, Sequence

from firehose.event import loads

SIGNATURE_HEADER = "X-Firehose-Signature"
TIMESTAMP_HEADER = "X-Firehose-Timestamp"

#: The Standard Webhooks headers (lower case, as that specification spells them).
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"

#: The prefix of a secret in Standard Webhooks form: ``whsec_`` and the base64 of the key.
SECRET_PREFIX = "whsec_"

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


def standard_key(secret: str | bytes) -> bytes:
    """The HMAC key of a Standard Webhooks signature for ``secret``.

    ``whsec_<base64>`` is decoded (padding optional, as the ``standardwebhooks`` library
    accepts it); bytes are the key as they are; any other string is its UTF-8 bytes.

    :raises ValueError: a ``whsec_`` secret that is not base64, or decodes to nothing.
    """
    if isinstance(secret, bytes):
        return secret
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    text = secret[len(SECRET_PREFIX):]
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"a secret starting with {SECRET_PREFIX!r} must be followed by base64") from None
    if not key:
        raise ValueError(f"a secret starting with {SECRET_PREFIX!r} must hold a key after it")
    return key


def new_secret(size: int = 24) -> str:
    """A random secret in Standard Webhooks form (``whsec_`` + base64 of ``size`` bytes), which
    both the ``standardwebhooks`` libraries and :func:`verify` take as it is."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(size)).decode()


def sign_standard(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``webhook-signature`` entry: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(standard_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def standard_headers(
    secrets: Sequence[str | bytes], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers of a delivery, signed by every one of ``secrets``
    (the current one first): a receiver that knows any of them verifies it."""
    return {
        STANDARD_ID_HEADER: msg_id,
        STANDARD_TIMESTAMP_HEADER: str(timestamp),
        STANDARD_SIGNATURE_HEADER: " ".join(sign_standard(s, msg_id, timestamp, body) for s in secrets),
    }


def verify_standard(
    secret: str | bytes | Sequence[str | bytes],
    body: bytes,
    headers: Mapping[str, str],
    tolerance: float | None = TOLERANCE,
    now: float | None = None,
) -> bool:
    """Check a delivery by its Standard Webhooks headers, as a receiver without the library
    would: some ``v1`` entry of ``webhook-signature`` is the HMAC (compared in constant time)
    of ``"{webhook-id}.{webhook-timestamp}.{body}"`` with one of the secrets, and the timestamp
    is within ``tolerance`` seconds of ``now``.

    :param secret: the secret, or several (a receiver rolling a secret over knows both).
    :param headers: the request's headers; names are matched in any case.
    :param tolerance: ``None`` skips the timestamp check.
    :param now: the receiver's clock (``time.time()`` unless given, for tests).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get(STANDARD_ID_HEADER)
    stamp = lower.get(STANDARD_TIMESTAMP_HEADER)
    offered = lower.get(STANDARD_SIGNATURE_HEADER)
    if not (msg_id and stamp and offered):
        return False
    try:
        timestamp = int(stamp)
    except ValueError:
        return False
    if tolerance is not None and abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    secrets = [secret] if isinstance(secret, (str, bytes)) else list(secret)
    try:
        expected = [sign_standard(s, msg_id, timestamp, body) for s in secrets]
    except ValueError:
        return False
    entries = [e for e in offered.split(" ") if e.startswith("v1,")]
    return any(hmac.compare_digest(mine.encode(), theirs.encode("utf-8", "replace"))
               for mine in expected for theirs in entries)
