"""Unit tests of firehose.client and firehose.testing: no sockets, no global reactor."""

from __future__ import annotations

import io
import json
import random
import urllib.error
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test import iosim

from firehose.client import (
    Backoff,
    FirehoseClient,
    Gap,
    RequestError,
    RevisionTracker,
    Stream,
    Unavailable,
    filter_dict,
)
from firehose.hub import Hub
from firehose.journal import MemoryJournal
from firehose.testing import FakeFirehose, try_push, webhook_request
from firehose.transports.websocket import FirehoseWebSocketFactory
from firehose.webhooks import verify
from tests.unit.helpers import batch


class FakeOpener:
    """Answers polls from a script: dicts are JSON answers, exceptions are raised."""

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.urls: list[str] = []

    def open(self, url: str, timeout: float) -> Any:
        self.urls.append(url)
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return io.BytesIO(json.dumps(item).encode())


def ev(n: int, **data: Any) -> dict[str, Any]:
    return {"id": f"e:{n}", "type": "build.finished", "seq": n, "data": data}


def make_stream(script: list[Any], since: str | None = None, **kw: Any) -> tuple[Stream, FakeOpener, list[float]]:
    opener = FakeOpener(script)
    sleeps: list[float] = []
    s = Stream("http://h:1", {}, since, opener=opener, sleep=sleeps.append, backoff=Backoff(rand=random.Random(1).random),
               **kw)
    return s, opener, sleeps


def test_filter_dict_merges_and_validates():
    """Keyword filters, a filter dict, prop__name and comma alternatives merge into one filter;
    an unknown field is a RequestError naming it."""
    assert filter_dict({"prop.owner": "al"}, builder=["a*", "b"], type="build.*,step.*", prop__x="1") == {
        "prop.owner": ["al"], "builder": ["a*", "b"], "type": ["build.*", "step.*"], "prop.x": ["1"]}
    with pytest.raises(RequestError, match="colour"):
        filter_dict(colour="red")


def test_stream_cursor_follows_what_was_yielded_and_retries_failures():
    """The cursor is the last yielded event's id, then the answer's cursor; a failed poll is
    retried after a backoff from the same cursor (nothing lost or doubled)."""
    s, opener, sleeps = make_stream([
        {"events": [ev(1), ev(2)], "cursor": "e:2"},
        urllib.error.URLError("refused"),
        ConnectionResetError(),
        {"events": [], "cursor": "e:5"},
        {"events": [ev(6)], "cursor": "e:6"},
    ], since="earliest")
    assert next(s)["seq"] == 1 and s.cursor == "e:1"
    assert next(s)["seq"] == 2 and s.cursor == "e:2"
    assert next(s)["seq"] == 6
    assert "since=earliest" in opener.urls[0]
    assert all("since=e%3A2" in u for u in opener.urls[1:4])
    assert "since=e%3A5" in opener.urls[4]
    assert len(sleeps) == 2


def test_stream_started_live_pins_now_before_an_outage():
    """Started from now, the first poll asks for the head at once (``timeout=0``, no since)
    and every later poll, the retries after an outage included, continues from that head:
    events published during an outage before the first event are not skipped (the retry used
    to start "from now" again)."""
    s, opener, sleeps = make_stream([
        {"events": [], "cursor": "e:7"},
        ConnectionResetError(),
        urllib.error.URLError("refused"),
        {"events": [ev(8), ev(9)], "cursor": "e:9"},
    ])
    assert next(s)["seq"] == 8 and next(s)["seq"] == 9
    assert "since=" not in opener.urls[0] and "timeout=0&" in opener.urls[0]
    assert all("since=e%3A7" in u for u in opener.urls[1:])
    assert all("timeout=0&" not in u for u in opener.urls[1:])
    assert len(sleeps) == 2 and s.cursor == "e:9"


def test_stream_fetch_from_now_still_waits_after_pinning():
    """``fetch(timeout)`` on a stream started from now pins the head (a ``timeout=0`` poll)
    and then holds the poll the caller asked for, from that head: it does not come back
    empty at once just because the head was learnt first."""
    s, opener, _ = make_stream([{"events": [], "cursor": "e:3"}, {"events": [ev(4)], "cursor": "e:4"}])
    assert [e["seq"] for e in s.fetch(timeout=5)] == [4]
    assert "timeout=0&" in opener.urls[0] and "since=e%3A3" in opener.urls[1] and "timeout=5.000" in opener.urls[1]
    assert s.cursor == "e:4"


