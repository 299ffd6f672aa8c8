"""The consumer core (callbacks, queue, waiters, cursor) is one: the same scenario through the
real ``FirehoseClient`` (over the real WebSocket transport, in memory) and through
``firehose.testing.FakeClient`` gives the same cursors, callbacks and queued items."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test import iosim

from firehose.backoff import Backoff
from firehose.client import FirehoseClient, Gap, RequestError
from firehose.client.consumer import Consumer
from firehose.testing import FakeFirehose
from firehose.transports.websocket import FirehoseWebSocketFactory


class World:
    """One FakeFirehose (journal ``e1``) read by either kind of client.

    ``real``: a FirehoseClient whose socket is an in-memory pump to the real WebSocket
    transport over the fake's hub; ``fake``: ``fake.client(...)``.  :meth:`emit` publishes one
    event and lets it reach the client.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.fake = FakeFirehose(epoch="e1")
        self.clock = Clock()
        self.pumps: list[iosim.IOPump] = []
        self.server_factory = FirehoseWebSocketFactory(self.fake.hub, ping_interval=0)
        self.server_factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)

    def client(self, **kw: Any) -> Any:
        if self.kind == "fake":
            return self.fake.client(**kw)
        return FirehoseClient("http://127.0.0.1:1", reactor=self.clock, connect=self._connect,
                              backoff=Backoff(1, 4, rand=lambda: 0.5), ping_interval=0, **kw)

    def _connect(self, factory: Any) -> defer.Deferred[Any]:
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        addr = IPv4Address("TCP", "127.0.0.1", 80)
        server = self.server_factory.buildProtocol(addr)
        client = factory.buildProtocol(addr)
        pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                             client, iosim.FakeTransport(client, isServer=False))
        self.pumps.append(pump)
        return defer.succeed(client)

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()

    def emit(self, builder: str = "linux") -> str:
        event = self.fake.emit("build.started", builder=builder, buildid=1, number=1)
        self.flush()
        return str(event["id"])

    def stop(self, client: Any) -> None:
        client.stop()
        self.flush()
        assert self.clock.getDelayedCalls() == []


def both(scenario: Callable[[World], Any]) -> Any:
    """Run ``scenario`` against each kind of client; assert they observed the same; return it."""
    real, fake = scenario(World("real")), scenario(World("fake"))
    assert real == fake
    return real


def test_callbacks_without_on_gap_move_past_a_lost_gap() -> None:
    """With ``on_event`` and no ``on_gap``, a gap that lost events (a cursor of another epoch)
    moves the cursor to the gap's cursor at once (the fake used to stay on the stale cursor),
    then each event moves it on; only events reach the callback."""

    def scenario(world: World) -> Any:
        got: list[str] = []
        client = world.client(since="other:3", on_event=lambda e: got.append(e["id"])).start()
        world.flush()
        after_gap = client.cursor
        ids = [world.emit(), world.emit("mac"), world.emit()]
        seen = (after_gap, list(got), client.cursor, ids)
        world.stop(client)
        return seen

    assert both(scenario) == ("e1:0", ["e1:1", "e1:2", "e1:3"], "e1:3", ["e1:1", "e1:2", "e1:3"])


def test_on_gap_sees_the_cursor_before_the_gap_then_it_moves() -> None:
    """``on_gap`` is called with the Gap while :attr:`cursor` still names where the client
    was, and the cursor moves to the gap's cursor once it returns (the fake used to move first)."""

    def scenario(world: World) -> Any:
        world.emit()
        calls: list[tuple[str, str | None, str | None]] = []

        def on_gap(gap: Gap) -> None:
            calls.append((gap.reason, gap.cursor, client.cursor))

        client = world.client(since="other:3", on_event=lambda e: None, on_gap=on_gap)
        client.start()
        world.flush()
        seen = (calls, client.cursor)
        world.stop(client)
        return seen

    assert both(scenario) == ([("epoch", "e1:0", "other:3")], "e1:1")


