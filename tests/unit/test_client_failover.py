"""Unit tests of the clients' failover between several URLs: no sockets, no global reactor.

The blocking client talks to a scripted opener that knows which URL each request went to; the
Twisted client talks over memory transports to a real hub per node.  Nodes "on one Redis" are
modelled as hubs over the same journal (one cursor space); a node with a journal of its own has
another epoch.
"""

from __future__ import annotations

import io
import json
import random
import urllib.error
import urllib.parse
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test import iosim

from firehose.client import Backoff, FirehoseClient, Gap, RequestError, Stream, Unavailable, query
from firehose.client.common import base_urls
from firehose.hub import Hub
from firehose.journal import MemoryJournal
from firehose.transports.websocket import FirehoseWebSocketFactory
from tests.unit.helpers import batch

A, B, C = "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"


class Nodes:
    """A scripted opener for several URLs: ``script[base]`` is that node's list of answers
    (dicts are JSON answers, exceptions are raised; an ``int`` is an HTTP error status)."""

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.requests: list[tuple[str, dict[str, str]]] = []

    def open(self, url: str, timeout: float) -> Any:
        base, _, rest = url.partition("/poll?") if "/poll?" in url else url.partition("/api/")
        params = dict(urllib.parse.parse_qsl(rest.partition("?")[2] if "/api/" in url else rest))
        self.requests.append((base, params))
        item = self.script[base].pop(0)
        if isinstance(item, int):
            raise urllib.error.HTTPError(url, item, "error", {}, io.BytesIO(b'{"error": "e", "message": "m"}'))
        if isinstance(item, BaseException):
            raise item
        return io.BytesIO(json.dumps(item).encode())

    @property
    def bases(self) -> list[str]:
        return [b for b, _ in self.requests]


def ev(n: int, epoch: str = "e") -> dict[str, Any]:
    return {"id": f"{epoch}:{n}", "type": "build.finished", "seq": n, "data": {}}


def make_stream(nodes: Nodes, urls: Any, since: str | None = "earliest", **kw: Any) -> tuple[Stream, list[float]]:
    sleeps: list[float] = []
    s = Stream(urls, {}, since, opener=nodes, sleep=sleeps.append,  # type: ignore[arg-type]
               backoff=Backoff(rand=lambda: 1.0), **kw)
    return s, sleeps


def take(s: Stream, n: int) -> list[Any]:
    return [next(s) for _ in range(n)]


def test_base_urls_accepts_lists_and_commas() -> None:
    """One URL, a comma- or space-separated string and a list all give base URLs in the order
    written; an empty list or a bad URL is ``bad_url``."""
    assert base_urls(A) == [A]
    assert base_urls(f"{A},{B}/ , {C}") == [A, B, C]
    assert base_urls([A, f"{B},{C}"]) == [A, B, C]
    for bad in ([], " , ", [A, "ftp://x"]):
        with pytest.raises(RequestError) as info:
            base_urls(bad)
        assert info.value.code == "bad_url"


@pytest.mark.parametrize("failure", [urllib.error.URLError("refused"), ConnectionResetError(), TimeoutError(),
                                     500, 502, 503])
def test_stream_moves_to_the_next_url_at_once_and_resumes_by_cursor(failure: Any) -> None:
    """A poll that fails on the first URL (unreachable, reset, timed out, 5xx) is made again
    on the second at once (no sleep) with the same ``since``; every event comes once, in order."""
    nodes = Nodes({A: [{"events": [ev(1), ev(2)], "cursor": "e:2"}, failure],
                   B: [{"events": [ev(3)], "cursor": "e:3"}]})
    s, sleeps = make_stream(nodes, [A, B])
    assert [e["seq"] for e in take(s, 3)] == [1, 2, 3]
    assert nodes.bases == [A, A, B]
    assert nodes.requests[1][1]["since"] == nodes.requests[2][1]["since"] == "e:2"
    assert sleeps == [] and s.url == B


def test_stream_a_4xx_is_not_failed_over() -> None:
    """A 400 would be the same on every node: it is raised at once, and the other URL is not
    asked."""
    nodes = Nodes({A: [400], B: []})
    s, _ = make_stream(nodes, f"{A},{B}")
    with pytest.raises(RequestError):
        next(s)
    assert nodes.bases == [A]


