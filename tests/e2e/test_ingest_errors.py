"""Bad ingest input: the right 4xx JSON error, nothing journaled or published, server keeps going."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import TOKENS, Master, ServerProcess, SSEClient, WSClient, post_ingest, seqs

pytestmark = pytest.mark.slow

MAX_BODY = 2048


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with a 2 KiB ingest body limit, shared by this module's tests."""
    path = tmp_path_factory.mktemp("ingest-errors")
    server = ServerProcess(path / "journal.sqlite", path / "server.log", dict(TOKENS),
                           ("--max-body", str(MAX_BODY)))
    try:
        yield server.start()
    finally:
        server.kill()


M1 = Master("m1", "bad-input")


def good(**kw: Any) -> dict[str, Any]:
    return M1.event(**kw)


def without(event: dict[str, Any], *path: str) -> dict[str, Any]:
    target = event
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return event


def _big_batch() -> list[dict[str, Any]]:
    return [good(pad=600) for _ in range(4)]


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _repeated() -> list[dict[str, Any]]:
    event = good()
    return [event, dict(event)]


#: name -> (make request kwargs, expected status, expected error code)
CASES: dict[str, tuple[Any, int, str]] = {
    "malformed-json": (lambda: {"raw": b'[{"master": "m1", "seq": '}, 400, "malformed_json"),
    "not-utf8": (lambda: {"raw": b'["\xff\xfe"]'}, 400, "malformed_json"),
    "empty-body": (lambda: {"raw": b""}, 400, "malformed_json"),
    "not-an-array": (lambda: {"body": good()}, 422, "schema"),
    "empty-array": (lambda: {"body": []}, 422, "schema"),
    "missing-seq": (lambda: {"body": [without(good(), "seq")]}, 422, "schema"),
    "seq-zero": (lambda: {"body": [{**good(), "seq": 0}]}, 422, "schema"),
    "unknown-type": (lambda: {"body": [{**good(), "type": "build.exploded"}]}, 422, "schema"),
    "data-missing-builder": (lambda: {"body": [without(good(), "data", "builder")]}, 422, "schema"),
    "unknown-envelope-field": (lambda: {"body": [{**good(), "extra": 1}]}, 422, "schema"),
    "seq-2^63": (lambda: {"body": [{**good(), "seq": 2**63}]}, 422, "schema"),
    "seq-past-2^64": (lambda: {"body": [{**good(), "seq": 2**64 + 1}]}, 422, "schema"),
    "seq-float": (lambda: {"body": [{**good(), "seq": 7.0}]}, 422, "schema"),
    "seq-bool": (lambda: {"body": [{**good(), "seq": True}]}, 422, "schema"),
    "seqs-out-of-order": (lambda: {"body": list(reversed([good(), good()]))}, 422, "seq_order"),
    "seq-repeated-in-batch": (lambda: {"body": _repeated()}, 422, "seq_order"),
    "nested-past-the-encoder": (lambda: {"body": [good(properties={"p": _nested(300)})]}, 422, "too_deep"),
    "nested-past-the-limit": (lambda: {"body": [good(), good(x=_nested(31))]}, 422, "too_deep"),
    "oversized": (lambda: {"body": _big_batch()}, 413, "too_large"),
    "oversized-chunked": (lambda: {"body": _big_batch(), "chunked": True}, 413, "too_large"),
    "missing-token": (lambda: {"body": [good()], "token": None}, 401, "unauthorized"),
    "not-bearer": (lambda: {"body": [good()], "token": None,
                            "headers": {"Authorization": "Basic dG9rLW0xOg=="}}, 401, "unauthorized"),
    "wrong-token": (lambda: {"body": [good()], "token": "tok-nope"}, 401, "unauthorized"),
    "unknown-master": (lambda: {"body": [{**good(), "master": "m9"}]}, 403, "wrong_master"),
    "token-of-another-master": (lambda: {"body": [good()], "token": TOKENS["m2"]}, 403, "wrong_master"),
    "one-event-of-another-master": (
        lambda: {"body": [good(), {**good(), "master": "m2"}, good()]}, 403, "wrong_master"),
}


