"""Several ``firehose serve --redis`` nodes on one Redis stream, with real processes only.

A real ``redis-server`` (``tests.redis_server``: loopback, its own directory, AOF with
``appendfsync always``) and three nodes, each its own process and port, with the same master
tokens.  Publishers post like the plugin does (``tests.faults``' retrying publishers, here
failing over between nodes); subscribers are third-party clients (``websockets`` for ``/ws``,
the hand-written SSE reader of ``tests.e2e.conftest``, ``/poll``).  What every test checks in
the end is the stream itself, read back through ``/poll`` from each node.

Everything listens on and connects to 127.0.0.1.  Waits poll a condition with a deadline;
nothing sleeps to synchronise.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.trial import unittest as trial_unittest
from websockets.exceptions import ConnectionClosed

from firehose.testing import try_push
from tests.e2e.conftest import (
    DEADLINE,
    HOST,
    MAX_MESSAGES,
    Master,
    ServerProcess,
    SSEClient,
    WSClient,
    http_get,
    post_ingest,
    wait_for,
)
from tests.faults.conftest import (
    FAULT_DEADLINE,
    Publisher,
    count,
    post,
    read_journal,
    seed,
    tally,
)
from tests.plugin.plugin_testlib import TempDirMixin
from tests.plugin.plugin_testlib import wait_for as plugin_wait_for
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

#: Every node accepts these masters (the same tokens everywhere, as a deployment would have).
TOKENS = {"m1": "tok-m1", "m2": "tok-m2", "m3": "tok-m3", **{f"km{i}": f"tok-km{i}" for i in range(6)}}


# --------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------


class Node(ServerProcess):
    """One ``firehose serve --redis URL`` process: :class:`ServerProcess` (same port on every
    restart, ``/health`` readiness, kill/stop), with the shared journal instead of ``--db``."""

    def __init__(self, redis_url: str, log: Path, tokens: dict[str, str], extra: tuple[str, ...] = ()) -> None:
        super().__init__(log.with_suffix(".unused"), log, tokens, extra)
        self.redis_url = redis_url

    def _launch(self) -> None:
        import subprocess

        from tests.e2e.conftest import serve_command

        args = ["--listen", f"tcp:{self.port}:interface={HOST}", "--redis", self.redis_url]
        for name, token in self.tokens.items():
            args += ["--master-token", f"{name}={token}"]
        args += list(self.extra)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(serve_command(*args), stdout=log, stderr=log, stdin=subprocess.DEVNULL)


class Cluster:
    """A Redis and ``n`` nodes on it."""

    def __init__(self, tmp: Path, n: int = 3, extra: tuple[str, ...] = (), tokens: dict[str, str] | None = None) -> None:
        self.redis = RedisServer(tmp)
        self.nodes = [Node(self.redis.url, tmp / f"node{i}.log", dict(tokens or TOKENS), extra) for i in range(n)]

    def start(self) -> Cluster:
        self.redis.start()
        for node in self.nodes:
            node.start()
        return self

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        self.redis.stop()

    def logs(self) -> str:
        return "\n".join(f"--- node {i} ---\n{n.log()[-3000:]}" for i, n in enumerate(self.nodes))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Redis (AOF, ``appendfsync always``) and three started nodes; all killed afterwards."""
    c = Cluster(tmp_path)
    try:
        yield c.start()
    finally:
        c.close()


@pytest.fixture
def subscribers(clients: list[Any]) -> list[Any]:
    """WS/SSE clients to close at the end, whatever happened (conftest's ``clients``)."""
    return clients


def all_caught_up(nodes: list[Any]) -> None:
    """Wait until every node has delivered what any node has.  A batch is acknowledged by the
    node that stored it once *that* node's reader has delivered it; another node's reader may
    still be a few events behind (right after Redis returns, it may be in its backoff), and its
    ``/poll`` never reads past what it has delivered."""
    wait_for(lambda: len({n.health_any()[1]["cursor"] for n in nodes}) == 1, "every node at the same head",
             deadline=FAULT_DEADLINE)


def acked(publishers: list[Publisher]) -> int:
    return sum(len(p.acked) for p in publishers)


