"""Webhooks people already know how to verify, against a real server process and receivers on
127.0.0.1: a receiver built with the ``standardwebhooks`` library verifies every delivery
through a secret rotation; the delivery log tells each attempt; a redelivery sends lost events
again, in order, and moves the persisted cursor back."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from .client_support import Receiver, api, serve_http, start_listener_script
from .conftest import DEADLINE, HOST, Master, wait_for
from .test_webhooks import config_file, register

pytestmark = pytest.mark.slow

OLD = "whsec_" + base64.b64encode(b"old-key-" * 4).decode()
NEW = "whsec_" + base64.b64encode(b"new-key-" * 4).decode()
ALLOW = ("--webhook-allow-network", "127.0.0.0/8")


class LibraryReceiver:
    """A receiver as its author would write it with the Standard Webhooks library: each POST is
    checked with ``Webhook(secret).verify(body, headers)`` for the secrets in ``accept``; 204 if
    one verifies, 401 otherwise.  Each POST is recorded with the known secrets that verify it."""

    KNOWN = {"old": OLD, "new": NEW}

    def __init__(self) -> None:
        self.accept: list[str] = ["old"]
        self.posts: list[dict[str, Any]] = []
        self._new = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = dict(self.headers.items())
                verified = []
                for name, secret in receiver.KNOWN.items():
                    try:
                        Webhook(secret).verify(body, headers)
                        verified.append(name)
                    except WebhookVerificationError:
                        pass
                with receiver._new:
                    ok = any(name in receiver.accept for name in verified)
                    receiver.posts.append({"body": body, "headers": headers, "verified": verified, "ok": ok})
                    receiver._new.notify_all()
                self.send_response(204 if ok else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = serve_http(Handler)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}/hook"

    def wait_accepted(self, n: int) -> list[dict[str, Any]]:
        """Wait until ``n`` events were accepted; return the accepted POSTs."""
        end = time.monotonic() + DEADLINE
        with self._new:
            while True:
                accepted = [p for p in self.posts if p["ok"]]
                if sum(len(json.loads(p["body"])["events"]) for p in accepted) >= n:
                    return accepted
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(accepted)} POSTs accepted of {len(self.posts)} before the deadline")
                self._new.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def library_receiver():
    r = LibraryReceiver()
    yield r
    r.close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def events_of(posts: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for p in posts for e in json.loads(p["body"])["events"]]


def test_library_receiver_verifies_through_a_secret_rotation(start_server, tmp_path, library_receiver):
    """The library verifies every delivery unmodified: with the old secret; after ``PATCH
    {"secret": new}`` with either (both sign, so the receiver can switch whenever it likes);
    after ``PATCH {"previous_secrets": []}`` with the new one only.  No POST is refused."""
    server = start_server("--config", config_file(tmp_path, allow="[]"), *ALLOW)
    hook = register(server, library_receiver.url, secret=OLD)
    m1 = Master()
    server.ingest(m1.batch(3))
    assert events_of(library_receiver.wait_accepted(3)) == [1, 2, 3]
    status, shown = api(server.url, "PATCH", f"/api/webhooks/{hook['id']}", {"secret": NEW})
    assert status == 200 and shown["secrets"] == 2
    server.ingest(m1.batch(2))
    library_receiver.wait_accepted(5)
    library_receiver.accept = ["new"]  # the receiver moves to the new secret mid-rotation
    server.ingest(m1.batch(2))
    library_receiver.wait_accepted(7)
    assert api(server.url, "PATCH", f"/api/webhooks/{hook['id']}", {"previous_secrets": []})[0] == 200
    server.ingest(m1.batch(2))
    posts = library_receiver.wait_accepted(9)
    assert events_of(posts) == list(range(1, 10))
    assert all(p["ok"] for p in library_receiver.posts)
    by_event = {seq: p["verified"] for p in posts for seq in events_of([p])}
    assert by_event[1] == ["old"] and by_event[4] == ["old", "new"] and by_event[9] == ["new"]
    last = posts[-1]
    Webhook(NEW).verify(last["body"], last["headers"])
    with pytest.raises(WebhookVerificationError):  # the same delivery, one byte of its body changed
        Webhook(NEW).verify(last["body"].replace(b'"seq":9', b'"seq":8'), last["headers"])


def test_delivery_log_tells_each_attempt(start_server, tmp_path, receiver):
    """``GET /api/webhooks/<id>/deliveries`` lists the attempts newest first: two refused (status
    500 and the sentence), then the accepted one, all with the batch's webhook-id, its cursors,
    its size and the attempt number; the receiver saw that id on every attempt."""
    server = start_server("--config", config_file(tmp_path, allow="[]"), *ALLOW)
    hook = register(server, receiver.url)
    receiver.fail_next = 2
    server.ingest(Master().batch(3))
    receiver.wait_events(3)

    def three():
        body = api(server.url, "GET", f"/api/webhooks/{hook['id']}/deliveries")[1]
        return body if len(body["deliveries"]) >= 3 else None

    log = wait_for(three, "three logged attempts")["deliveries"]
    assert [(e["attempt"], e["status"], e["error"]) for e in log] == [
        (3, 200, None), (2, 500, "receiver answered HTTP 500"), (1, 500, "receiver answered HTTP 500")]
    assert len({e["webhook_id"] for e in log}) == 1
    assert {a["headers"]["webhook-id"] for a in receiver.attempts} == {log[0]["webhook_id"]}
    assert all(e["events"] == 3 and e["first"].endswith(":1") and e["last"].endswith(":3") for e in log)
    assert all(isinstance(e["duration_ms"], float) and e["duration_ms"] >= 0 for e in log)
    assert api(server.url, "GET", "/api/webhooks/nobody/deliveries")[0] == 404
    assert api(server.url, "GET", f"/api/webhooks/{hook['id']}/deliveries", token=None)[0] == 401


def test_redeliver_sends_lost_events_again_and_moves_the_saved_cursor(start_server, tmp_path, receiver):
    """A receiver that lost data asks for it again: ``POST .../redeliver {"since": cursor}`` moves
    the hook's persisted cursor back at once (seen in the state file while the receiver refuses),
    and once it answers again every event after that cursor comes again, in order; bad cursors
    are 400 ``bad_cursor``, an unknown hook 404."""
    server = start_server("--config", config_file(tmp_path, allow="[]"), *ALLOW)
    hook = register(server, receiver.url)
    m1 = Master()
    server.ingest(m1.batch(6))
    receiver.wait_events(6)
    hid = hook["id"]
    wait_for(lambda: api(server.url, "GET", f"/api/webhooks/{hid}")[1]["delivered"] == 6 or None,
             "the server to count 6 deliveries")
    epoch = server.health()["cursor"].split(":")[0]
    for since in ("nonsense", f"{epoch}:999999", "now"):
        status, body = api(server.url, "POST", f"/api/webhooks/{hid}/redeliver", {"since": since})
        assert (status, body["error"]) == (400, "bad_cursor"), (since, body)
    assert api(server.url, "POST", "/api/webhooks/nobody/redeliver", {"since": "earliest"})[0] == 404
    receiver.status = 503
    since = f"{epoch}:2"
    status, body = api(server.url, "POST", f"/api/webhooks/{hid}/redeliver", {"since": since})
    assert status == 200 and body["redeliveries"] == 1, body
    state_file = Path(str(server.db) + ".webhooks.json")
    wait_for(lambda: json.loads(state_file.read_text())["hooks"][hid]["cursor"] == since or None,
             "the saved cursor to move back")
    receiver.status = 200
    events = receiver.wait_events(10)
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6, 3, 4, 5, 6]
    redelivered = [a["headers"]["webhook-id"] for a in receiver.deliveries[1:]]
    assert redelivered and all(i.endswith("/r1") for i in redelivered)


def test_documented_standard_receiver_runs_as_written(start_server, tmp_path):
    """The Standard Webhooks receiver of docs/client.md, run as written with the hook's
    generated ``whsec_`` secret, prints the delivered events and answers 401 to a forgery."""
    import os
    import urllib.error
    import urllib.request

    from .conftest import free_port
    from .test_client_docs import snippet

    script = tmp_path / "receiver.py"
    script.write_text(snippet("standard-receiver"))
    server = start_server("--config", config_file(tmp_path, allow="[]"), *ALLOW)
    port = free_port()
    hook = register(server, f"http://{HOST}:{port}/", {"type": "build.started"})
    assert hook["secret"].startswith("whsec_")
    env = dict(os.environ, WEBHOOK_SECRET=hook["secret"], PORT=str(port))
    lines = start_listener_script(str(script), port, env)
    try:
        server.ingest(Master().batch(2, builder="linux"))
        assert lines.take(2) == ["build.started linux None"] * 2
        forged = urllib.request.Request(f"http://{HOST}:{port}/", data=b'{"events": []}', headers={
            "webhook-id": "x", "webhook-timestamp": str(int(time.time())), "webhook-signature": "v1,AAAA"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(forged, timeout=DEADLINE)
        assert refused.value.code == 401
    finally:
        lines.stop()
