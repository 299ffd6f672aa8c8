"""Unit tests of firehose.webhooks: delivery with Clock and StubTreq, persistence, the API."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from firehose.hub import Hub
from firehose.ingest import IngestStats
from firehose.journal import MemoryJournal
from firehose.metrics import FirehoseCollector
from firehose.webhooks import (
    HookConflict,
    HookNotFound,
    JSONFileHookStore,
    MemoryHookStore,
    WebhookConfig,
    WebhookDispatcher,
    WebhookError,
    apply_config_table,
    verify,
    write_json_atomically,
)
from tests.unit.helpers import batch, webhook_site


class ReceiverResource(Resource):
    """Answers POSTs with the next status of ``codes`` (then 200), recording bodies."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.codes: list[int] = []
        self.bodies: list[tuple[int, bytes, dict[str, str]]] = []

    def render_POST(self, request: Any) -> bytes:
        code = self.codes.pop(0) if self.codes else 200
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.bodies.append((code, request.content.read(), headers))
        request.setResponseCode(code)
        return b""

    def delivered(self) -> list[int]:
        return [e["seq"] for code, body, _ in self.bodies if code < 300 for e in json.loads(body)["events"]]


class Setup:
    def __init__(self, **config: Any) -> None:
        self.clock = Clock()
        self.journal = MemoryJournal(epoch="e1")
        self.hub = Hub(self.journal, page_size=10, max_pending=15)
        self.receiver = ReceiverResource()
        self.store = MemoryHookStore()
        cfg = WebhookConfig(retry_initial=1, retry_max=4, batch_size=5, **config)
        self.dispatcher = WebhookDispatcher(self.hub, cfg, self.store, self.clock, agent=RequestTraversalAgent(self.receiver),
                                            rand=random.Random(0).random)
        self.dispatcher.start()

    def append(self, first: int, last: int, **kw: Any) -> None:
        self.journal.append(batch(first, last, **kw))

    def stop(self) -> None:
        self.dispatcher.stop()
        assert self.clock.getDelayedCalls() == []


def test_batches_signed_in_order_with_retries():
    """Events go out in batches of batch_size, signed; a failed batch is retried after the
    backoff and nothing after it is sent before it is acknowledged."""
    s = Setup()
    hook = s.dispatcher.add("http://r.test/hook", {"builder": "linux"}, secret="x" * 16)
    s.receiver.codes = [500, 502]
    s.append(1, 12)
    s.append(13, 14, builder="mac")
    assert s.receiver.delivered() == []
    s.clock.advance(1)
    s.clock.advance(2)
    assert s.receiver.delivered() == list(range(1, 13))
    codes = [c for c, _, _ in s.receiver.bodies]
    assert codes == [500, 502, 200, 200, 200]
    for _, body, headers in s.receiver.bodies:
        assert verify("x" * 16, body, headers["x-firehose-signature"], headers["x-firehose-timestamp"],
                      now=s.clock.seconds())
    assert hook.cursor == "e1:14" and hook.delivered == 12 and hook.failures == 0
    assert s.store.state[hook.id]["cursor"] == "e1:14"
    s.stop()


def test_disabled_after_max_failures_and_reenabled():
    """max_failures consecutive failures disable the hook with a reason; enable resumes at the
    stored cursor; 410 disables at once."""
    s = Setup(max_failures=3)
    hook = s.dispatcher.add("http://r.test/hook", secret="y" * 16)
    s.receiver.codes = [503, 503, 503]
    s.append(1, 3)
    s.clock.advance(10)
    s.clock.advance(10)
    assert not hook.active and "3 consecutive failed deliveries; last: receiver answered HTTP 503" == hook.disabled_reason
    assert s.clock.getDelayedCalls() == []
    s.append(4, 4)
    s.dispatcher.enable(hook.id)
    assert s.receiver.delivered() == [1, 2, 3, 4]
    s.receiver.codes = [410]
    s.append(5, 5)
    assert not hook.active and "410" in (hook.disabled_reason or "")
    s.stop()