def test_stream_sticky_and_backoff_only_when_every_url_failed() -> None:
    """Every URL down: each is tried once in a row, then one backoff sleep per round (0.5, 1.0),
    the next round starting at the next URL; the first one back is used and kept afterwards."""
    down = urllib.error.URLError("refused")
    nodes = Nodes({A: [down, down, down, {"events": [ev(9)], "cursor": "e:9"}],
                   B: [down, down, {"events": [ev(1)], "cursor": "e:1"}, {"events": [ev(2)], "cursor": "e:2"}]})
    s, sleeps = make_stream(nodes, [A, B])
    assert next(s)["seq"] == 1
    assert nodes.bases == [A, B, A, B, A, B]
    assert sleeps == [0.5, 1.0]
    assert next(s)["seq"] == 2
    assert nodes.bases[-1] == B, "the working URL is kept"


def test_stream_fail_fast_tries_every_url_first() -> None:
    """With ``fail_fast`` (what ``firehose tail`` uses), the first request raises only after
    every URL has failed, naming them all; if one answers, the stream goes on."""
    down = urllib.error.URLError("refused")
    s, sleeps = make_stream(Nodes({A: [down], B: [down]}), [A, B], fail_fast=True)
    with pytest.raises(Unavailable, match=f"{A}, {B}"):
        next(s)
    nodes = Nodes({A: [down], B: [{"events": [ev(1)], "cursor": "e:1"}]})
    s, sleeps = make_stream(nodes, [A, B], fail_fast=True)
    assert next(s)["seq"] == 1 and sleeps == []


def test_stream_epoch_gap_from_another_journal_is_surfaced() -> None:
    """A node whose journal is not the one the cursor came from answers with an ``epoch`` gap:
    the stream yields it (a real loss is never hidden), then follows that node's events."""
    nodes = Nodes({A: [{"events": [ev(1)], "cursor": "e:1"}, ConnectionResetError()],
                   B: [{"events": [ev(1, "f")], "cursor": "f:1",
                        "gap": {"type": "gap", "reason": "epoch", "since": "e:1", "cursor": "f:0"}}]})
    s, _ = make_stream(nodes, [A, B])
    first, second, third = take(s, 3)
    assert first["id"] == "e:1"
    assert isinstance(third, Gap) and third.reason == "epoch" and third.lost
    assert second["id"] == "f:1"


def test_query_tries_each_url_until_one_answers() -> None:
    """``query`` moves on after a connection failure or a 5xx and returns the first answer; a
    4xx is the answer (raised, the next URL not asked); all down is ``Unavailable`` naming each."""
    nodes = Nodes({A: [urllib.error.URLError("refused"), 503, 404], B: [{"cursor": "e:1"}, {"cursor": "e:2"}], C: []})
    assert query([A, B, C], "running", _opener=nodes)["cursor"] == "e:1"  # type: ignore[arg-type]
    assert query(f"{A},{B}", "running", _opener=nodes)["cursor"] == "e:2"  # type: ignore[arg-type]
    with pytest.raises(RequestError):
        query([A, B], "nope", _opener=nodes)  # type: ignore[arg-type]
    assert nodes.bases == [A, B, A, B, A]
    down = Nodes({A: [urllib.error.URLError("refused")], B: [500]})
    with pytest.raises(Unavailable, match="127.0.0.1:1.*127.0.0.1:2"):
        query([A, B], _opener=down)  # type: ignore[arg-type]


class Cluster:
    """A Twisted client against several nodes over memory transports.  Each node is a hub with
    its own WebSocket factory; nodes built on one journal share its cursor space."""

    def __init__(self, journals: dict[str, MemoryJournal], **kw: Any) -> None:
        self.clock = Clock()
        self.journals = journals
        self.hubs = {base: Hub(j, page_size=10, max_pending=20) for base, j in journals.items()}
        self.factories = {}
        for base, hub in self.hubs.items():
            f = FirehoseWebSocketFactory(hub, ping_interval=0)
            f.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
            self.factories[base] = f
        self.down: set[str] = set()
        self.attempts: list[str] = []
        self.pumps: list[Any] = []
        self.links: dict[str, tuple[Any, Any]] = {}
        self.got: list[dict[str, Any]] = []
        kw.setdefault("on_event", self.got.append)
        self.client = FirehoseClient(list(journals), reactor=self.clock, connect=self.connect,
                                     backoff=Backoff(1, 4, rand=random.Random(0).random), ping_interval=0, **kw)

    def connect(self, factory: Any) -> Any:
        base = factory.url.replace("ws", "http", 1).removesuffix("/ws")
        self.attempts.append(base)
        if base in self.down:
            return defer.fail(ConnectionRefusedError())
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        addr = IPv4Address("TCP", "127.0.0.1", 80)
        server = self.factories[base].buildProtocol(addr)
        client = factory.buildProtocol(addr)
        st, ct = iosim.FakeTransport(server, isServer=True), iosim.FakeTransport(client, isServer=False)
        self.links[base] = (st, ct)
        self.pumps.append(iosim.connect(server, st, client, ct))
        return defer.succeed(client)

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()

    def append(self, base: str, first: int, last: int) -> None:
        """Store events in ``base``'s journal (every hub on that journal fans them out)."""
        self.journals[base].append(batch(first, last))
        self.flush()

    def kill(self, base: str) -> None:
        """The node dies: its connection drops and it refuses new ones."""
        self.down.add(base)
        st, ct = self.links[base]
        ct.loseConnection()
        st.loseConnection()
        self.flush()

    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.got]

    def stop(self) -> None:
        self.client.stop()
        self.flush()
        assert self.clock.getDelayedCalls() == []