def test_stream_gaps_lost_are_surfaced_slow_is_not():
    """An expired gap is yielded as a Gap (or given to on_gap); a slow gap just moves on."""
    gap = {"type": "gap", "reason": "expired", "since": "e:1", "cursor": "e:9", "earliest": "e:9"}
    slow = {"type": "gap", "reason": "slow", "cursor": "e:10"}
    s, _, _ = make_stream([{"events": [], "gap": gap, "cursor": "e:9"}, {"events": [], "gap": slow, "cursor": "e:10"},
                           {"events": [ev(11)], "cursor": "e:11"}])
    first = next(s)
    assert isinstance(first, Gap) and first.lost and first.cursor == "e:9"
    assert next(s)["seq"] == 11
    seen: list[Gap] = []
    s2, _, _ = make_stream([{"events": [], "gap": gap, "cursor": "e:9"}, {"events": [ev(10)], "cursor": "e:10"}],
                           on_gap=seen.append)
    assert next(s2)["seq"] == 10 and seen[0].reason == "expired"


def test_stream_errors():
    """A 400 is a RequestError at once; fail_fast makes a first failure Unavailable."""
    body = io.BytesIO(b'{"error": "bad_cursor", "message": "ahead"}')
    s, _, sleeps = make_stream([urllib.error.HTTPError("u", 400, "Bad", {}, body)])  # type: ignore[arg-type]
    with pytest.raises(RequestError) as err:
        next(s)
    assert err.value.code == "bad_cursor" and sleeps == []
    s, _, _ = make_stream([urllib.error.URLError("refused")], fail_fast=True)
    with pytest.raises(Unavailable, match="refused"):
        next(s)
    with pytest.raises(RequestError):
        Stream("http://h:1", {}, "garbage")


def test_stream_stop_after_ends_iteration():
    """With stop_after, the iteration ends once the time is up (timed_out is set)."""
    now = [0.0]
    opener = FakeOpener([{"events": [], "cursor": "e:1"}])

    def sleep(_: float) -> None:
        raise AssertionError("no sleep expected")

    def answer(url: str, timeout: float) -> Any:
        now[0] += 10
        return FakeOpener.open(opener, url, timeout)

    opener_open = opener.open
    opener.open = answer  # type: ignore[method-assign]
    s = Stream("http://h:1", {}, None, opener=opener, sleep=sleep, monotonic=lambda: now[0], stop_after=5)
    assert list(s) == [] and s.timed_out
    del opener_open


def feed(tracker: RevisionTracker, events: list[dict[str, Any]]) -> list[str]:
    return [line for e in events if (line := tracker.feed(e))]


def test_tracker_green_red_retry_and_queued():
    """Done only when every request/build/buildset finished; retry keeps the request pending;
    a failure is reported; queued builds keep it waiting."""
    fake = FakeFirehose()
    fake.emit_all(try_push("r1", {"a": "success", "b": "retry"}))
    t = RevisionTracker("r1")
    lines = feed(t, fake.events())
    assert t.done and t.result().exit_code == 0 and len(lines) == 3
    fake2 = FakeFirehose()
    fake2.emit_all(try_push("r2", {"a": "success", "b": "failure"}, finish=["a"]))
    t2 = RevisionTracker("r2")
    feed(t2, fake2.events())
    assert not t2.done and [p.label() for p in t2.pending if p.kind == "build"] == ["b #1"]
    t3 = RevisionTracker("r2")
    fake3 = FakeFirehose()
    fake3.emit_all(try_push("r2", {"a": "success", "b": "failure"}))
    feed(t3, fake3.events())
    assert t3.done and t3.result().exit_code == 1 and "1 of 2 failed" in t3.result().summary()


def test_tracker_matches_by_request_stamps_and_builder():
    """A build whose got_revision differs still counts through its request; --builder ignores
    other builders; nothing seen means not done (exit code 2)."""
    t = RevisionTracker("abc*", builder="try-*")
    assert not t.done and t.result(timed_out=True).exit_code == 2
    events = try_push("abcdef", {"try-x": "success", "other": "failure"})
    for e in events:
        if e["type"].startswith("build."):
            e["data"]["revision"] = "somethingelse"
            e["data"]["properties"] = {"got_revision": "somethingelse"}
    feed(t, [dict(e, id="x") for e in events])
    assert t.done and [b.builder for b in t.result().builds] == ["try-x"] and t.result().exit_code == 0


def test_tracker_cancelled_request_fails():
    """A request cancelled before it was built counts as failed ('cancelled', no build)."""
    t = RevisionTracker("r")
    feed(t, [{"type": "request.submitted", "data": {"buildrequestid": 1, "builder": "a", "revision": "r"}},
             {"type": "request.cancelled", "data": {"buildrequestid": 1, "builder": "a", "revision": "r"}}])
    result = t.result()
    assert t.done and result.exit_code == 1 and "cancelled (no build)" in result.summary()


