"""``python -m bench redis``: the shared journal (several nodes on one Redis stream) against
the embedded SQLite node, on this machine.

* ``ingest``: events/s acknowledged by one ``--redis`` node (4 masters, batches of 100, one in
  flight each: the plugin's outbox), and the same against an SQLite node (``--synchronous
  FULL``); node CPU per event, Redis' CPU.
* ``fanout``: 1,000 WebSocket subscribers at 100 events/s on one ``--redis`` node, publisher
  on the same node, then with the publisher on a *second* node (the subscribers' node only reads
  the shared stream); node CPU per delivery and p99 latency, against an SQLite node.
* ``failover``: a subscriber on node A, a publisher on node B; ``kill -9`` of A; the time until
  the subscriber, reconnecting to B with its last cursor, is subscribed again and until it has its
  first new event; p50/p99 over ``--kills`` kills (A restarted each time); every event once.
* ``capacity``: one node on core 0 at 3,000 subscribers x 100 events/s gives a p99; then two nodes, one per
  core, with the subscribers split between them and more of them until the p99 is passed: the
  count two nodes hold at the p99 of one (the load generator shares the cores: see the notes).

Redis runs with AOF ``appendfsync always`` in a temporary directory on a loopback port.
Every process is pinned with taskset, every wait is bounded, every process started here is
stopped by its own pid; everything listens on and connects to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from bench import scenarios as sc
from bench.common import (
    CLIENT_CORE,
    MASTERS,
    RESULTS,
    ROOT,
    SERVER_CORE,
    Loadgen,
    Server,
    compile_loadgen,
    cpu_seconds,
    free_port,
    http_json,
    kill,
    load_average,
    log,
    machine,
    python,
    raise_nofile,
    summarize,
    window,
)

SUBSCRIBE = '{"cmd":"subscribe"}'


class Redis:
    """``redis-server`` on a loopback port, its own directory, AOF ``appendfsync always``."""

    def __init__(self, core: str = CLIENT_CORE, appendfsync: str = "always") -> None:
        self.dir = tempfile.mkdtemp(prefix="fhbench-redis-")
        self.port = free_port()
        self.core = core
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            ["taskset", "-c", self.core, binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", self.dir, "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
             "--daemonize", "no", "--logfile", os.path.join(self.dir, "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited")
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        kill(self.proc)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class Node(Server):
    """:class:`bench.common.Server` on the shared journal: ``firehose serve --redis URL``,
    pinned to ``core``; :meth:`start` again after :meth:`kill9` is a restart on the same port."""

    def __init__(self, redis_url: str, core: str = SERVER_CORE, extra: Sequence[str] = ()) -> None:
        super().__init__(extra=extra)
        self.redis_url = redis_url
        self.core = core

    def start(self) -> Node:
        cmd = [
            "taskset", "-c", self.core, python(), "-m", "firehose.cli", "serve",
            "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--redis", self.redis_url,
            "--retention-days", "36500", "--max-connections-per-address", "0", "--max-connections", "100000",
        ]
        for i in range(MASTERS):
            cmd += ["--master-token", f"m{i}=t{i}"]
        cmd += self.extra
        src = os.environ.get("FIREHOSE_BENCH_SRC", ROOT)
        with open(self.logfile, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=raise_nofile, cwd=src, env=dict(os.environ, PYTHONPATH=src))
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited: {self.tail()}")
            try:
                http_json(self.url + "/health", timeout=1)
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"node not ready after {self.ready_timeout}s: {self.tail()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None


@contextlib.contextmanager
def cluster(n: int, cores: Sequence[str] = (SERVER_CORE,), redis_core: str = CLIENT_CORE) -> Iterator[tuple[Redis, list[Node]]]:
    redis = Redis(core=redis_core).start()
    nodes: list[Node] = []
    try:
        for i in range(n):
            nodes.append(Node(redis.url, core=cores[i % len(cores)]).start())
        yield redis, nodes
    finally:
        for node in nodes:
            node.stop()
        redis.stop()


def _measure(pids: Sequence[int], gen: Loadgen, seconds: float) -> dict[str, Any]:
    """:func:`bench.common.window` for the first pid, plus the CPU of the others (``cpu_pct_<i>``)."""
    others = [cpu_seconds(pid) for pid in pids[1:]]
    t0 = time.monotonic()
    rep = window(pids[0], gen, seconds)
    el = time.monotonic() - t0
    for i, (pid, c0) in enumerate(zip(pids[1:], others, strict=True), start=1):
        rep[f"cpu_pct_{i}"] = 100.0 * (cpu_seconds(pid) - c0) / el
    return rep


# -- ingest ---------------------------------------------------------------------------------------


def ingest(p: sc.Params) -> dict[str, Any]:
    """Events/s through one ``--redis`` node, then through an SQLite node, same load."""
    out: dict[str, Any] = {}
    args = ["--mode", "none", "--pub-flood", str(p.ingest_batch), "--pub-conns", str(p.ingest_masters)]
    with cluster(1) as (redis, nodes):
        gen = Loadgen(nodes[0].port, args, max_time=p.warmup + p.window + 60)
        try:
            gen.start()
            time.sleep(p.warmup)
            rep = _measure([nodes[0].pid, redis.pid], gen, p.window)
        finally:
            gen.stop()
    out["redis_events_per_s"] = rep["pub_acked_rate"]
    out["redis_node_cpu_us_per_event"] = rep["server_cpu_pct"] * 1e4 / rep["pub_acked_rate"] if rep["pub_acked_rate"] else None
    out["redis_server_cpu_pct"] = rep["cpu_pct_1"]
    out["redis_ack_avg_ms"] = rep["pub_ack_avg_ms"]
    base = sc.ingest(p)
    out["sqlite_events_per_s"] = base["events_per_s"]
    out["sqlite_cpu_us_per_event"] = base["cpu_us_per_event"]
    out["sqlite_ack_avg_ms"] = base["pub_ack_avg_ms"]
    return out


# -- fan-out --------------------------------------------------------------------------------------


def fanout(p: sc.Params) -> dict[str, Any]:
    """1,000 WebSocket subscribers at 100 events/s: a ``--redis`` node with the publisher on it,
    the same with the publisher on another node, and an SQLite node."""
    subs, rate = p.subs, p.rate
    sub_args = ["--mode", "ws", "--conns", str(subs), "--sub", SUBSCRIBE]
    pub_args = ["--pub-rate", str(rate), "--pub-interval", str(p.interval)]
    out: dict[str, Any] = {}
    # The node measured is alone on core 0; Redis, the other node and the load generators on core 1.
    with cluster(2, cores=(SERVER_CORE, CLIENT_CORE)) as (redis, nodes):
        local, other = nodes
        gen = Loadgen(local.port, sub_args + pub_args, max_time=p.warmup + p.window + 120)
        try:
            gen.start()
            time.sleep(p.warmup)
            rep = _measure([local.pid, redis.pid], gen, p.window)
        finally:
            gen.stop()
        out.update({f"redis_local_{k}": rep[k] for k in ("cpu_us_per_delivery", "p50_ms", "p99_ms", "rate",
                                                          "server_cpu_pct")})
        out["redis_local_redis_cpu_pct"] = rep["cpu_pct_1"]
        subs_gen = Loadgen(local.port, sub_args, max_time=p.warmup + p.window + 120)
        pub_gen = Loadgen(other.port, ["--mode", "none", *pub_args], max_time=p.warmup + p.window + 120)
        try:
            subs_gen.start()
            pub_gen.start()
            time.sleep(p.warmup)
            rep = _measure([local.pid, other.pid, redis.pid], subs_gen, p.window)
        finally:
            pub_gen.stop()
            subs_gen.stop()
        out.update({f"redis_remote_{k}": rep[k] for k in ("cpu_us_per_delivery", "p50_ms", "p99_ms", "rate",
                                                           "server_cpu_pct")})
        out["redis_remote_publishing_node_cpu_pct"] = rep["cpu_pct_1"]
        out["redis_remote_redis_cpu_pct"] = rep["cpu_pct_2"]
    base = sc.ws_fanout(p)
    out.update({f"sqlite_{k}": base[k] for k in ("cpu_us_per_delivery", "p50_ms", "p99_ms", "rate", "server_cpu_pct")})
    return out


# -- failover -------------------------------------------------------------------------------------


class _Subscriber(threading.Thread):
    """A WebSocket subscriber (``websockets``) that, when its node dies, reconnects to the next
    URL with the id of its last event, and records when that happened."""

    def __init__(self, urls: list[str], deadline: float) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.at = 0
        self.ids: list[str] = []
        self.lock = threading.Lock()
        self.closed_at: float | None = None
        self.resumed_at: float | None = None
        self.first_after_at: float | None = None
        self.connected = threading.Event()
        self.stop_flag = threading.Event()
        self.deadline = deadline
        self.error: str | None = None

    def run(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        end = time.monotonic() + self.deadline
        for _ in range(100_000):
            if self.stop_flag.is_set() or time.monotonic() > end:
                return
            url = self.urls[self.at % len(self.urls)]
            try:
                conn = connect(url, compression=None, proxy=None, open_timeout=5, ping_interval=None,
                               max_queue=4096)
            except OSError:
                self.at += 1
                continue
            try:
                since = self.ids[-1] if self.ids else "earliest"
                conn.send(json.dumps({"cmd": "subscribe", "since": since, "filter": {}}))
                resumed = False
                for _ in range(10_000_000):
                    if self.stop_flag.is_set():
                        return
                    try:
                        msg = json.loads(conn.recv(timeout=0.5))
                    except TimeoutError:
                        continue
                    now = time.monotonic()
                    kind = msg.get("type", "")
                    if kind == "subscribed":
                        if self.closed_at is not None and self.resumed_at is None:
                            self.resumed_at = now
                        self.connected.set()
                        continue
                    if "." not in kind:
                        continue
                    with self.lock:
                        if self.ids and _off(self.ids[-1]) >= _off(msg["id"]):
                            self.error = f"event {msg['id']} after {self.ids[-1]}"
                        self.ids.append(msg["id"])
                    if self.closed_at is not None and not resumed:
                        resumed = True
                        if self.first_after_at is None:
                            self.first_after_at = now
            except ConnectionClosed:
                if self.closed_at is None:
                    self.closed_at = time.monotonic()
                self.at += 1
            finally:
                conn.close()


def _off(cursor: str) -> int:
    return int(cursor.rpartition(":")[2])


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def failover(p: sc.Params, kills: int) -> dict[str, Any]:
    """``kills`` times: a subscriber reads on node A while node B takes the publisher's 50
    events/s; SIGKILL A; the times until the subscriber sees its socket close, until it is
    ``subscribed`` on B with its last cursor (resumed) and until its first new event; then A is
    started again and the next round's subscriber (same ids so far) starts on A."""
    resumed_ms: list[float] = []
    first_ms: list[float] = []
    detect_ms: list[float] = []
    ids: list[str] = []
    errors: list[str] = []
    with cluster(2, cores=(SERVER_CORE, SERVER_CORE)) as (_redis, nodes):
        a, b = nodes
        urls = [f"ws://127.0.0.1:{a.port}/ws", f"ws://127.0.0.1:{b.port}/ws"]
        pub = Loadgen(b.port, ["--mode", "none", "--pub-rate", "50", "--pub-interval", "0.05"],
                      max_time=60 + kills * 30)
        pub.start()
        try:
            for k in range(kills):
                sub = _Subscriber(urls, deadline=60)
                sub.ids = list(ids)
                sub.start()
                try:
                    end = time.monotonic() + 20
                    while time.monotonic() < end and not (sub.connected.is_set() and len(sub.ids) > len(ids)):
                        time.sleep(0.02)  # polling the subscriber thread, bounded
                    before = len(sub.ids)
                    end = time.monotonic() + 10
                    while time.monotonic() < end and len(sub.ids) < before + 10:
                        time.sleep(0.02)
                    t_kill = time.monotonic()
                    a.kill9()
                    end = time.monotonic() + 30
                    while time.monotonic() < end and sub.first_after_at is None:
                        time.sleep(0.002)
                    if sub.first_after_at is None or sub.resumed_at is None or sub.closed_at is None:
                        raise RuntimeError(f"kill {k}: the subscriber did not resume on the other node")
                    detect_ms.append((sub.closed_at - t_kill) * 1000)
                    resumed_ms.append((sub.resumed_at - t_kill) * 1000)
                    first_ms.append((sub.first_after_at - t_kill) * 1000)
                finally:
                    sub.stop_flag.set()
                    sub.join(10)
                if sub.error:
                    errors.append(sub.error)
                ids = sub.ids
                a.start()
        finally:
            pub.stop()
    return {
        "kills": kills, "detect_p50_ms": _pct(detect_ms, 0.5), "detect_p99_ms": _pct(detect_ms, 0.99),
        "resumed_p50_ms": _pct(resumed_ms, 0.5), "resumed_p99_ms": _pct(resumed_ms, 0.99),
        "resumed_max_ms": max(resumed_ms) if resumed_ms else None,
        "resumed_mean_ms": statistics.mean(resumed_ms) if resumed_ms else None,
        "first_event_p50_ms": _pct(first_ms, 0.5), "first_event_p99_ms": _pct(first_ms, 0.99),
        "events_seen": len(ids), "duplicates": len(ids) - len(set(ids)),
        "out_of_order": sum(1 for x, y in zip(ids, ids[1:], strict=False) if _off(x) >= _off(y)),
        "order_errors": len(errors),
    }


