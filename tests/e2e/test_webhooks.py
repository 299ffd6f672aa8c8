"""Webhooks against a real server process and real receivers on 127.0.0.1: registration,
signatures, retries keeping order, resume after a restart, disabling, isolation, the
CloudEvents body formats."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from firehose.webhooks import verify

from .client_support import Receiver, api, restart
from .conftest import DEADLINE, HOST, Master, Poller, seqs, wait_for

pytestmark = pytest.mark.slow

ADMIN = "admin-token"


def config_file(tmp_path: Path, max_failures: int = 1000, hooks: str = "", allow: str = '["127.0.0.0/8"]') -> str:
    """The server's config; ``allow``: the receivers' networks (loopback is refused by default)."""
    path = tmp_path / "firehose.toml"
    path.write_text(
        f'[webhooks]\nadmin_token = "{ADMIN}"\nretry_initial = 0.05\nretry_max = 0.2\n'
        f"max_failures = {max_failures}\nbatch_size = 7\nallow_networks = {allow}\n{hooks}"
    )
    return str(path)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def register(server, url: str, flt=None, **extra):
    status, body = api(server.url, "POST", "/api/webhooks", {"url": url, "filter": flt or {}, **extra})
    assert status == 201, body
    return body


def test_api_needs_the_admin_token(start_server, tmp_path, receiver):
    """Without the bearer admin token the API answers 401; a bad hook is a 400 naming the
    problem; a registered hook is listed without its secret and can be deleted."""
    server = start_server("--config", config_file(tmp_path))
    for token in (None, "wrong"):
        status, body = api(server.url, "GET", "/api/webhooks", token=token)
        assert status == 401 and body["error"] == "unauthorized"
        status, _ = api(server.url, "POST", "/api/webhooks", {"url": receiver.url}, token=token)
        assert status == 401
    status, body = api(server.url, "POST", "/api/webhooks", {"url": "ftp://x", "filter": {}})
    assert status == 400 and "url" in body["message"]
    status, body = api(server.url, "POST", "/api/webhooks", {"url": receiver.url, "filter": {"colour": "red"}})
    assert status == 400 and "colour" in body["message"]
    hook = register(server, receiver.url, {"builder": "linux*"})
    assert len(hook["secret"]) >= 16
    status, listing = api(server.url, "GET", "/api/webhooks")
    assert status == 200 and [h["id"] for h in listing["webhooks"]] == [hook["id"]]
    assert "secret" not in listing["webhooks"][0]
    assert listing["webhooks"][0]["filter"] == {"builder": ["linux*"]}
    assert api(server.url, "DELETE", f"/api/webhooks/{hook['id']}")[0] == 200
    assert api(server.url, "GET", f"/api/webhooks/{hook['id']}")[0] == 404


def test_delivery_is_signed_filtered_and_ordered_through_failures(start_server, tmp_path, receiver):
    """Matching events arrive in batches signed with HMAC-SHA256 over the raw body; while the
    receiver fails (HTTP 500 four times) the batch is retried with backoff, and in the end every
    matching event has been acknowledged exactly once, in order."""
    server = start_server("--config", config_file(tmp_path))
    secret = "s3cret-s3cret-s3cret"
    register(server, receiver.url, {"builder": "linux"}, secret=secret)
    receiver.fail_next = 4
    m1 = Master()
    for _ in range(4):
        server.ingest([m1.event(builder="linux"), m1.event(builder="mac"), m1.event(builder="linux")])
    events = receiver.wait_events(8)
    assert [e["seq"] for e in events] == [1, 3, 4, 6, 7, 9, 10, 12]
    assert len(receiver.attempts) >= 5  # 4 refused + at least one accepted
    first = receiver.attempts[0]
    for attempt in receiver.attempts:
        headers = attempt["headers"]
        assert headers["x-firehose-signature"].startswith("sha256=")
        assert verify(secret, attempt["body"], headers["x-firehose-signature"], headers["x-firehose-timestamp"])
        assert not verify("another-secret-xx", attempt["body"], headers["x-firehose-signature"])
    # The refused batch was resent as it was: same events, same order.
    assert json.loads(first["body"])["events"][0]["seq"] == 1
    # The receiver has the events before the server has its answer: wait for the server's count.
    hook = wait_for(lambda: (lambda h: h if h["webhooks"][0]["delivered"] == 8 else None)(
        api(server.url, "GET", "/api/webhooks")[1]), "the server to count 8 deliveries")
    assert hook["webhooks"][0]["failures"] == 0


def test_delivery_resumes_after_restart(start_server, tmp_path, receiver):
    """A hook's cursor survives a restart: events acknowledged before are not sent again, events
    the receiver refused before the restart are delivered after it (config-file hook)."""
    secret = "config-secret-1234"
    hooks = (f'[webhooks.hooks.ci]\nurl = "{receiver.url}"\nsecret = "{secret}"\n'
             'filter = {type = "build.*"}\n')
    server = start_server("--config", config_file(tmp_path, hooks=hooks))
    m1 = Master()
    server.ingest(m1.batch(5))
    assert [e["seq"] for e in receiver.wait_events(5)] == [1, 2, 3, 4, 5]
    receiver.status = 503
    attempts = len(receiver.attempts)
    server.ingest(m1.batch(5))
    receiver.wait_attempts(attempts + 2)  # refused, and retried
    restart(server)
    receiver.status = 200
    events = receiver.wait_events(10)
    assert [e["seq"] for e in events] == list(range(1, 11))
    server.ingest(m1.batch(2))
    assert [e["seq"] for e in receiver.wait_events(12)] == list(range(1, 13))
    status, listing = api(server.url, "GET", "/api/webhooks")
    assert listing["webhooks"][0]["source"] == "config" and listing["webhooks"][0]["id"] == "ci"
    state = json.loads(Path(str(server.db) + ".webhooks.json").read_text())
    assert state["hooks"]["ci"]["cursor"] is not None
    assert api(server.url, "DELETE", "/api/webhooks/ci")[0] == 409  # defined in the config file


def test_hook_disabled_after_repeated_failures_then_reenabled(start_server, tmp_path, receiver):
    """After max_failures consecutive failures the hook is disabled and the API says why;
    re-enabled, it delivers from where it stopped."""
    server = start_server("--config", config_file(tmp_path, max_failures=3))
    hook = register(server, receiver.url)
    receiver.status = 500
    m1 = Master()
    server.ingest(m1.batch(3))

    def disabled():
        status, body = api(server.url, "GET", f"/api/webhooks/{hook['id']}")
        return body if not body["active"] else None

    body = wait_for(disabled, "the hook to be disabled")
    assert "3 consecutive failed deliveries" in body["disabled_reason"]
    assert "receiver answered HTTP 500" in body["disabled_reason"]
    assert len(receiver.attempts) == 3
    receiver.status = 200
    status, body = api(server.url, "PATCH", f"/api/webhooks/{hook['id']}", {"active": True})
    assert status == 200 and body["active"] and body["disabled_reason"] is None
    assert [e["seq"] for e in receiver.wait_events(3)] == [1, 2, 3]


def test_dead_hook_does_not_delay_other_subscribers(start_server, tmp_path):
    """A receiver that accepts connections and never answers holds its own hook only: a
    long-poll subscriber gets every event while the hook's POST hangs."""
    black_hole = socket.create_server((HOST, 0))
    try:
        server = start_server("--config", config_file(tmp_path))
        register(server, f"http://{HOST}:{black_hole.getsockname()[1]}/hook")
        start = server.health()["cursor"]
        m1 = Master()
        poller = Poller(server.url, start)
        for _ in range(5):
            server.ingest(m1.batch(40))
        got = poller.events(200)
        assert seqs(got) == [("m1", "inc-1", s) for s in range(1, 201)]
        black_hole.settimeout(DEADLINE)
        conn, _ = black_hole.accept()  # the hook did try to deliver
        conn.close()
    finally:
        black_hole.close()