def test_tracker_decides_as_the_pushlog_a_rebuild_replaces_a_failure():
    """Each builder counts with its newest build, as in the pushlog (firehose.pushes): a
    rebuild that succeeds after a failure makes the revision green (exit 0; the failed build is
    listed as superseded); a queued rebuild keeps it waiting; a request cancelled beside a
    green build does not count; a revision whose only request was cancelled is done, not green
    (exit 1)."""
    req = {"builder": "a", "revision": "r"}
    t = RevisionTracker("r")
    feed(t, [{"type": "request.submitted", "data": {**req, "buildrequestid": 1}},
             {"type": "build.started", "data": {**req, "buildid": 1, "number": 1, "buildrequestid": 1, "started_at": 1}},
             {"type": "build.finished", "data": {**req, "buildid": 1, "number": 1, "buildrequestid": 1,
                                                 "started_at": 1, "result": "failure"}}])
    assert t.done and t.result().exit_code == 1 and t.result().result == "failure"
    feed(t, [{"type": "request.submitted", "data": {**req, "buildrequestid": 2}}])
    assert not t.done and [p.label() for p in t.pending] == ["a (request 2)"]
    feed(t, [{"type": "build.started", "data": {**req, "buildid": 2, "number": 2, "buildrequestid": 2, "started_at": 9}},
             {"type": "build.finished", "data": {**req, "buildid": 2, "number": 2, "buildrequestid": 2,
                                                 "started_at": 9, "result": "success"}},
             {"type": "request.submitted", "data": {"builder": "b", "revision": "r", "buildrequestid": 3}},
             {"type": "request.cancelled", "data": {"builder": "b", "revision": "r", "buildrequestid": 3}}])
    result = t.result()
    assert (result.state, result.result, result.exit_code) == ("done", "success", 0)
    assert "all 1 succeeded" in result.summary() and "a #1" in result.summary()
    assert "failure (superseded)" in result.summary()
    alone = RevisionTracker("q")
    feed(alone, [{"type": "request.submitted", "data": {"builder": "b", "revision": "q", "buildrequestid": 3}},
                 {"type": "request.cancelled", "data": {"builder": "b", "revision": "q", "buildrequestid": 3}}])
    assert alone.result().exit_code == 1 and "nothing was built" in alone.result().summary()


def test_fake_firehose_stream_client_and_gap():
    """FakeFirehose filters like the server, resumes from a cursor, delivers to fake clients as
    events are emitted and surfaces injected gaps."""
    fake = FakeFirehose()
    got: list[dict[str, Any]] = []
    gaps: list[Gap] = []
    client = fake.client(builder="linux", on_event=got.append, on_gap=gaps.append).start()
    first = fake.emit("build.started", builder="linux", buildid=1, number=1)
    fake.emit("build.started", builder="mac", buildid=2, number=1)
    fake.gap()
    last = fake.emit("build.finished", builder="linux", buildid=1, number=1, result="success")
    assert [e["id"] for e in got] == [first["id"], last["id"]] and client.cursor == last["id"]
    assert [g.reason for g in gaps] == ["expired"]
    items = list(fake.stream(since=first["id"], builder="linux"))
    assert isinstance(items[0], Gap) and items[1]["id"] == last["id"]
    with pytest.raises(RequestError):
        list(fake.stream(since="other:1"))
    client.stop()
    assert client.done.called


def test_fake_client_async_iteration():
    """The fake client supports ``async for`` like FirehoseClient."""
    from twisted.internet import defer

    fake = FakeFirehose()
    client = fake.client(since="earliest")
    fake.emit("build.started", builder="a", buildid=1, number=1)

    async def two() -> list[str]:
        out = []
        async for e in client:
            out.append(e["data"]["builder"])
            if len(out) == 2:
                break
        return out

    d = defer.Deferred.fromCoroutine(two())
    fake.emit("build.started", builder="b", buildid=2, number=1)
    assert d.result == ["a", "b"]


def test_webhook_request_is_verifiable():
    """firehose.testing.webhook_request signs exactly like the server."""
    body, headers = webhook_request([{"id": "e:1"}], "secret-secret-12", now=1000)
    assert verify("secret-secret-12", body, headers["X-Firehose-Signature"], headers["X-Firehose-Timestamp"],
                  now=1010)
    assert not verify("secret-secret-12", body, headers["X-Firehose-Signature"], "1000", now=5000)
    assert not verify("other", body, headers["X-Firehose-Signature"])