# -- capacity: two nodes, one per core ------------------------------------------------------------


def _ws_run(nodes: Sequence[Node], per_node: Sequence[int], rate: float, p: sc.Params) -> dict[str, Any]:
    """Subscribers split over ``nodes`` (one load generator each, unpinned), the publisher on
    the first; the worst p99 of the generators."""
    gens: list[Loadgen] = []
    try:
        for i, (node, n) in enumerate(zip(nodes, per_node, strict=True)):
            args = ["--mode", "ws", "--conns", str(n), "--sub", SUBSCRIBE]
            if i == 0:
                args += ["--pub-rate", str(rate), "--pub-interval", str(p.interval)]
            gen = Loadgen(node.port, args, max_time=p.warmup + p.window + 180)
            gen.cmd[2] = "0,1"  # taskset -c 0,1: the generators share the machine with the nodes
            gens.append(gen)
            gen.start(ready_timeout=180)
        time.sleep(p.warmup)
        for g in gens:
            g.mark()
        c0 = [n.cpu() for n in nodes]
        t0 = time.monotonic()
        time.sleep(p.window)
        reps = [g.report() for g in gens]
        el = time.monotonic() - t0
        cpu = [100 * (n.cpu() - c) / el for n, c in zip(nodes, c0, strict=True)]
    finally:
        for g in gens:
            g.stop()
    return {"subs": sum(per_node), "p99_ms": max(r["p99_ms"] for r in reps),
            "p50_ms": max(r["p50_ms"] for r in reps), "rate": sum(r["rate"] for r in reps),
            "expected_rate": sum(per_node) * rate, "node_cpu_pct": cpu}