def test_iteration_queues_gap_and_events_and_advances_on_next() -> None:
    """Without callbacks, the gap and the events wait in order; each ``next()`` hands over one
    and moves the cursor to it; a waiting ``next()`` fires on the next event; after ``stop``,
    ``next()`` fails with StopAsyncIteration."""

    def scenario(world: World) -> Any:
        world.emit()
        client = world.client(since="other:3", builder="linux").start()
        world.flush()
        world.emit("mac")
        world.emit()
        steps: list[Any] = []
        for _ in range(3):
            item = client.next().result
            steps.append((isinstance(item, Gap), item.get("id") or item.get("cursor"), client.cursor))
        waiting = client.next()
        assert not waiting.called
        world.emit()
        steps.append((waiting.result["id"], client.cursor))
        world.stop(client)
        ended = client.next()
        failure = ended.result
        ended.addErrback(lambda f: None)
        steps.append(failure.type.__name__)
        return steps

    assert both(scenario) == [(True, "e1:0", "e1:0"), (False, "e1:1", "e1:1"), (False, "e1:3", "e1:3"),
                              ("e1:4", "e1:4"), "StopAsyncIteration"]


def test_a_cursor_ahead_of_the_stream_fails_done() -> None:
    """A cursor ahead of the stream ends the client: ``done`` fails with RequestError
    ``bad_cursor`` (the fake used to raise CursorError from ``start``)."""

    def scenario(world: World) -> Any:
        client = world.client(since="e1:99", on_event=lambda e: None).start()
        world.flush()
        failure = client.done.result
        client.done.addErrback(lambda f: None)
        assert failure.check(RequestError)
        world.stop(client)
        return failure.value.code

    assert both(scenario) == "bad_cursor"


def test_a_malformed_cursor_is_refused_before_starting() -> None:
    """Both clients check ``since`` as the server reads it and refuse garbage at once."""
    for world in (World("real"), World("fake")):
        with pytest.raises(RequestError, match="bad_cursor"):
            world.client(since="not a cursor")


def test_stop_means_stop_even_mid_replay() -> None:
    """``on_event`` that calls ``stop()`` on the first event of a replay is not called again,
    although the rest of the replay page was already read (the real client used to deliver it:
    7 more calls); the cursor names the one event handed over, so resuming loses nothing."""

    def scenario(world: World) -> Any:
        ids = [world.emit() for _ in range(8)]
        got: list[str] = []

        def on_event(event: dict[str, Any]) -> None:
            got.append(event["id"])
            client.stop()

        client = world.client(since="earliest", on_event=on_event)
        client.start()
        world.flush()
        world.emit()
        world.flush()
        seen = (got, client.cursor, client.done.called, ids[0])
        world.stop(client)
        return seen

    assert both(scenario) == (["e1:1"], "e1:1", True, "e1:1")


def test_after_stop_next_hands_over_nothing_queued() -> None:
    """Events queued for ``next()`` but not taken when ``stop()`` is called are not handed over
    afterwards (``next()`` fails with StopAsyncIteration) and the cursor stays on the last
    event taken."""

    def scenario(world: World) -> Any:
        for _ in range(3):
            world.emit()
        client = world.client(since="earliest").start()
        world.flush()
        first = client.next().result["id"]
        world.stop(client)
        ended = client.next()
        failure = ended.result
        ended.addErrback(lambda f: None)
        return (first, client.cursor, failure.type.__name__)

    assert both(scenario) == ("e1:1", "e1:1", "StopAsyncIteration")


class ListConsumer(Consumer):
    """A Consumer fed by hand, with its pause and resume calls recorded."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(None, kw.pop("on_event", None), kw.pop("on_gap", None), **kw)
        self.calls: list[str] = []

    def start(self) -> ListConsumer:
        return self

    def _pause_reading(self) -> None:
        self.calls.append("pause")

    def _resume_reading(self) -> None:
        self.calls.append("resume")


def test_a_full_queue_pauses_reading_until_half_drained() -> None:
    """At ``max_queued`` queued items reading pauses once; it resumes when ``next()`` has
    drained the queue to half of that."""
    c = ListConsumer(max_queued=4)
    for n in range(1, 6):
        c._deliver({"id": f"e:{n}", "type": "build.started"})
    assert c.calls == ["pause"]
    c.next()
    c.next()
    assert c.calls == ["pause"]
    c.next()
    assert c.calls == ["pause", "resume"] and c.cursor == "e:3"


def test_a_gap_without_cursor_leaves_the_cursor() -> None:
    """A lost gap that names no cursor cannot move the cursor (it stays on the last event)."""
    c = ListConsumer(on_event=lambda e: None)
    c._deliver({"id": "e:1", "type": "build.started"})
    c._deliver(Gap(type="gap", reason="expired"))
    assert c.cursor == "e:1"