# ------------------------------------------------------------------------------------------
# The Twisted client, over iosim against the real WebSocket transport and hub
# ------------------------------------------------------------------------------------------


class Harness:
    def __init__(self, **kw: Any) -> None:
        self.clock = Clock()
        self.journal = MemoryJournal(epoch="e1")
        self.hub = Hub(self.journal, page_size=10, max_pending=20)
        self.server_factory = FirehoseWebSocketFactory(self.hub, ping_interval=0)
        self.server_factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        self.pumps: list[Any] = []
        self.refuse = False
        self.got: list[dict[str, Any]] = []
        kw.setdefault("on_event", self.got.append)
        self.client = FirehoseClient("http://127.0.0.1:1", reactor=self.clock, connect=self.connect,
                                     backoff=Backoff(1, 4, rand=random.Random(0).random), ping_interval=0, **kw)

    def connect(self, factory: Any) -> Any:
        from twisted.internet import defer

        if self.refuse:
            return defer.fail(ConnectionRefusedError())
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        addr = IPv4Address("TCP", "127.0.0.1", 80)
        server = self.server_factory.buildProtocol(addr)
        client = factory.buildProtocol(addr)
        self.server_transport = iosim.FakeTransport(server, isServer=True)
        self.client_transport = iosim.FakeTransport(client, isServer=False)
        pump = iosim.connect(server, self.server_transport, client, self.client_transport)
        self.pumps.append(pump)
        return defer.succeed(client)

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()

    def append(self, first: int, last: int, **kw: Any) -> None:
        self.journal.append(batch(first, last, **kw))
        self.flush()

    def drop(self) -> None:
        self.client_transport.loseConnection()
        self.server_transport.loseConnection()
        self.flush()


def test_twisted_client_resumes_after_drop_without_loss_or_double():
    """Events 1..10 arrive; the connection drops; 11..15 are published meanwhile; after the
    backoff the client reconnects with since=<last id> and gets exactly 11..20."""
    h = Harness(since="earliest")
    h.client.start()
    h.flush()
    h.append(1, 10)
    h.drop()
    h.append(11, 15)
    assert len(h.got) == 10
    h.refuse = True
    h.clock.advance(1)  # first retry: refused
    h.refuse = False
    h.clock.advance(2)  # second retry connects
    h.flush()
    h.append(16, 20)
    assert [e["seq"] for e in h.got] == list(range(1, 21))
    assert h.client.cursor == "e1:20" and h.client.connections == 2
    h.client.stop()
    h.flush()
    assert h.clock.getDelayedCalls() == []


def test_twisted_client_live_start_and_slow_gap_resubscribes():
    """Started live, the client resumes from the head it was given; a slow gap makes it
    resubscribe from the gap's cursor and catch up from the journal."""
    h = Harness()
    h.client.start()
    h.flush()
    h.append(1, 2)
    h.server_transport.producer.pauseProducing()  # the socket stops draining
    h.append(3, 40)  # more than max_pending: the server ends the subscription as slow
    h.server_transport.producer.resumeProducing()
    h.flush()
    assert [e["seq"] for e in h.got] == list(range(1, 41))
    h.client.stop()
    assert h.clock.getDelayedCalls() == []


def test_twisted_client_bad_filter_and_refused_cursor():
    """A bad filter is refused before connecting; a cursor the server refuses ends the client
    (done fails with RequestError) without reconnecting."""
    with pytest.raises(RequestError):
        FirehoseClient("http://h:1", colour="red")
    h = Harness(since="e1:99")
    h.client.start()
    h.flush()
    failure = h.client.done.result
    h.client.done.addErrback(lambda f: None)
    assert failure.check(RequestError) and failure.value.code == "bad_cursor"
    assert h.clock.getDelayedCalls() == []


def test_twisted_client_async_iteration_and_gap():
    """``async for`` yields events in order and an epoch gap as a Gap; stop ends it."""
    from twisted.internet import defer

    h = Harness(since="other:3", on_event=None)
    h.append(1, 3)
    out: list[Any] = []

    async def consume() -> None:
        async for item in h.client:
            out.append(item)

    d = defer.Deferred.fromCoroutine(consume())
    h.flush()
    h.append(4, 4)
    assert isinstance(out[0], Gap) and out[0].reason == "epoch"
    assert [e["seq"] for e in out[1:]] == [1, 2, 3, 4]
    h.client.stop()
    h.flush()
    assert d.called and h.clock.getDelayedCalls() == []
