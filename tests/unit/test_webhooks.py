"""Unit tests of firehose.webhooks: delivery with Clock and StubTreq, persistence, the API."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from firehose.hub import Hub
from firehose.journal import MemoryJournal
from firehose.webhooks import (
    JSONFileHookStore,
    MemoryHookStore,
    WebhookConfig,
    WebhookDispatcher,
    WebhookError,
    apply_config_table,
    mount,
    verify,
    write_json_atomically,
)
from tests.unit.helpers import batch


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
    site, closed = Resource(), Resource()
    mount(site, s.dispatcher, "adm")
    mount(closed, s.dispatcher, None)
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