def test_twisted_client_fails_over_by_cursor_on_a_shared_journal() -> None:
    """Two nodes on one journal: the client gets 1..5 from the first; it dies; 6..8 are stored
    meanwhile; the client reconnects to the second at once (no backoff) from its last event and
    gets 6..12 exactly once, in order."""
    shared = MemoryJournal(epoch="e1")
    c = Cluster({A: shared, B: shared}, since="earliest")
    c.client.start()
    c.flush()
    c.append(A, 1, 5)
    assert c.attempts == [A] and c.seqs() == [1, 2, 3, 4, 5]
    c.kill(A)
    c.append(A, 6, 8)
    assert [call.getTime() for call in c.clock.getDelayedCalls()] == [0]
    c.clock.advance(0)  # the next URL at once
    c.flush()
    c.append(B, 9, 12)
    assert c.attempts == [A, B]
    assert c.seqs() == list(range(1, 13))
    assert c.client.base == B and c.client.connections == 2
    c.stop()


def test_twisted_client_all_down_backs_off_then_sticks_to_the_first_back() -> None:
    """Both nodes down: the client tries each once in a row, then waits a backoff before the
    next round; the node that comes back first is used and kept after the other returns; the
    events stored meanwhile arrive once, in order."""
    shared = MemoryJournal(epoch="e1")
    c = Cluster({A: shared, B: shared}, since="earliest")
    c.down = {A, B}
    c.client.start()
    c.clock.advance(0)
    assert c.attempts == [A, B]
    (retry,) = c.clock.getDelayedCalls()
    assert retry.getTime() > 0, "every URL failed: back off"
    c.append(A, 1, 3)
    c.down = {A}
    c.clock.advance(retry.getTime())  # round two starts at A (still down), then B at once
    c.clock.advance(0)
    c.flush()
    assert c.attempts == [A, B, A, B] and c.seqs() == [1, 2, 3]
    c.down = set()
    c.append(B, 4, 6)
    assert c.attempts == [A, B, A, B] and c.seqs() == list(range(1, 7))
    assert c.client.base == B
    c.stop()


def test_twisted_client_one_url_backs_off_as_before() -> None:
    """With one URL every failure backs off (nothing is retried at once)."""
    c = Cluster({A: MemoryJournal(epoch="e1")}, since="earliest")
    c.down = {A}
    c.client.start()
    (retry,) = c.clock.getDelayedCalls()
    assert retry.getTime() > 0 and c.attempts == [A]
    c.down = set()
    c.clock.advance(retry.getTime())
    c.flush()
    c.append(A, 1, 2)
    assert c.seqs() == [1, 2]
    c.stop()


def test_twisted_client_epoch_gap_from_a_node_with_another_journal() -> None:
    """A node with a journal of its own (another epoch) answers the client's cursor with an
    ``epoch`` gap: it reaches ``on_gap``, as it does today with one URL, and the client goes on
    with that node's events."""
    gaps: list[Gap] = []
    c = Cluster({A: MemoryJournal(epoch="e1"), B: MemoryJournal(epoch="e2")}, since="earliest",
                on_gap=gaps.append)
    c.client.start()
    c.flush()
    c.append(A, 1, 2)
    c.kill(A)
    c.clock.advance(0)
    c.flush()
    c.append(B, 1, 1)
    assert [g.reason for g in gaps] == ["epoch"] and gaps[0].lost
    assert [e["id"] for e in c.got] == ["e1:1", "e1:2", "e2:1"]
    c.stop()