def finish(publishers: list[Publisher]) -> None:
    """Let every publisher deliver its batch in flight and stop; fail if one cannot."""
    for p in publishers:
        p.finish()
    for p in publishers:
        p.join(FAULT_DEADLINE)
    stuck = [(p.master, p.in_flight[:1], dict(p.statuses)) for p in publishers if p.is_alive() or p.in_flight]
    assert not stuck, f"publishers could not deliver their last batch: {stuck}"


def check_tally(publishers: list[Publisher], events: list[dict[str, Any]]) -> str:
    """Every acknowledged event stored once, nothing unacknowledged, per-master order kept."""
    result = tally([k for p in publishers for k in p.acked], events)
    unexpected = [u for p in publishers for u in p.unexpected]
    assert not unexpected, f"answers other than 200/5xx to valid batches: {unexpected[:5]}"
    assert result.lost == [], f"lost {len(result.lost)} acknowledged events, e.g. {result.lost[:5]}"
    assert result.doubled == [], f"doubled {len(result.doubled)} events, e.g. {result.doubled[:5]}"
    assert result.unacknowledged_stored == [], result.unacknowledged_stored[:5]
    assert result.out_of_order == [], result.out_of_order[:5]
    return result.figures()


def drain_ws(ws: WSClient, until_id: str | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Read events from ``ws`` until the event ``until_id`` or until the connection closes;
    returns ``(events, closed)``."""
    out: list[dict[str, Any]] = []
    end = time.monotonic() + DEADLINE
    for _ in range(MAX_MESSAGES):
        if until_id is not None and out and out[-1]["id"] == until_id:
            return out, False
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"WebSocket: neither {until_id} nor a close within {DEADLINE}s ({len(out)} events)")
        try:
            msg = json.loads(ws.conn.recv(timeout=left))
        except ConnectionClosed:
            return out, True
        except TimeoutError:
            continue
        if "." in msg.get("type", ""):
            out.append(msg)
        else:
            ws.control.append(msg)
    raise AssertionError("WebSocket: too many messages")


def drain_sse(sse: SSEClient) -> list[dict[str, Any]]:
    """Read SSE events until the stream ends (its node died)."""
    out: list[dict[str, Any]] = []
    for _ in range(MAX_MESSAGES):
        try:
            msg = sse.next_message()
        except (OSError, TimeoutError):
            return out
        if msg is None:
            return out
        obj = json.loads(msg["data"])
        if msg.get("event") == "gap":
            sse.gaps.append(obj)
        else:
            out.append(obj)
    raise AssertionError("SSE: too many messages")


def head(node: Node) -> str:
    return str(node.health()["cursor"])


def ws_client(node: Node, subscribers: list[Any]) -> WSClient:
    ws = WSClient(node.ws_url)
    subscribers.append(ws)
    return ws


def sse_client(node: Node, subscribers: list[Any], query: str = "") -> SSEClient:
    sse = SSEClient(node.url, query)
    subscribers.append(sse)
    assert sse.status == 200, sse.status
    return sse


# --------------------------------------------------------------------------------------------
# (a) one stream, seen the same from every node
# --------------------------------------------------------------------------------------------


def test_subscribers_on_every_node_receive_identical_streams(cluster: Cluster, subscribers: list[Any]) -> None:
    """Three masters each publish through a different node, interleaved; a WebSocket and an
    SSE subscriber (live, subscribed before the first event) on every node, and a ``/poll``
    replay from ``earliest`` on every node, all receive the same events with the same ids in the
    same order; the ids strictly increase and every published event is there once."""
    nodes = cluster.nodes
    wss = [ws_client(n, subscribers) for n in nodes]
    for ws in wss:
        ws.subscribe()
    sses = [sse_client(n, subscribers) for n in nodes]
    for n in nodes:
        n.wait_subscribers("sse", 1)
    masters = [Master(name, "inc-1") for name in ("m1", "m2", "m3")]
    published: list[tuple[str, str, int]] = []
    for round_ in range(12):
        for i, master in enumerate(masters):
            batch = master.batch(1 + (round_ + i) % 5, builder=f"b{i}")
            answer = nodes[(i + round_) % 3].ingest(batch)
            assert answer["accepted"] == len(batch) and answer["duplicates"] == 0, answer
            published += [(e["master"], e["incarnation"], e["seq"]) for e in batch]
    last = head(nodes[0])
    streams = [ws.until_id(last) for ws in wss] + [s.until_id(last) for s in sses]
    all_caught_up(nodes)
    replays = [read_journal(n.url) for n in nodes]
    reference = replays[0]
    assert len(reference) == len(published)
    assert sorted((e["master"], e["incarnation"], e["seq"]) for e in reference) == sorted(published)
    offsets = [int(e["id"].rpartition(":")[2]) for e in reference]
    assert offsets == sorted(set(offsets)), "ids strictly increase"
    for i, stream in enumerate(streams + replays):
        assert [e["id"] for e in stream] == [e["id"] for e in reference], f"stream {i} differs in ids"
        assert stream == reference, f"stream {i} differs in content"
    assert {head(n) for n in nodes} == {last}
    for ws in wss:
        ws.assert_nothing_more()


# --------------------------------------------------------------------------------------------
# (b) the subscriber's node dies: resume elsewhere
# --------------------------------------------------------------------------------------------


def test_kill9_of_the_subscribers_node_then_resume_on_another_node(cluster: Cluster, subscribers: list[Any]) -> None:
    """Plugin-like publishers keep publishing (one starting on node 0 and failing over, the
    others on nodes 1 and 2) while node 0, where a WebSocket and an SSE subscriber read from
    ``earliest``, is killed with SIGKILL.  The WebSocket subscriber resumes on node 1 and the
    SSE one on node 2 (``Last-Event-ID``), each with the id of the last event it received:
    what each got before and after is exactly the stream, nothing lost or doubled, and every
    acknowledged event is stored once, in each master's order."""
    n0, n1, n2 = cluster.nodes
    rng = random.Random(seed())
    urls = [n.url for n in cluster.nodes]
    publishers = [
        Publisher(urls, "km0", TOKENS["km0"], random.Random(rng.random())),
        Publisher([n1.url, n2.url], "km1", TOKENS["km1"], random.Random(rng.random())),
        Publisher([n2.url, n1.url], "km2", TOKENS["km2"], random.Random(rng.random())),
    ]
    try:
        ws = ws_client(n0, subscribers)
        ws.subscribe(since="earliest")
        sse = sse_client(n0, subscribers, "since=earliest")
        for p in publishers:
            p.start()
        wait_for(lambda: acked(publishers) > 150, "acknowledgements before the kill", deadline=FAULT_DEADLINE)
        ws_before = ws.events(40)
        sse_before = sse.events(40)
        n0.kill()
        more, closed = drain_ws(ws)
        assert closed
        ws_before += more
        sse_before += drain_sse(sse)
        at_kill = acked(publishers)
        wait_for(lambda: acked(publishers) > at_kill + 150, "acknowledgements through the surviving nodes",
                 deadline=FAULT_DEADLINE)

        ws2 = ws_client(n1, subscribers)
        ws2.subscribe(since=ws_before[-1]["id"])
        sse2 = SSEClient(n2.url, headers={"Last-Event-ID": sse_before[-1]["id"]})
        subscribers.append(sse2)
        assert sse2.status == 200
        finish(publishers)
        all_caught_up([n1, n2])
        stream = read_journal(n1.url)
        assert read_journal(n2.url) == stream
        last = stream[-1]["id"]
        ws_all = ws_before + ws2.until_id(last)
        sse_all = sse_before + sse2.until_id(last)
        figures = check_tally(publishers, stream)
        print(f"\nkill -9 of the subscriber's node: {figures} ws_before={len(ws_before)} "
              f"sse_before={len(sse_before)} failovers={sum(p.failovers for p in publishers)}")
        assert [e["id"] for e in ws_all] == [e["id"] for e in stream]
        assert ws_all == stream
        assert [e["id"] for e in sse_all] == [e["id"] for e in stream]
        assert sse_all == stream
        assert ws2.control == [] and sse2.gaps == [], (ws2.control, sse2.gaps)
        ws2.assert_nothing_more()
    finally:
        for p in publishers:
            p.abandon()


# --------------------------------------------------------------------------------------------
# (c) one retried batch, two nodes at once
# --------------------------------------------------------------------------------------------


def test_same_batch_posted_to_two_nodes_at_once_is_stored_once(cluster: Cluster) -> None:
    """Round after round, the same batch (same bytes) is POSTed to two different nodes at the
    same moment (threads released by a barrier), as a plugin retrying after a timeout on one
    node might: per round the two answers' ``accepted`` add up to the batch and so do their
    ``duplicates``, and the stream holds every event exactly once, in seq order."""
    nodes = cluster.nodes
    master = Master("m1", "inc-race")
    rounds = count("race_rounds", 25)
    splits: list[tuple[int, int]] = []
    for r in range(rounds):
        batch = master.batch(1 + r % 30)
        body = json.dumps(batch).encode()
        pair = (nodes[r % 3], nodes[(r + 1) % 3])
        barrier = threading.Barrier(2, timeout=DEADLINE)
        answers: list[Any] = [None, None]

        def send(i: int, node: Node, body: bytes = body, barrier: threading.Barrier = barrier,
                 answers: list[Any] = answers) -> None:
            barrier.wait()
            answers[i] = post_ingest(node.url, None, TOKENS["m1"], raw=body)

        threads = [threading.Thread(target=send, args=(i, node)) for i, node in enumerate(pair)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE)
        assert all(a is not None for a in answers), "a POST did not return"
        assert [a[0] for a in answers] == [200, 200], answers
        decoded = [json.loads(a[1]) for a in answers]
        assert sum(d["accepted"] for d in decoded) == len(batch), decoded
        assert sum(d["duplicates"] for d in decoded) == len(batch), decoded
        splits.append((decoded[0]["accepted"], decoded[1]["accepted"]))
    all_caught_up(nodes)
    stream = read_journal(nodes[2].url)
    assert [(e["master"], e["incarnation"], e["seq"]) for e in stream] == [
        ("m1", "inc-race", s) for s in range(1, master.seq + 1)
    ]
    for node in nodes:
        assert node.health()["masters"]["m1"]["last_seq"] == master.seq
    print(f"\nconcurrent duplicates: {rounds} rounds, accepted splits {splits}")


# --------------------------------------------------------------------------------------------
# (d) Redis killed and restarted
# --------------------------------------------------------------------------------------------


def test_redis_sigkill_and_aof_restart_lose_no_acknowledged_event(cluster: Cluster, subscribers: list[Any]) -> None:
    """Plugin-like publishers post through all three nodes (failing over) while Redis is killed
    with SIGKILL and restarted on its AOF (``appendfsync always``), twice.  While Redis is down
    every node's ingest answers 503 (and that refused batch is never stored) and ``/health``
    answers 503 degraded; publishing goes on once Redis is back; a WebSocket and an SSE subscriber stay connected through it all and,
    once Redis is back, receive the whole stream.  At the end every acknowledged event is stored
    exactly once, nothing unacknowledged is stored, each master's order is kept."""
    nodes = cluster.nodes
    rng = random.Random(seed())
    urls = [n.url for n in nodes]
    publishers = [
        Publisher(urls[i:] + urls[:i], f"km{i}", TOKENS[f"km{i}"], random.Random(rng.random()))
        for i in range(3)
    ]
    probe = Master("m2", "probe")
    try:
        ws = ws_client(nodes[0], subscribers)
        ws.subscribe(since="earliest")
        sse = sse_client(nodes[1], subscribers, "since=earliest")
        for p in publishers:
            p.start()
        for _kill in range(count("redis_kills", 2)):
            before = acked(publishers)
            wait_for(lambda before=before: acked(publishers) > before + 60, "acknowledgements before the kill",
                     deadline=FAULT_DEADLINE)
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment to kill at (not synchronisation)
            cluster.redis.kill()
            for node in nodes:
                wait_for(lambda node=node: node.health_any()[0] == 503, f"node {node.port} degraded")
                status, body = node.health_any()
                assert body["status"] == "degraded", body
                batch = probe.batch(3)
                answer = post(node.url, json.dumps(batch).encode(), TOKENS["m2"], timeout=DEADLINE)
                assert answer.status == 503, (answer.status, answer.body)
                assert answer.json()["error"] == "unavailable", answer.body
            cluster.redis.restart()
        before = acked(publishers)
        wait_for(lambda: acked(publishers) > before + 60, "acknowledgements after the last restart",
                 deadline=FAULT_DEADLINE)
        finish(publishers)
        all_caught_up(nodes)
        stream = read_journal(nodes[2].url)
        figures = check_tally(publishers, stream)
        statuses = sum(dict(p.statuses).get(503, 0) for p in publishers)
        print(f"\nRedis kill -9 loop: {figures} 503s={statuses} failovers={sum(p.failovers for p in publishers)}")
        assert not [e for e in stream if e["incarnation"] == "probe"], "a refused batch was stored"
        assert [e["id"] for e in ws.until_id(stream[-1]["id"])] == [e["id"] for e in stream]
        assert sse.until_id(stream[-1]["id"]) == stream
        ws.assert_nothing_more()
    finally:
        for p in publishers:
            p.abandon()


def test_a_node_is_healthy_again_when_redis_returns_without_any_ingest(tmp_path: Path) -> None:
    """A node's ingest fails while Redis is down (503, ``/health`` 503 degraded); once Redis is
    back on its AOF, ``/health`` turns 200 ok by itself, with no ingest through the node, so a
    load balancer that took it out of service on ``/health`` puts it back."""
    c = Cluster(tmp_path, n=1)
    try:
        node = c.start().nodes[0]
        master = Master("m1", "inc-health")
        node.ingest(master.batch(3))
        c.redis.kill()
        status, _ = post_ingest(node.url, master.batch(3), TOKENS["m1"])
        assert status == 503
        assert node.health_any()[0] == 503
        c.redis.restart()
        wait_for(lambda: node.health_any()[0] == 200, "/health ok again after Redis returned", deadline=10)
        assert node.health_any()[1]["redis"]["connected"] is True
    finally:
        c.close()


# --------------------------------------------------------------------------------------------
# (e) the same state everywhere
# --------------------------------------------------------------------------------------------


def _api(node: Node, path: str) -> Any:
    status, body = http_get(node.url + path)
    assert status == 200, (path, status, body[:300])
    return json.loads(body)


def test_every_nodes_api_agrees_after_builds_through_different_nodes(cluster: Cluster) -> None:
    """Pushes built by three masters, each master publishing through a different node (green,
    red, then a newer green revision): once every node has read the stream to its head, every
    node's ``/api/lastgreen``, ``/api/builds``, ``/api/revisions`` and ``/api/builders``
    answer the same, with the same cursor, and last green is the newest green revision."""
    nodes = cluster.nodes
    pushes = [
        ("m1", "a" * 40, {"linux": "success", "mac": "success"}),
        ("m2", "b" * 40, {"linux": "failure", "mac": "success"}),
        ("m3", "c" * 40, {"linux": "success", "mac": "warnings"}),
        ("m1", "d" * 40, {"linux": "success", "mac": "failure"}),
    ]
    seqs = dict.fromkeys(("m1", "m2", "m3"), 1)
    ids = itertools.count(1)
    for i, (master, rev, results) in enumerate(pushes):
        n = next(ids)
        events = try_push(rev, results, branch="main", buildsetid=n * 10, first_buildrequestid=n * 10,
                          first_buildid=n * 10, start_time=1_700_000_000.0 + 1000 * i)
        batch = [{"master": master, "incarnation": "inc-1", "seq": seqs[master] + j, "type": e["type"],
                  "time": e["time"], "data": e["data"]} for j, e in enumerate(events)]
        seqs[master] += len(batch)
        nodes[i % 3].ingest(batch)
    last = head(nodes[0])
    for node in nodes:
        wait_for(lambda node=node: _api(node, "/api/lastgreen?branch=main")["cursor"] == last,
                 f"node {node.port}'s state at the head")
    for path in ("/api/lastgreen?branch=main", "/api/builds?limit=100", "/api/revisions?branch=main",
                 "/api/builders"):
        answers = [_api(n, path) for n in nodes]
        assert answers[0]["cursor"] == last, (path, answers[0])
        assert answers[1:] == [answers[0]] * 2, f"{path} differs between nodes"
    green = _api(nodes[1], "/api/lastgreen?branch=main")
    assert green["revision"]["revision"] == "c" * 40, green
    builds = _api(nodes[2], "/api/builds?limit=100")
    assert len(builds["builds"]) == 8, builds


# --------------------------------------------------------------------------------------------
# ensure a sane start for the harness itself
# --------------------------------------------------------------------------------------------


def test_nodes_share_epoch_and_head(cluster: Cluster) -> None:
    """Every node reports the same epoch and head cursor before and after an ingest through one
    of them (the epoch lives in Redis), and ``/health`` is ok on each."""
    nodes = cluster.nodes
    first = {n.health()["cursor"].rpartition(":")[0] for n in nodes}
    assert len(first) == 1, first
    answer = nodes[0].ingest(Master("m3", "inc-h").batch(5))
    for n in nodes:
        wait_for(lambda n=n: n.health()["cursor"] == answer["cursor"], f"node {n.port} at the head")
        assert n.health()["status"] == "ok"
    assert nodes[0].stop() == 0, nodes[0].log()[-3000:]


def test_sigterm_stops_a_node_cleanly_even_with_redis_gone(cluster: Cluster) -> None:
    """SIGTERM makes a node exit 0 promptly while Redis runs, and also after Redis itself was
    stopped first (``./dev run --redis`` and service managers stop things in any order)."""
    nodes = cluster.nodes
    assert nodes[0].stop() == 0, nodes[0].log()[-3000:]
    cluster.redis.stop()
    for n in nodes[1:]:
        assert n.stop() == 0, n.log()[-3000:]


# --------------------------------------------------------------------------------------------
# (g) a webhook whose delivering node dies
# --------------------------------------------------------------------------------------------

WEBHOOK_BATCH = 7


def test_webhook_of_a_dead_node_is_taken_over_and_delivers_everything_once_in_order(
    tmp_path: Path,
) -> None:
    """A hook registered through node 0 is delivered by whichever node holds its lease (read
    from Redis).  Events are published through every node, the holder is killed with SIGKILL
    while deliveries go on, and more events are published through the survivors: another node
    takes the hook over and the receiver (on 127.0.0.1, deduplicating by event id) ends with
    every event of the stream exactly once in stream order; the events it got twice are at most
    one batch (the batch in flight), and apart from that redelivery ids only increase."""
    import redis as redis_py

    from tests.e2e.client_support import Receiver, api

    config = tmp_path / "firehose.toml"
    config.write_text(
        '[webhooks]\nadmin_token = "admin-token"\nretry_initial = 0.05\nretry_max = 0.2\n'
        f'max_failures = 1000\nbatch_size = {WEBHOOK_BATCH}\nallow_networks = ["127.0.0.0/8"]\n'
    )
    c = Cluster(tmp_path, n=3, extra=("--config", str(config)))
    receiver = Receiver()
    try:
        nodes = c.start().nodes
        status, hook = api(nodes[0].url, "POST", "/api/webhooks", {"url": receiver.url, "filter": {}})
        assert status == 201, hook
        client = redis_py.Redis.from_url(c.redis.url)
        key = f"firehose:webhooks:lease:{hook['id']}"

        def holder() -> Node | None:
            value = client.get(key)
            if value is None:
                return None
            pid = int(value.decode().split(":")[1])
            return next((n for n in nodes if n.proc is not None and n.proc.pid == pid), None)

        first = wait_for(holder, "a node holding the hook's lease", deadline=30)
        master = Master("m1", "inc-hook")
        for i in range(12):
            nodes[i % 3].ingest(master.batch(5))
        receiver.wait_events(2 * WEBHOOK_BATCH)
        first.kill()
        survivors = [n for n in nodes if n is not first]
        for i in range(12):
            survivors[i % 2].ingest(master.batch(5))
        all_caught_up(survivors)
        stream = read_journal(survivors[0].url)
        assert len(stream) == master.seq
        wait_for(lambda: len({e["id"] for e in receiver.events()}) >= len(stream),
                 "every event delivered after the takeover", deadline=60)
        second = holder()
        assert second is not None and second is not first
        got = receiver.events()
        seen: set[str] = set()
        unique: list[dict[str, Any]] = []
        doubles = 0
        for e in got:
            if e["id"] in seen:
                doubles += 1
                continue
            seen.add(e["id"])
            unique.append(e)
        print(f"\nwebhook takeover: {len(stream)} events, {len(got)} received, {doubles} twice, "
              f"{len(receiver.deliveries)} deliveries")
        assert [e["id"] for e in unique] == [e["id"] for e in stream]
        assert unique == stream
        assert doubles <= WEBHOOK_BATCH, doubles
        # In delivery order the offsets only go back once, to resend the batch in flight.
        offsets = [int(e["id"].rpartition(":")[2]) for e in got]
        backs = sum(1 for a, b in zip(offsets, offsets[1:], strict=False) if b <= a)
        assert backs <= 1, backs
    finally:
        receiver.close()
        c.close()


# --------------------------------------------------------------------------------------------
# (f) real Buildbot masters
# --------------------------------------------------------------------------------------------


class TwoBuildbotMastersOnTwoNodesTest(TempDirMixin, trial_unittest.TestCase):
    """Two real in-process Buildbot masters (``RunMasterBase``'s ``TestedRealMaster``, the
    plugin's reporter) publish to two different nodes; an autobahn WebSocket subscriber on the
    third node sees both."""

    timeout = 120

    @defer.inlineCallbacks
    def test_two_real_masters_publishing_to_different_nodes_make_one_stream(self) -> Any:
        """Master ``alpha`` publishes to node 0 and ``beta`` to node 1, each running one forced
        build and then shutting down: the subscriber on node 2 gets exactly the stream every node
        replays (same ids, same order), each master's events are a complete coherent 1..N
        sequence from ``master.started`` to ``master.stopped``, and every node's ``/health``
        and ``/api/builds`` agree."""
        from types import SimpleNamespace

        from tests.plugin.realserver_lib import WSSubscriber, check_stream, force_build, start_master
        from tests.plugin.test_plugin_realserver import master_config, secrets_dir, token_of

        base = Path(self.mktemp()).absolute()
        base.mkdir(parents=True)
        names = ("alpha", "beta")
        c = Cluster(base, n=3, tokens={name: token_of(name) for name in names})
        self.addCleanup(c.close)
        c.start()
        secrets = secrets_dir(str(base), names)
        sub = WSSubscriber(c.nodes[2].ws_url)
        self.addCleanup(sub.stop)
        yield sub.start()
        masters = []
        for name, node in zip(names, c.nodes[:2], strict=True):
            config = master_config(SimpleNamespace(url=node.url), name, secrets)
            tested = yield start_master(self, config, str(base / name))
            masters.append(tested)
        built = yield defer.gatherResults([force_build(m.master, "linux-build") for m in masters],
                                          consumeErrors=True)
        self.assertEqual([len(b["builds"]) for b in built], [1, 1])
        for m in masters:
            yield m.shutdown()
        for name in names:
            yield plugin_wait_for(lambda name=name: [e for e in sub.of_type("master.stopped") if e["master"] == name],
                                  what=f"{name}'s master.stopped on node 2")
        all_caught_up(c.nodes)
        streams = [read_journal(n.url) for n in c.nodes]
        self.assertEqual(streams[1], streams[0])
        self.assertEqual(streams[2], streams[0])
        stored = streams[0]
        yield plugin_wait_for(lambda: len(sub.events) >= len(stored), what="subscriber caught up")
        self.assertEqual([e["id"] for e in sub.events], [e["id"] for e in stored])
        self.assertEqual(sub.events, stored)
        check_stream(self, stored)
        for name in names:
            mine = [e for e in stored if e["master"] == name]
            self.assertEqual(mine[0]["type"], "master.started")
            self.assertEqual(mine[-1]["type"], "master.stopped")
            self.assertEqual(mine[-1]["data"]["last_seq"], len(mine))
            self.assertEqual(len([e for e in mine if e["type"] == "build.finished"]), 1)
        healths = [n.health()["masters"] for n in c.nodes]
        self.assertEqual(healths[1:], [healths[0]] * 2)
        builds = [_api(n, "/api/builds?limit=10") for n in c.nodes]
        self.assertEqual(builds[1:], [builds[0]] * 2)
        self.assertEqual(sorted(b["master"] for b in builds[0]["builds"]), ["alpha", "beta"])
