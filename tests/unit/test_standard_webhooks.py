"""Standard Webhooks signatures, checked by the ``standardwebhooks`` library itself: a receiver
built with ``Webhook(secret).verify(body, headers)`` accepts our deliveries unmodified, with
either secret during a rotation, and refuses a tampered body; our own ``verify_standard`` agrees
with it."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from firehose.signing import (
    STANDARD_ID_HEADER,
    STANDARD_SIGNATURE_HEADER,
    STANDARD_TIMESTAMP_HEADER,
    new_secret,
    sign_standard,
    standard_headers,
    standard_key,
    verify_standard,
)
from firehose.webhooks import WebhookError
from tests.unit.test_webhooks import Setup

OLD = "whsec_" + base64.b64encode(b"o" * 24).decode()
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
PLAIN = "a-plain-secret-of-some-length"


def library_accepts(secret: str | bytes, body: bytes, headers: dict[str, str]) -> bool:
    """What a receiver using the library unmodified concludes."""
    try:
        Webhook(secret).verify(body, headers, json_parse=False)
    except WebhookVerificationError:
        return False
    return True


def test_headers_follow_the_specification() -> None:
    """``webhook-signature`` is ``v1,`` and the base64 HMAC-SHA256 of ``id.timestamp.body``
    keyed with the decoded ``whsec_`` key; one entry per secret, space-separated."""
    import hashlib
    import hmac

    body, stamp = b'{"a":1}', 1795746642
    headers = standard_headers([NEW, OLD], "hook/e1:1..e1:5", stamp, body)
    assert headers[STANDARD_ID_HEADER] == "hook/e1:1..e1:5"
    assert headers[STANDARD_TIMESTAMP_HEADER] == "1795746642"
    expected = [
        "v1," + base64.b64encode(hmac.new(key, b"hook/e1:1..e1:5.1795746642." + body, hashlib.sha256).digest()).decode()
        for key in (b"n" * 32, b"o" * 24)
    ]
    assert headers[STANDARD_SIGNATURE_HEADER] == " ".join(expected)


def test_library_verifies_whsec_and_plain_secrets() -> None:
    """A ``whsec_`` secret is given to the library as it is; a plain one as its UTF-8 bytes
    (the library would base64-decode a plain ``str``), as docs/client.md says."""
    body, now = b'{"events":[]}', int(time.time())
    for secret, receiver_key in ((OLD, OLD), (PLAIN, PLAIN.encode())):
        headers = standard_headers([secret], "h/1", now, body)
        assert library_accepts(receiver_key, body, headers)
        assert verify_standard(secret, body, headers, now=now)
    made = new_secret()
    headers = standard_headers([made], "h/2", now, body)
    assert made.startswith("whsec_") and library_accepts(made, body, headers)


def test_rotation_both_secrets_verify_and_tampering_is_refused() -> None:
    """Signed by old and new, a delivery verifies for a receiver knowing either one (library
    and verify_standard); a changed body, id or timestamp, or an unknown secret, is refused."""
    body, now = b'{"events":[1]}', int(time.time())
    headers = standard_headers([NEW, OLD], "h/e1:1..e1:1", now, body)
    for secret in (OLD, NEW):
        assert library_accepts(secret, body, headers)
        assert verify_standard(secret, body, headers, now=now)
    assert verify_standard([PLAIN, OLD], body, headers, now=now)
    other = "whsec_" + base64.b64encode(b"x" * 24).decode()
    assert not library_accepts(other, body, headers) and not verify_standard(other, body, headers, now=now)
    assert not library_accepts(OLD, body + b" ", headers)
    assert not verify_standard(OLD, body + b" ", headers, now=now)
    for name, value in ((STANDARD_ID_HEADER, "h/other"), (STANDARD_TIMESTAMP_HEADER, str(now + 1))):
        changed = {**headers, name: value}
        assert not library_accepts(OLD, body, changed) and not verify_standard(OLD, body, changed, now=now)


def test_verify_standard_timestamp_headers_and_case() -> None:
    """verify_standard refuses a stale or future timestamp (unless tolerance is None), missing
    headers and a garbled signature list, and reads header names in any case."""
    body = b"{}"
    headers = standard_headers([OLD], "h/1", 1000, body)
    assert verify_standard(OLD, body, headers, now=1200)
    assert not verify_standard(OLD, body, headers, now=1301) and not verify_standard(OLD, body, headers, now=699)
    assert verify_standard(OLD, body, headers, tolerance=None, now=10**9)
    assert verify_standard(OLD, body, {k.upper(): v for k, v in headers.items()}, now=1000)
    for missing in headers:
        assert not verify_standard(OLD, body, {k: v for k, v in headers.items() if k != missing}, now=1000)
    assert not verify_standard(OLD, body, {**headers, STANDARD_TIMESTAMP_HEADER: "soon"}, now=1000)
    assert not verify_standard(OLD, body, {**headers, STANDARD_SIGNATURE_HEADER: "v2,abc ü"}, now=1000)
    assert not verify_standard("whsec_!!", body, headers, now=1000)


def test_standard_key_forms() -> None:
    """The key of a secret: ``whsec_`` decoded (padding optional), bytes as they are, any other
    string its UTF-8 bytes; a ``whsec_`` secret that is not base64 or is empty is refused."""
    assert standard_key(OLD) == b"o" * 24
    assert standard_key(OLD.rstrip("=")) == b"o" * 24
    assert standard_key(PLAIN) == PLAIN.encode() and standard_key(b"\x00k") == b"\x00k"
    for bad in ("whsec_", "whsec_not base64!", "whsec_a"):
        with pytest.raises(ValueError):
            standard_key(bad)
    assert sign_standard(OLD, "i", 1, b"") == sign_standard(b"o" * 24, "i", 1, b"")


def deliveries(s: Setup) -> list[tuple[int, bytes, dict[str, str]]]:
    return s.receiver.bodies


def test_deliveries_verify_with_the_library_through_a_rotation() -> None:
    """Real deliveries (the dispatcher with a Clock at the present time) verify with the library
    for the hook's secret; after ``change(secret=new)`` both old and new verify (the old one
    keeps signing), after ``previous_secrets=[]`` only the new; X-Firehose-Signature stays."""
    from firehose.signing import verify

    s = Setup()
    s.clock.advance(time.time())
    hook = s.dispatcher.add("http://r.test/hook", secret=OLD)
    s.append(1, 2)
    s.dispatcher.change(hook.id, secret=NEW)
    assert hook.previous_secrets == [OLD] and hook.view()["secrets"] == 2
    s.append(3, 4)
    s.dispatcher.change(hook.id, previous_secrets=[])
    s.append(5, 6)
    (_, first, h1), (_, second, h2), (_, third, h3) = deliveries(s)
    assert library_accepts(OLD, first, h1) and not library_accepts(NEW, first, h1)
    assert library_accepts(OLD, second, h2) and library_accepts(NEW, second, h2)
    assert library_accepts(NEW, third, h3) and not library_accepts(OLD, third, h3)
    assert len(h2["webhook-signature"].split(" ")) == 2
    assert not library_accepts(NEW, second.replace(b'"seq":3', b'"seq":9'), h2)
    assert verify(NEW, third, h3["x-firehose-signature"], h3["x-firehose-timestamp"], now=s.clock.seconds())
    s.stop()


def test_webhook_id_is_stable_across_retries() -> None:
    """Every retry of a batch carries the same ``webhook-id`` and the same events (the batch is
    pinned, though more events arrived meanwhile); the next batch has another id."""
    s = Setup()
    hook = s.dispatcher.add("http://r.test/hook", secret=OLD)
    s.receiver.codes = [500, 503]
    s.append(1, 2)
    s.append(3, 4)  # arrives while the first batch is being retried
    s.clock.advance(1)
    s.clock.advance(2)
    ids = [h["webhook-id"] for _, _, h in deliveries(s)]
    assert ids == [f"{hook.id}/e1:1..e1:2"] * 3 + [f"{hook.id}/e1:3..e1:4"]
    assert len({body.split(b'"events":')[1] for _, body, _ in deliveries(s)[:3]}) == 1
    s.stop()


def test_rotation_through_the_api_and_validation() -> None:
    """PATCH ``secret`` rotates (the old one keeps signing), ``previous_secrets`` sets the list;
    a malformed ``whsec_`` secret or too many previous secrets is a 400; neither secret is
    shown; a config-file hook's secret is changed in the file (409)."""
    import json

    from treq.testing import StubTreq

    from tests.unit.helpers import webhook_site

    s = Setup(hooks={"ci": {"url": "http://r.test/", "secret": "c" * 16}})
    s.dispatcher.load()
    api, root, auth = StubTreq(webhook_site(s.dispatcher, "adm")), "http://x/api/webhooks", {"Authorization": "Bearer adm"}

    def call(method: str, path: str = "", **kw: Any) -> tuple[int, dict[str, Any]]:
        resp = getattr(api, method)(root + path, headers=auth, **kw).result
        return resp.code, json.loads(api.content(resp).result)

    code, made = call("post", json={"url": "http://r.test/", "id": "h", "secret": OLD})
    assert code == 201 and made["secrets"] == 1
    code, shown = call("patch", "/h", json={"secret": NEW})
    assert code == 200 and shown["secrets"] == 2 and OLD not in json.dumps(shown) and NEW not in json.dumps(shown)
    assert s.dispatcher.hooks["h"].secrets == [NEW, OLD]
    assert call("patch", "/h", json={"previous_secrets": []})[1]["secrets"] == 1
    for bad in ({"secret": "whsec_%%%%%%%%%%%%%%%%"}, {"secret": "short"}, {"previous_secrets": [OLD] * 5},
                {"previous_secrets": "x" * 20}, {"colour": 1}, {}):
        code, body = call("patch", "/h", json=bad)
        assert (code, body["error"]) == (400, "bad_webhook"), bad
    code, body = call("post", json={"url": "http://r.test/", "secret": "whsec_" + base64.b64encode(b"k" * 8).decode()})
    assert code == 400 and "16 bytes" in body["message"]
    assert call("patch", "/ci", json={"secret": NEW})[0] == 409
    s.stop()


def test_config_hook_secrets_are_checked() -> None:
    """A config-file hook may list previous_secrets; a malformed whsec_ secret names the hook."""
    from firehose.webhooks import WebhookConfig, apply_config_table

    ok = apply_config_table({"hooks": {"ci": {"url": "http://r.test/", "secret": NEW, "previous_secrets": [OLD]}}},
                            WebhookConfig())
    assert ok.hooks["ci"]["previous_secrets"] == [OLD]
    for bad in ({"secret": "whsec_***"}, {"secret": NEW, "previous_secrets": "x"}):
        with pytest.raises(WebhookError, match=r"\[webhooks.hooks.ci\]"):
            apply_config_table({"hooks": {"ci": {"url": "http://r.test/", **bad}}}, WebhookConfig())
