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


def test_delivery_log_records_every_attempt_newest_first_bounded():
    """Each POST is one log entry (time, webhook-id, cursors, events, attempt number, status or
    error, duration in ms), newest first; the log keeps only the last ``log_size`` attempts."""
    clock = Clock()
    journal = MemoryJournal(epoch="e1")
    hub = Hub(journal, page_size=10, max_pending=15)
    receiver = ReceiverResource()
    dispatcher = WebhookDispatcher(hub, WebhookConfig(retry_initial=1, retry_max=1, batch_size=2), MemoryHookStore(),
                                   clock, agent=RequestTraversalAgent(receiver), rand=random.Random(0).random,
                                   log_size=3)
    dispatcher.start()
    hook = dispatcher.add("http://r.test/hook", secret="l" * 16)
    receiver.codes = [500]
    journal.append(batch(1, 2))
    clock.advance(1)
    journal.append(batch(3, 5))
    log = dispatcher.delivery_log(hook.id).newest_first()
    assert len(log) == 3  # four attempts, the oldest dropped
    assert [(e["first"], e["last"], e["events"], e["attempt"], e["status"], e["error"]) for e in log] == [
        ("e1:5", "e1:5", 1, 1, 200, None),
        ("e1:3", "e1:4", 2, 1, 200, None),
        ("e1:1", "e1:2", 2, 2, 200, None),
    ]
    assert log[2]["webhook_id"] == f"{hook.id}/e1:1..e1:2" and log[2]["time"] == 1.0
    assert all(e["duration_ms"] == 0.0 for e in log)
    dispatcher.stop()
    assert clock.getDelayedCalls() == []


def test_delivery_log_tells_failures_and_the_api_shows_it():
    """A failed attempt is logged with its status (or the error sentence when there was no
    answer); ``GET /api/webhooks/<id>/deliveries`` shows the log; an unknown hook is 404 and
    another method 405."""
    s = Setup()
    hook = s.dispatcher.add("http://r.test/hook", secret="f" * 16, hook_id="h")
    s.receiver.codes = [502]
    s.append(1, 1)
    s.clock.advance(1)
    api, root, auth = StubTreq(webhook_site(s.dispatcher, "adm")), "http://x/api/webhooks", {"Authorization": "Bearer adm"}
    resp = api.get(root + "/h/deliveries", headers=auth).result
    body = json.loads(api.content(resp).result)
    assert resp.code == 200 and body["hook"] == "h"
    assert [(e["attempt"], e["status"], e["error"]) for e in body["deliveries"]] == [
        (2, 200, None), (1, 502, "receiver answered HTTP 502")]
    assert api.get(root + "/nobody/deliveries", headers=auth).result.code == 404
    resp = api.post(root + "/h/deliveries", headers=auth).result
    assert resp.code == 405 and resp.headers.getRawHeaders("allow") == ["GET"]
    assert api.get(root + "/h/elsewhere", headers=auth).result.code == 404
    assert api.get(root + "/h/deliveries").result.code == 401
    assert hook.failures == 0
    s.stop()


def test_failed_connection_is_logged_with_its_sentence():
    """With no answer at all the entry has no status and the agent's sentence as error."""
    from twisted.internet import defer

    from firehose.webhooks.agent import DeliveryError

    s = Setup()
    hook = s.dispatcher.add("http://r.test/hook", secret="e" * 16)
    s.dispatcher.post = lambda url, body, headers: defer.fail(DeliveryError("connection refused by 127.0.0.1:9"))
    s.append(1, 1)
    (entry,) = s.dispatcher.delivery_log(hook.id).newest_first()
    assert (entry["status"], entry["error"], entry["attempt"]) == (None, "connection refused by 127.0.0.1:9", 1)
    s.stop()


