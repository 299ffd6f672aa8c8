"""Unit tests of firehose.signing: the signature scheme a receiver checks without the server."""

from __future__ import annotations

import hashlib
import hmac
import json

import firehose.webhooks
from firehose.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, TOLERANCE, sign, signature_headers, verify

SECRET = "secret-secret-12"


def body(sent_at: int = 1000) -> bytes:
    return json.dumps({"hook": "h", "sent_at": sent_at, "events": []}).encode()


def test_signature_is_hmac_sha256_of_the_raw_body() -> None:
    """The signature is ``sha256=`` and the hex HMAC-SHA256 of the body keyed with the secret,
    as docs/client.md tells receivers without firehose installed to compute it."""
    data = body()
    expected = "sha256=" + hmac.new(SECRET.encode(), data, hashlib.sha256).hexdigest()
    assert sign(SECRET, data) == expected == sign(SECRET.encode(), data)


def test_signature_headers_carry_timestamp_and_signature() -> None:
    """The headers of a delivery name the timestamp and sign the body; verify accepts them."""
    data = body(1000)
    headers = signature_headers(SECRET, data, 1000)
    assert headers == {TIMESTAMP_HEADER: "1000", SIGNATURE_HEADER: sign(SECRET, data)}
    assert verify(SECRET, data, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER], now=1000)


def test_verify_refuses_wrong_secret_missing_or_altered_signature() -> None:
    """A signature from another secret, none at all, or over other bytes is refused."""
    data = body()
    good = sign(SECRET, data)
    assert verify(SECRET, data, good)
    assert not verify("other-secret-123", data, good)
    assert not verify(SECRET, data, None)
    assert not verify(SECRET, data, "")
    assert not verify(SECRET, data + b" ", good)


def test_verify_timestamp_must_be_recent_and_match_the_signed_sent_at() -> None:
    """Given the timestamp header, a delivery older than the tolerance, a header that disagrees
    with the signed ``sent_at``, or a body without one is refused; ``tolerance=None`` skips it."""
    data = body(1000)
    sig = sign(SECRET, data)
    assert verify(SECRET, data, sig, "1000", now=1000 + TOLERANCE)
    assert not verify(SECRET, data, sig, "1000", now=1000 + TOLERANCE + 1)
    assert not verify(SECRET, data, sig, "1001", now=1000)
    assert not verify(SECRET, data, sig, "soon", now=1000)
    assert verify(SECRET, data, sig, "1000", tolerance=None, now=10**9)
    unstamped = b'{"events": []}'
    assert not verify(SECRET, unstamped, sign(SECRET, unstamped), "1000", now=1000)


def test_webhooks_re_exports_the_same_functions() -> None:
    """``firehose.webhooks.sign``/``verify`` and the header names still work, and are these."""
    assert firehose.webhooks.sign is sign and firehose.webhooks.verify is verify
    assert firehose.webhooks.SIGNATURE_HEADER == SIGNATURE_HEADER
    assert firehose.webhooks.TIMESTAMP_HEADER == TIMESTAMP_HEADER
