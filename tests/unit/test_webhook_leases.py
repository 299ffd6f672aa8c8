"""Webhook leases on a real redis-server (loopback, own port and directory), and two
dispatchers ("nodes") sharing one Redis: one deliverer per hook, takeover from the persisted
cursor when the holder dies, changes made through one node seen by the other."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from firehose.hub import Hub
from firehose.journal import MemoryJournal
from firehose.webhooks import WebhookConfig, WebhookDispatcher
from firehose.webhooks.lease import DRIFT, LeaseManager
from firehose.webhooks.redis_io import InlineRunner, connect
from firehose.webhooks.redis_store import RedisHookStore
from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.unit.helpers import batch

KEY = "firehose:webhooks:lease:h1"


@pytest.fixture
def client(redis_server: RedisServer) -> Any:  # noqa: F811
    c = connect(redis_server.url, timeout=2.0)
    yield c
    c.close()


class Events:
    """What a lease manager reported."""

    def __init__(self) -> None:
        self.acquired: list[tuple[str, str]] = []
        self.lost: list[str] = []


def manager(client: Any, clock: Clock, node: str, ttl: float = 30.0, wanted: tuple[str, ...] = ("h1",)
            ) -> tuple[LeaseManager, Events]:
    m = LeaseManager(client, clock, InlineRunner(), node=node, ttl=ttl)
    ev = Events()
    m.start(lambda: wanted, lambda hid, token: ev.acquired.append((hid, token)), ev.lost.append)
    return m, ev


def test_one_holder_and_a_token_per_tenure(client: Any) -> None:
    """Of two managers wanting one hook, the first to tick holds it (token node/generation);
    the other does not, however often it ticks, while the lease is renewed."""
    clock = Clock()
    m1, e1 = manager(client, clock, "n1")
    m2, e2 = manager(client, clock, "n2")
    assert e1.acquired == [("h1", "n1/1")] and e2.acquired == []
    for _ in range(5):
        clock.advance(10)
    assert m1.holds("h1") and not m2.holds("h1") and e2.acquired == [] and e1.lost == []
    assert client.get(KEY) == b"n1/1"
    m1.stop()
    m2.stop()
    assert clock.getDelayedCalls() == []


def test_renewal_extends_only_our_own_key(client: Any) -> None:
    """A tick renews the key's time to live back to the ttl; a key that holds another token
    is not renewed and the manager reports the hook lost at once."""
    clock = Clock()
    m1, e1 = manager(client, clock, "n1")
    client.pexpire(KEY, 1000)
    clock.advance(10)
    assert client.pttl(KEY) > 1000
    client.set(KEY, "n9/7")
    clock.advance(10)
    assert e1.lost == ["h1"] and not m1.holds("h1")
    assert client.get(KEY) == b"n9/7" and client.pttl(KEY) == -1  # untouched
    m1.stop()


def test_expiry_then_takeover_with_a_new_generation(client: Any) -> None:
    """A holder that dies (stops renewing, releases nothing) loses its key after the ttl
    (real Redis expiry, waited for by polling, bounded); the other node's next tick takes
    the lease with the next generation."""
    clock = Clock()
    m1, _ = manager(client, clock, "n1", ttl=0.3)
    m2, e2 = manager(client, clock, "n2", ttl=0.3)
    m1.stop(release=False)
    deadline = time.monotonic() + 10.0
    while client.exists(KEY) and time.monotonic() < deadline:
        time.sleep(0.02)  # waiting for Redis to expire the key, bounded
    assert not client.exists(KEY)
    m2.tick()
    assert e2.acquired == [("h1", "n2/2")] and m2.holds("h1")
    m2.stop()


def test_release_deletes_only_our_key(client: Any) -> None:
    """Release is compare-and-delete: ours goes, so another node may take it at once; a key
    another node holds survives a release by a node that believed it held it."""
    clock = Clock()
    m1, _ = manager(client, clock, "n1")
    released: list[bool] = []
    m1.release("h1").addCallback(released.append)
    assert released == [True] and not client.exists(KEY)
    m1.stop()
    m2, _ = manager(client, clock, "n2")
    m3, _ = manager(client, clock, "n3")
    client.set(KEY, "n3/9")  # n2's lease passed to n3
    m2.release("h1").addCallback(released.append)
    assert released == [True, False] and client.get(KEY) == b"n3/9"
    m2.stop()
    m3.stop()


def test_no_renewal_in_time_means_not_holding(client: Any) -> None:
    """A node counts itself the holder only until ttl*(1-DRIFT) after its last successful
    renewal was sent: past that (renewals not run: a stalled loop, a hung Redis), holds()
    says no and reports the loss, whatever Redis says."""
    clock = Clock()
    m1, e1 = manager(client, clock, "n1", ttl=30.0)
    assert m1._loop is not None
    m1._loop.stop()  # the renewals stall
    clock.advance(30.0 * (1 - DRIFT) - 0.5)
    assert m1.holds("h1") and e1.lost == []
    clock.advance(1.0)
    assert not m1.holds("h1") and e1.lost == ["h1"]
    assert client.get(KEY) == b"n1/1"  # Redis still has it: the node stops first
    m1.stop()
    assert clock.getDelayedCalls() == []


def test_unreachable_redis_stops_the_lease_at_once(redis_server: RedisServer, client: Any) -> None:  # noqa: F811
    """When a renewal fails (Redis killed), the hook is reported lost at the next tick: the
    node stops delivering rather than wait for the key to expire."""
    clock = Clock()
    m1, e1 = manager(client, clock, "n1")
    redis_server.kill()
    clock.advance(10)
    assert e1.lost == ["h1"] and not m1.holds("h1")
    m1.stop()


class Receiver(Resource):
    """One receiver for both nodes: dedups by event id, counts doubles, remembers which node
    sent each POST; ``hold`` leaves the POST with that first seq unanswered (a batch in flight)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []
        self.doubles: list[int] = []
        self.senders: list[tuple[str, list[int]]] = []
        self.hold: int | None = None
        self.held: list[Any] = []

    def for_node(self, node: str) -> Resource:
        receiver = self

        class Tagged(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> Any:
                return receiver.receive(node, request)

        return Tagged()

    def receive(self, node: str, request: Any) -> Any:
        seqs = [e["seq"] for e in json.loads(request.content.read())["events"]]
        self.senders.append((node, seqs))
        for seq in seqs:
            (self.doubles if seq in self.seen else self.seen).append(seq)
        if seqs and seqs[0] == self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return b""


class Node:
    """A dispatcher with its own hub and journal (same events, same cursors) on the shared Redis."""

    def __init__(self, name: str, url: str, clock: Clock, receiver: Receiver) -> None:
        self.name = name
        self.client = connect(url, timeout=2.0)
        self.journal = MemoryJournal(epoch="e1")
        self.hub = Hub(self.journal, page_size=10, max_pending=15)
        self.leases = LeaseManager(self.client, clock, InlineRunner(), node=name, ttl=30.0)
        cfg = WebhookConfig(retry_initial=1, retry_max=4, batch_size=5, allow_networks=["127.0.0.0/8"])
        self.dispatcher = WebhookDispatcher(
            self.hub, cfg, RedisHookStore(self.client, InlineRunner()), clock,
            agent=RequestTraversalAgent(receiver.for_node(name)), rand=random.Random(0).random,
            leases=self.leases, poll_interval=2.0)
        self.dispatcher.start()


@pytest.fixture
def two_nodes(redis_server: RedisServer) -> Any:  # noqa: F811
    clock = Clock()
    receiver = Receiver()
    a = Node("a", redis_server.url, clock, receiver)
    b = Node("b", redis_server.url, clock, receiver)
    yield clock, receiver, a, b
    for node in (a, b):
        node.dispatcher.stop()
        node.client.close()
    assert clock.getDelayedCalls() == []


def append(nodes: tuple[Node, ...], first: int, last: int) -> None:
    for node in nodes:
        node.journal.append(batch(first, last))


def test_one_node_delivers_and_the_other_takes_over_from_the_persisted_cursor(two_nodes: Any) -> None:
    """A hook registered through node a is delivered by a alone (b holds no lease, sends
    nothing); a dies with a batch in flight (no save, no release); once its lease expires
    (the key deleted, as expiry would) b takes over, reads the cursor a persisted after its
    last 2xx and delivers every later event in order: the only doubles are the batch that was
    in flight."""
    clock, receiver, a, b = two_nodes
    a.dispatcher.add("http://127.0.0.1/hook", since="earliest", hook_id="h1")
    clock.advance(2.0)  # b's poll sees the hook
    assert "h1" in b.dispatcher.hooks
    receiver.hold = 11
    append((a, b), 1, 13)
    clock.advance(10.0)
    assert a.leases.holds("h1") and not b.leases.holds("h1")
    assert {n for n, _ in receiver.senders} == {"a"}
    assert receiver.seen == list(range(1, 14))
    assert [s for _, s in receiver.senders] == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13]]

    a.dispatcher.halt()
    a.client.delete(KEY)  # a's lease expires
    receiver.hold = None
    append((b,), 14, 16)
    clock.advance(10.0)  # b's next lease round
    assert b.leases.holds("h1")
    assert {n for n, _ in receiver.senders[3:]} == {"b"}
    assert receiver.seen == list(range(1, 17)), receiver.senders
    assert receiver.doubles == [11, 12, 13]  # the batch a had in flight, sent again by b
    assert b.dispatcher.hooks["h1"].cursor == b.hub.head_cursor