def capacity(p: sc.Params, base: int, steps: Sequence[int]) -> dict[str, Any]:
    """One node (core 0) at ``base`` subscribers: its p99.  Two nodes (core 0 and core 1) at
    each total of ``steps``: the largest total whose p99 stays within the one node's."""
    rate = p.rate
    out: dict[str, Any] = {}
    with cluster(1, cores=(SERVER_CORE,)) as (_redis, nodes):
        one = _ws_run(nodes, [base], rate, p)
    out["one_node"] = one
    per_sub = one["rate"] / one["subs"]

    def holds(run: dict[str, Any]) -> bool:
        """Within the one node's p99, and every subscriber still gets what one node's did."""
        return bool(run["p99_ms"] <= one["p99_ms"] and run["rate"] >= 0.97 * per_sub * run["subs"])

    runs = []
    with cluster(2, cores=(SERVER_CORE, CLIENT_CORE)) as (_redis, nodes):
        for total in steps:
            run = _ws_run(nodes, [total // 2, total - total // 2], rate, p)
            log(f"capacity: two nodes, {total} subscribers: p99 {run['p99_ms']:.1f} ms "
                f"(one node at {p.subs}: {one['p99_ms']:.1f} ms), {run['rate']:.0f}/{run['expected_rate']:.0f} deliveries/s")
            runs.append(run)
            if not holds(run):
                break
    out["two_nodes"] = runs
    held = [r["subs"] for r in runs if holds(r)]
    out["two_nodes_subs_at_one_node_p99"] = max(held) if held else None
    return out


# -- main -----------------------------------------------------------------------------------------


def main(repeat: int = 1, name: str = "redis", smoke: bool = False, only: set[str] | None = None,
         kills: int = 20) -> int:
    compile_loadgen()
    p = sc.Params.smoke() if smoke else sc.Params()
    if smoke:
        kills = 2
    res: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(),
                           "load_before": load_average(), "params": p.__dict__.copy(), "scenarios": {}}
    todo: list[tuple[str, Any]] = [
        ("ingest", lambda: ingest(p)),
        ("fanout", lambda: fanout(p)),
        ("failover", lambda: failover(p, kills)),
        ("capacity", lambda: capacity(p, p.subs, (2 * p.subs,)) if smoke
         else capacity(p, 3000, (4000, 5000, 6000, 7000, 8000))),
    ]
    for scen, fn in todo:
        if only is not None and scen not in only:
            continue
        log(f"redis/{scen}: load average {load_average()[0]:.2f}")
        t0 = time.monotonic()
        try:
            n = 1 if scen in ("failover", "capacity") else repeat
            runs = [fn() for _ in range(n)]
        except Exception as exc:  # noqa: BLE001 - one broken scenario must not lose the others
            log(f"redis/{scen} FAILED: {exc!r}")
            res["scenarios"][scen] = {"error": repr(exc)}
            continue
        flat = [r for r in runs if all(not isinstance(v, dict | list) for v in r.values())]
        summary = ({k: summarize([r.get(k) for r in flat]) for k, v in flat[0].items()
                    if isinstance(v, int | float) and not isinstance(v, bool)} if flat else {})
        res["scenarios"][scen] = {"runs": runs, "summary": summary, "seconds": round(time.monotonic() - t0, 1)}
        log(f"redis/{scen}: {json.dumps(summary or runs[-1], default=str)[:2000]}")
    res["load_after"] = load_average()
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1, default=str)
    log(f"results: {path}")
    return 0 if not any("error" in s for s in res["scenarios"].values()) else 1