def test_dead_receiver_is_ended_slow_then_catches_up_from_journal():
    """While a batch is retried the subscription is paused; past max_pending the hub ends it
    as slow, and once the receiver is back the hook resubscribes from its cursor: every event
    once, in order."""
    s = Setup()
    hook = s.dispatcher.add("http://r.test/hook", secret="z" * 16)
    s.receiver.codes = [500]
    s.append(1, 3)
    s.append(4, 40)  # more than max_pending (15) while paused
    assert not any(sub.transport == "webhook" for sub in s.hub.subscriptions)
    s.clock.advance(1)
    assert s.receiver.delivered() == list(range(1, 41))
    assert hook.cursor == "e1:40"
    s.stop()


def test_restart_resumes_from_stored_cursor():
    """A new dispatcher over the same store delivers only what the old one had not."""
    s = Setup()
    hook = s.dispatcher.add("http://r.test/hook", secret="w" * 16)
    s.append(1, 3)
    s.stop()
    s.append(4, 6)
    receiver = ReceiverResource()
    again = WebhookDispatcher(s.hub, s.dispatcher.config, s.store, s.clock, agent=RequestTraversalAgent(receiver))
    again.start()
    assert receiver.delivered() == [4, 5, 6] and again.hooks[hook.id].cursor == "e1:6"
    again.stop()


def test_config_table_and_config_hooks():
    """The [webhooks] table sets options and hooks; mistakes name the key."""
    cfg = apply_config_table({"admin_token": "t", "max_failures": 4, "hooks": {
        "ci": {"url": "http://r.test/", "secret": "s" * 16, "filter": {"type": "build.*"}}}}, WebhookConfig())
    assert cfg.admin_token == "t" and cfg.max_failures == 4 and "ci" in cfg.hooks
    for bad in ({"colour": 1}, {"hooks": {"x": {"url": "ftp://x", "secret": "s"}}},
                {"hooks": {"x": {"url": "http://x/"}}}, {"hooks": {"x": {"url": "http://x/", "secret": "s",
                                                                            "filter": {"no": "x"}}}}):
        with pytest.raises(WebhookError):
            apply_config_table(bad, WebhookConfig())


def test_json_store_atomic_write_and_load(tmp_path):
    """The state file is written whole (mode 0600) and read back."""
    path = tmp_path / "j.webhooks.json"
    write_json_atomically(str(path), {"hooks": {"a": {"id": "a"}}})
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    store = JSONFileHookStore(str(path), Clock())
    try:
        assert store.load() == {"a": {"id": "a"}}
    finally:
        store._pool.stop()
    assert list(tmp_path.iterdir()) == [path]


def test_api_auth_and_crud():
    """401 without the token, 403 without a configured token; create/list/patch/delete."""
    s = Setup()
    site, closed = webhook_site(s.dispatcher, "adm"), webhook_site(s.dispatcher, None)
    api = StubTreq(site)
    root = "http://x/api/webhooks"
    assert api.get(root).result.code == 401
    assert api.get(root, headers={"Authorization": "Bearer nope"}).result.code == 401
    assert StubTreq(closed).get(root).result.code == 403
    auth = {"Authorization": "Bearer adm"}
    resp = api.post(root, json={"url": "http://r.test/", "id": "mine"}, headers=auth).result
    assert resp.code == 201
    created = json.loads(api.content(resp).result)
    assert created["id"] == "mine" and len(created["secret"]) > 16
    assert api.post(root, json={"url": "http://r.test/", "id": "mine"}, headers=auth).result.code == 409
    assert api.post(root, json={"url": "http://r.test/", "since": "e1:99"}, headers=auth).result.code == 400
    listing = json.loads(api.content(api.get(root, headers=auth).result).result)
    assert [h["id"] for h in listing["webhooks"]] == ["mine"] and "secret" not in listing["webhooks"][0]
    resp = api.patch(root + "/mine", json={"active": False}, headers=auth).result
    assert resp.code == 200 and not s.dispatcher.hooks["mine"].active
    assert api.delete(root + "/mine", headers=auth).result.code == 200
    assert api.get(root + "/mine", headers=auth).result.code == 404
    s.stop()