def test_redeliver_moves_the_cursor_back_and_sends_again_in_order():
    """``redeliver(since)`` moves the hook's cursor back (saved), and every event after it comes
    again, in order, under new webhook-ids (``/r1``), so an id-deduping receiver keeps them."""
    s = Setup()
    hook = s.dispatcher.add("http://r.test/hook", secret="r" * 16)
    s.append(1, 6)
    assert s.receiver.delivered() == [1, 2, 3, 4, 5, 6] and hook.cursor == "e1:6"
    s.dispatcher.redeliver(hook.id, "e1:2")
    assert s.receiver.delivered()[6:] == [3, 4, 5, 6]
    assert hook.cursor == "e1:6" and hook.redeliveries == 1
    assert s.receiver.bodies[-1][2]["webhook-id"] == f"{hook.id}/e1:3..e1:6/r1"
    s.dispatcher.redeliver(hook.id, "earliest")
    assert s.receiver.delivered()[10:] == [1, 2, 3, 4, 5, 6]
    assert s.store.state[hook.id]["redeliveries"] == 2
    s.stop()


def test_redeliver_while_a_batch_is_retried_abandons_it():
    """A redelivery during retries drops the pending batch and the timer; delivery restarts
    from the given cursor and nothing is lost."""
    s = Setup()
    hook = s.dispatcher.add("http://r.test/hook", secret="q" * 16)
    s.append(1, 2)
    s.receiver.codes = [500]
    s.append(3, 4)
    assert s.dispatcher.view(hook)["retrying"]
    s.dispatcher.redeliver(hook.id, "e1:1")
    assert s.receiver.delivered() == [1, 2, 2, 3, 4] and hook.cursor == "e1:4"
    s.stop()


def test_redeliver_refusals():
    """Through the API: a malformed cursor, ``now``, a cursor ahead of the stream or of the hook's
    own cursor, or a body without ``since`` is a 400 with the error body; an unknown hook 404;
    GET is 405.  A good call answers the hook, and the events after the cursor come again."""
    s = Setup()
    s.dispatcher.add("http://r.test/hook", secret="p" * 16, hook_id="h", since="earliest")
    s.append(1, 3)
    s.receiver.codes = [500]
    s.append(4, 4)
    api, root, auth = StubTreq(webhook_site(s.dispatcher, "adm")), "http://x/api/webhooks", {"Authorization": "Bearer adm"}

    def call(path: str, body: Any) -> tuple[int, dict[str, Any]]:
        resp = api.post(root + path, json=body, headers=auth).result
        return resp.code, json.loads(api.content(resp).result)

    for since, error in (("e1:x", "bad_cursor"), ("now", "bad_cursor"), ("e1:99", "bad_cursor"),
                         ("e1:4", "bad_cursor"), (3, "bad_cursor")):
        code, body = call("/h/redeliver", {"since": since})
        assert (code, body["error"]) == (400, error), since
        assert body["message"]
    assert "ahead of the hook's cursor" in call("/h/redeliver", {"since": "e1:4"})[1]["message"]
    assert call("/h/redeliver", {})[0] == 400
    assert call("/nobody/redeliver", {"since": "earliest"})[0] == 404
    assert api.get(root + "/h/redeliver", headers=auth).result.code == 405
    code, body = call("/h/redeliver", {"since": "e1:1"})
    assert code == 200 and body["redeliveries"] == 1
    assert s.receiver.delivered() == [1, 2, 3, 2, 3, 4] and body["cursor"] == "e1:4"  # delivered at once here
    s.stop()