def test_changes_through_one_node_reach_the_holder(two_nodes: Any) -> None:
    """A hook registered through b is taken by a lease round on one node only; a redelivery
    asked through the node that does not hold it moves the holder's cursor back (the holder
    sends the events again, in order); a removal through either node stops the delivery."""
    clock, receiver, a, b = two_nodes
    append((a, b), 1, 4)
    b.dispatcher.add("http://127.0.0.1/hook", since="earliest", hook_id="h1")
    clock.advance(2.0)
    holders = [n for n in (a, b) if n.leases.holds("h1")]
    assert len(holders) == 1
    holder, other = holders[0], (b if holders[0] is a else a)
    assert receiver.seen == [1, 2, 3, 4] and receiver.doubles == []
    other.dispatcher.redeliver("h1", "earliest")
    clock.advance(2.0)  # the write, then the holder's poll sees redeliveries grow
    clock.advance(2.0)
    assert receiver.doubles == [1, 2, 3, 4]
    assert {n for n, _ in receiver.senders} == {holder.name}
    other.dispatcher.remove("h1")
    clock.advance(2.0)
    assert "h1" not in holder.dispatcher.hooks and not holder.leases.holds("h1")
    append((a, b), 5, 6)
    clock.advance(10.0)
    assert receiver.seen == [1, 2, 3, 4]