def test_internal_receivers_refused_unless_allowed(start_server, tmp_path, receiver):
    """By default a loopback, private or cloud-metadata receiver is refused at registration
    with a 400 naming the address, and a host name resolving to loopback is refused when
    delivering (``last_error`` says so, the receiver sees nothing); ``--webhook-allow-network``
    opens a network: the same receiver then gets the events."""
    server = start_server("--config", config_file(tmp_path, allow="[]"))
    for url, address in ((receiver.url, "127.0.0.1"), ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
                         ("http://0x7f.1:9/", "127.0.0.1"), ("http://[::ffff:10.0.0.1]/", "10.0.0.1")):
        status, body = api(server.url, "POST", "/api/webhooks", {"url": url})
        assert status == 400 and body["error"] == "bad_webhook", body
        assert f"{address}" in body["message"] and "is not allowed" in body["message"], body
    named = register(server, f"http://localhost:{receiver.port}/hook")
    server.ingest(Master().batch(2))

    def refused():
        body = api(server.url, "GET", f"/api/webhooks/{named['id']}")[1]
        return body if body["last_error"] else None

    error = wait_for(refused, "the named hook's delivery to be refused")["last_error"]
    assert error.startswith("address ") and "is not allowed (loopback)" in error, error
    assert receiver.attempts == []
    assert server.stop() == 0
    opened = start_server("--config", config_file(tmp_path, allow="[]"), "--webhook-allow-network", "127.0.0.0/8")
    register(opened, receiver.url)
    opened.ingest(Master().batch(3))
    assert [e["seq"] for e in receiver.wait_events(3)] == [1, 2, 3]


def test_cloudevents_formats_reach_a_receiver(start_server, tmp_path, receiver):
    """A hook with ``format: cloudevents`` POSTs structured CloudEvents batches that the
    CloudEvents SDK reads, in stream order; ``cloudevents-binary`` POSTs one event each with
    ``ce-*`` headers; an unknown format is refused at registration naming the allowed ones."""
    from cloudevents.core.bindings.http import HTTPMessage, from_binary
    from cloudevents.core.formats.json import JSONFormat

    server = start_server("--config", config_file(tmp_path, allow="[]"), "--webhook-allow-network", "127.0.0.0/8")
    status, body = api(server.url, "POST", "/api/webhooks", {"url": receiver.url, "format": "protobuf"})
    assert status == 400 and "firehose, cloudevents, cloudevents-binary" in body["message"]
    binary = Receiver()
    try:
        register(server, receiver.url, format="cloudevents")
        register(server, binary.url, format="cloudevents-binary")
        server.ingest(Master().batch(3))
        wait_for(lambda: sum(len(json.loads(a["body"])) for a in list(receiver.attempts)) >= 3 or None,
                 "three structured CloudEvents")
        binary.wait_attempts(3)
        structured = [JSONFormat().read(None, json.dumps(item).encode())
                      for attempt in receiver.attempts for item in json.loads(attempt["body"])]
        assert receiver.attempts[0]["headers"]["content-type"] == "application/cloudevents-batch+json"
        assert [e.get_extension("firehoseseq") for e in structured] == ["1", "2", "3"]
        singles = [from_binary(HTTPMessage(headers=a["headers"], body=a["body"]), JSONFormat(), None)
                   for a in binary.attempts]
        assert [e.get_id() for e in singles] == [e.get_id() for e in structured]
        assert all(a["headers"]["webhook-signature"].startswith("v1,") for a in binary.attempts)
    finally:
        binary.close()