@pytest.mark.parametrize("make,status,error", CASES.values(), ids=CASES.keys())
def test_bad_ingest_is_rejected_and_changes_nothing(make, status, error, limited, clients):
    """Each kind of bad input to POST /ingest gets its 4xx status with a JSON body naming the
    problem (``error`` code and a ``message``), is counted in /metrics by reason, leaves the
    journal head and the masters' state unchanged, publishes nothing to a live WebSocket or SSE
    subscriber, and the server goes on accepting good batches."""
    server = limited
    ws = WSClient(server.ws_url)
    clients.append(ws)
    ws.subscribe()
    sse = SSEClient(server.url)
    clients.append(sse)
    before = server.health()
    rejected_before = server.metric("firehose_ingest_rejected_total", reason=error) or 0

    kw = make()
    token = kw.pop("token", TOKENS["m1"])
    got_status, body = post_ingest(server.url, kw.pop("body", None), token, **kw)
    assert got_status == status, body
    answer = json.loads(body)
    assert answer["error"] == error, answer
    assert isinstance(answer["message"], str) and answer["message"], answer

    after = server.health()
    assert (after["cursor"], after["masters"]) == (before["cursor"], before["masters"])
    assert server.metric("firehose_ingest_rejected_total", reason=error) == rejected_before + 1
    sentinel = good()
    server.ingest([sentinel])
    assert seqs(ws.events(1)) == seqs([sentinel])  # nothing was published before it
    assert seqs(sse.events(1)) == seqs([sentinel])
    assert ws.control == [] and sse.gaps == []


def test_batch_with_one_bad_event_is_rejected_whole(limited, clients):
    """A batch of good events with one schema-invalid event among them is rejected as a whole
    (422 naming the bad item): none of its good events is journaled or published, so sending
    the good ones afterwards accepts every one of them (no duplicates)."""
    server = limited
    ws = WSClient(server.ws_url)
    clients.append(ws)
    ws.subscribe()
    before = server.health()["cursor"]
    goods = [good() for _ in range(3)]
    bad = without(good(type="step.started"), "data", "stepid")
    status, body = post_ingest(server.url, [goods[0], goods[1], bad, goods[2]], TOKENS["m1"])
    assert status == 422, body
    answer = json.loads(body)
    assert answer["error"] == "schema"
    assert "2" in answer["message"], answer  # names the bad item's index
    assert server.health()["cursor"] == before

    answer = server.ingest(goods)
    assert (answer["accepted"], answer["duplicates"]) == (3, 0)
    assert seqs(ws.events(3)) == seqs(goods)
    ws.assert_nothing_more()


def test_body_at_the_limit_is_accepted(limited):
    """A body of exactly --max-body bytes is accepted; one byte more is refused with 413."""
    event = good(pad=1)
    raw = json.dumps([event]).encode()
    event["data"]["state"] += "x" * (MAX_BODY - len(raw))
    raw = json.dumps([event]).encode()
    assert len(raw) == MAX_BODY
    status, body = post_ingest(limited.url, None, TOKENS["m1"], raw=raw)
    assert status == 200, body
    over = good(pad=1)
    over["data"]["state"] += "x" * (MAX_BODY + 1 - len(json.dumps([over]).encode()))
    raw = json.dumps([over]).encode()
    assert len(raw) == MAX_BODY + 1
    status, body = post_ingest(limited.url, None, TOKENS["m1"], raw=raw)
    assert status == 413, body


def test_server_without_master_tokens_refuses_ingest(start_server):
    """A server started with no master tokens answers every ingest with 403 ``no_masters``
    (not a crash, not a silent accept)."""
    server = start_server(tokens={})
    status, body = post_ingest(server.url, [Master().event()], "anything")
    assert status == 403, body
    assert json.loads(body)["error"] == "no_masters"
    assert server.health()["cursor"].endswith(":0")