def test_api_status_follows_the_error_type_not_its_text():
    """A refusal's status comes from its type: a bad URL or filter is 400 even when its message
    holds "config" or "exists" (those words once made it a 409); a taken id or a config-file
    hook is 409; an unknown id is 404, for every method."""
    s = Setup(hooks={"ci": {"url": "http://r.test/", "secret": "c" * 16}})
    s.dispatcher.load()
    site = webhook_site(s.dispatcher, "adm")
    api, root, auth = StubTreq(site), "http://x/api/webhooks", {"Authorization": "Bearer adm"}

    def status(method: str, path: str = "", **kw: Any) -> tuple[int, dict[str, Any]]:
        resp = getattr(api, method)(root + path, headers=auth, **kw).result
        return resp.code, json.loads(api.content(resp).result)

    assert status("post", json={"url": "ftp://config.exists/"})[0] == 400
    assert status("post", json={"url": "http://r.test/", "filter": {"config": "x"}})[0] == 400
    code, body = status("post", json={"url": "http://r.test/", "id": "ci"})
    assert (code, body["error"]) == (409, "bad_webhook") and "already exists" in body["message"]
    assert status("delete", "/ci")[0] == 409
    for method in ("get", "delete", "patch"):
        code, body = status(method, "/nobody", json={"active": True})
        assert (code, body["error"], body["message"]) == (404, "not_found", "no webhook 'nobody'")
    s.stop()


def test_dispatcher_refusals_are_typed():
    """The dispatcher raises HookNotFound for an unknown id and HookConflict for a taken id or
    a config-file hook: callers tell them apart without reading messages."""
    s = Setup(hooks={"ci": {"url": "http://r.test/", "secret": "c" * 16}})
    s.dispatcher.load()
    for call in (s.dispatcher.get, s.dispatcher.remove, s.dispatcher.enable, s.dispatcher.disable):
        with pytest.raises(HookNotFound):
            call("nobody")
    with pytest.raises(HookConflict):
        s.dispatcher.add("http://r.test/", hook_id="ci")
    with pytest.raises(HookConflict):
        s.dispatcher.remove("ci")
    s.stop()


def test_metrics_count_hooks_and_deliveries():
    """/metrics shows hooks by state, POSTs by result (a failed attempt and a 410 count as
    failed) and the events acknowledged, from the dispatcher's own counters."""
    s = Setup(max_failures=5)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FirehoseCollector(s.hub, s.journal, IngestStats(), lambda: 0, clock=s.clock,
                                        webhooks=s.dispatcher))

    def scrape() -> dict[str, float]:
        lines = generate_latest(registry).decode().splitlines()
        return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in lines)
                if name.startswith("firehose_webhook")}

    assert scrape() == {'firehose_webhooks{state="active"}': 0.0, 'firehose_webhooks{state="disabled"}': 0.0,
                        'firehose_webhook_deliveries_total{result="delivered"}': 0.0,
                        'firehose_webhook_deliveries_total{result="failed"}': 0.0,
                        "firehose_webhook_events_delivered_total": 0.0}
    s.dispatcher.add("http://r.test/one", {"builder": "linux"}, secret="a" * 16)
    gone = s.dispatcher.add("http://r.test/two", {"builder": "mac"}, secret="b" * 16)
    s.receiver.codes = [500]
    s.append(1, 7)  # hook one: a POST of 5 fails; after the retry 5, then 2, are delivered
    s.clock.advance(1)
    s.receiver.codes = [410]
    s.append(8, 8, builder="mac")  # hook two is told 410 Gone
    assert s.receiver.delivered() == list(range(1, 8)) and not gone.active
    metrics = scrape()
    assert metrics['firehose_webhooks{state="active"}'] == 1 and metrics['firehose_webhooks{state="disabled"}'] == 1
    assert metrics['firehose_webhook_deliveries_total{result="failed"}'] == 2
    assert metrics['firehose_webhook_deliveries_total{result="delivered"}'] == 2
    assert metrics["firehose_webhook_events_delivered_total"] == 7
    s.stop()
