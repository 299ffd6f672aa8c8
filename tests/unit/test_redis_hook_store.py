"""RedisHookStore against a real redis-server (loopback, own port and directory): records
round-trip, nodes see each other's writes, fields merge, and delivery state is fenced."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from firehose.webhooks.hooks import Hook
from firehose.webhooks.lease import LeaseManager
from firehose.webhooks.redis_io import InlineRunner, connect
from firehose.webhooks.redis_store import MOVED, STALE, RedisHookStore
from tests.redis_server import RedisServer, redis_server  # noqa: F401


def record(hid: str = "h1", **kw: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"secret": "s" * 16, "cursor": "e1:0", "created": 1.0, **kw}
    return asdict(Hook(hid, "http://127.0.0.1/hook", {}, **fields))


def result(d: defer.Deferred[Any]) -> Any:
    """The result of an already-fired Deferred (the inline runner calls at once)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


@pytest.fixture
def client(redis_server: RedisServer) -> Any:  # noqa: F811
    c = connect(redis_server.url, timeout=5.0)
    yield c
    c.close()


def store(client: Any, token: Any = None) -> RedisHookStore:
    s = RedisHookStore(client, InlineRunner(), token=token)
    s.load()
    return s


def test_round_trip_and_removal_seen_by_a_new_instance(client: Any) -> None:
    """What one store saves, another instance loads unchanged (every Hook field, JSON typed);
    a hook left out of a later save is deleted for everyone."""
    a = store(client)
    r1, r2 = record("h1", previous_secrets=["p" * 16], format="cloudevents"), record("h2", active=False)
    result(a.save({"h1": r1, "h2": r2}))
    assert RedisHookStore(client, InlineRunner()).load() == {"h1": r1, "h2": r2}
    result(a.save({"h1": r1}))
    assert RedisHookStore(client, InlineRunner()).load() == {"h1": r1}
    assert client.exists("firehose:webhooks:hook:h2") == 0


def test_refresh_sees_another_nodes_writes_and_fields_merge(client: Any) -> None:
    """A hook added through node A is in node B's next refresh; A changing the secret and B
    the format of one hook keep both changes (only changed fields are written)."""
    a, b = store(client), store(client)
    result(a.save({"h1": record()}))
    seen = result(b.refresh())
    assert seen == {"h1": record()}
    result(a.save({"h1": record(secret="t" * 16)}))
    result(b.save({"h1": record(format="cloudevents")}))
    assert RedisHookStore(client, InlineRunner()).load()["h1"] == record(secret="t" * 16, format="cloudevents")


def test_delivery_state_is_written_only_with_the_lease(client: Any) -> None:
    """A node that does not hold a hook's lease never writes its cursor (its copy may be old),
    even when it differs; the holder's write goes through, with its lease token recorded."""
    clock = Clock()
    leases = LeaseManager(client, clock, InlineRunner(), node="n1", ttl=30.0)
    leases.start(lambda: ["h1"], lambda hid, token: None, lambda hid: None)
    holder, other = store(client, leases.token), store(client)
    result(holder.save({"h1": record()}))
    result(other.refresh())
    result(other.save({"h1": record(cursor="e1:99")}))
    assert RedisHookStore(client, InlineRunner()).load()["h1"]["cursor"] == "e1:0"
    leases.tick()
    result(holder.save({"h1": record(cursor="e1:5")}))
    assert RedisHookStore(client, InlineRunner()).load()["h1"]["cursor"] == "e1:5"
    assert client.hget("firehose:webhooks:hook:h1", "lease") == leases.token("h1").encode()
    result(leases.stop())


def test_fenced_write_refuses_a_stale_holder_and_a_moved_cursor(client: Any) -> None:
    """A holder whose lease expired and passed to another node cannot move the cursor (its
    write is refused as stale, the new holder's goes through); a redelivery written by another
    node (redeliveries grew) refuses the holder's next write as moved."""
    clock = Clock()
    l1 = LeaseManager(client, clock, InlineRunner(), node="n1", ttl=30.0)
    l2 = LeaseManager(client, clock, InlineRunner(), node="n2", ttl=30.0)
    refusals: list[tuple[str, str]] = []
    s1, s2 = store(client, l1.token), store(client, l2.token)
    s1.refused = lambda hid, why: refusals.append((hid, why))
    result(s1.save({"h1": record()}))
    result(s2.refresh())
    l1.start(lambda: ["h1"], lambda h, t: None, lambda h: None)
    client.delete("firehose:webhooks:lease:h1")  # n1's lease expired (it was paused)
    l2.start(lambda: ["h1"], lambda h, t: None, lambda h: None)
    assert l2.holds("h1") and l1.holds("h1")  # n1 does not know yet: the case fencing is for
    result(s2.save({"h1": record(cursor="e1:7")}))
    result(s1.save({"h1": record(cursor="e1:3")}))
    assert refusals == [("h1", STALE)]
    assert RedisHookStore(client, InlineRunner()).load()["h1"]["cursor"] == "e1:7"

    mover = store(client)
    mover.move("h1", {"cursor": "e1:1", "redeliveries": 1})
    result(mover.save({"h1": record(cursor="e1:7")}))
    s2.refused = lambda hid, why: refusals.append((hid, why))
    result(s2.save({"h1": record(cursor="e1:9")}))
    assert refusals[-1] == ("h1", MOVED)
    assert RedisHookStore(client, InlineRunner()).load()["h1"]["cursor"] == "e1:1"
    result(l1.stop(release=False))
    result(l2.stop())


class ManualRunner:
    """Runs a call only when the test says so, to see what the store queues meanwhile."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

    def run(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.calls.append((f, args, d))
        return d

    def step(self) -> None:
        f, args, d = self.calls.pop(0)
        d.callback(f(*args))

    def stop(self) -> None:
        """Nothing to release."""


def test_saves_are_coalesced_while_one_is_written(client: Any) -> None:
    """Saves asked while a write runs replace each other: one more write, of the newest state,
    and every caller's Deferred fires once that is stored.  A refresh waits for the pending
    writes (it reads what they stored); one whose read could predate a save asked while it
    ran answers None rather than an old state."""
    runner = ManualRunner()
    s = RedisHookStore(client, runner)
    s.load()
    fired: list[int] = []
    for n in range(3):
        s.save({"h1": record(created=float(n))}).addCallback(lambda _, n=n: fired.append(n))
    after = s.refresh()
    assert len(runner.calls) == 1
    runner.step()
    assert len(runner.calls) == 1  # the two later saves, as one write
    runner.step()
    assert fired == [0, 1, 2]
    runner.step()  # the refresh's read, after the writes
    assert result(after)["h1"]["created"] == 2.0

    stale = s.refresh()
    s.save({"h1": record(created=3.0)})
    runner.step()  # the refresh's read, which may predate the save
    assert result(stale) is None
    while runner.calls:
        runner.step()
    assert RedisHookStore(client, InlineRunner()).load()["h1"]["created"] == 3.0