def test_format_is_checked_at_registration_and_in_the_config():
    """``format`` is one of firehose, cloudevents, cloudevents-binary: anything else is a 400
    naming them (API) or stops the config (naming the hook); PATCH changes it."""
    s = Setup()
    api, root, auth = StubTreq(webhook_site(s.dispatcher, "adm")), "http://x/api/webhooks", {"Authorization": "Bearer adm"}
    resp = api.post(root, json={"url": "http://r.test/", "format": "xml"}, headers=auth).result
    body = json.loads(api.content(resp).result)
    assert resp.code == 400 and body["message"] == "'format' must be one of firehose, cloudevents, cloudevents-binary"
    resp = api.post(root, json={"url": "http://r.test/", "format": "cloudevents", "id": "c"}, headers=auth).result
    assert resp.code == 201 and json.loads(api.content(resp).result)["format"] == "cloudevents"
    resp = api.patch(root + "/c", json={"format": "firehose"}, headers=auth).result
    assert resp.code == 200 and s.dispatcher.hooks["c"].format == "firehose"
    assert api.patch(root + "/c", json={"format": 1}, headers=auth).result.code == 400
    with pytest.raises(WebhookError, match=r"\[webhooks.hooks.x\].*'format' must be one of"):
        apply_config_table({"hooks": {"x": {"url": "http://r.test/", "secret": "s", "format": "cbor"}}}, WebhookConfig())
    s.stop()
    cfg = {"ci": {"url": "http://r.test/", "secret": "c" * 16, "format": "cloudevents-binary",
                  "previous_secrets": ["o" * 16]}}
    s = Setup(hooks=cfg)
    s.dispatcher.load()
    assert s.dispatcher.hooks["ci"].format == "cloudevents-binary"
    assert s.dispatcher.hooks["ci"].secrets == ["c" * 16, "o" * 16]
    s.stop()


def test_cloudevents_structured_batch_parses_with_the_sdk():
    """``format: cloudevents`` POSTs ``application/cloudevents-batch+json``: an array whose every
    element the CloudEvents SDK reads as a CloudEvent of our mapping, in stream order; it is
    signed both ways like any delivery."""
    from cloudevents.core.formats.json import JSONFormat

    from firehose.signing import verify_standard

    s = Setup()
    hook = s.dispatcher.add("http://r.test/hook", secret="k" * 16, fmt="cloudevents")
    s.append(1, 3)
    ((_, body, headers),) = s.receiver.bodies
    assert headers["content-type"] == "application/cloudevents-batch+json"
    events = [JSONFormat().read(None, json.dumps(item).encode()) for item in json.loads(body)]
    assert [e.get_id() for e in events] == ["e1:1", "e1:2", "e1:3"]
    assert {e.get_type() for e in events} == {"org.buildbot.firehose.build.started.v1"}
    assert verify("k" * 16, body, headers["x-firehose-signature"])
    assert verify_standard("k" * 16, body, headers, tolerance=None)
    assert hook.cursor == "e1:3"
    s.stop()


def test_cloudevents_binary_one_event_per_post():
    """``format: cloudevents-binary`` POSTs one event each, ``ce-*`` headers and the data as the
    body, which the SDK's binary binding reads back; the cursor advances per event."""
    from cloudevents.core.bindings.http import HTTPMessage, from_binary
    from cloudevents.core.formats.json import JSONFormat

    s = Setup()
    hook = s.dispatcher.add("http://r.test/hook", secret="b" * 16, fmt="cloudevents-binary")
    s.append(1, 3)
    assert len(s.receiver.bodies) == 3
    for n, (_, body, headers) in enumerate(s.receiver.bodies, start=1):
        event = from_binary(HTTPMessage(headers={k: v for k, v in headers.items() if k.startswith("ce-")
                                                 or k == "content-type"}, body=body), JSONFormat(), None)
        assert event.get_id() == f"e1:{n}" and json.loads(body)["buildid"] == n
        assert headers["webhook-id"] == f"{hook.id}/e1:{n}..e1:{n}"
    assert hook.cursor == "e1:3" and hook.delivered == 3
    s.stop()


def test_gaps_in_cloudevents_formats_travel_in_a_header():
    """A hook whose cursor outlived retention is told the gap: in the CloudEvents formats in the
    X-Firehose-Gaps header (the body holds only CloudEvents)."""
    from firehose.webhooks.bodies import render

    body, headers = render("cloudevents", "h", 1, [], [{"type": "gap", "reason": "expired", "cursor": "e1:5"}])
    assert body == b"[]" and json.loads(headers["X-Firehose-Gaps"])[0]["reason"] == "expired"
    assert headers["Content-Type"] == "application/cloudevents-batch+json"
    body, headers = render("cloudevents-binary", "h", 1, [], [{"type": "gap", "reason": "epoch"}])
    assert body == b"[]" and "X-Firehose-Gaps" in headers
