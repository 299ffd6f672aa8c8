"""The scenarios of issues 6 and 13, each one run of the server under one kind of load.

A scenario function takes a :class:`Params` and returns one run's figures (a flat dict of
numbers); ``__main__`` repeats it and keeps the median, min and max of each figure.

"Batched" scenarios publish like the plugin at its old 0.2 s flush: one master, every 0.2 s one
POST with everything due (100 ev/s arrive as 20-event batches).  "Unbatched" ones publish like a
fleet: ``unbatched_masters`` masters (10), each POSTing ONE event per request at rate/10 ev/s,
one request in flight each, keep-alive (``fhload --pub-single 1``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from bench.common import BUILD, Loadgen, Server, cpu_seconds, http_json, log, runqueue_wait_seconds, window

SUBSCRIBE = '{"cmd":"subscribe"}'


@dataclass
class Params:
    """Sizes and durations; ``quick()`` shrinks them to a seconds-long smoke run."""

    subs: int = 1000
    rate: float = 100.0
    #: Seconds between the publisher's batches (the plugin waits up to flush_interval for company).
    interval: float = 0.2
    warmup: float = 1.5
    window: float = 3.0
    capacity_rate: float = 1000.0
    poll_rate: float = 40.0
    ingest_batch: int = 100
    ingest_masters: int = 4
    plugin_batch: int = 370
    resume_events: int = 1_000_000
    idle_conns: int = 10_000
    slow_fraction: float = 0.10
    scaling: tuple[int, ...] = (100, 1000, 5000)
    load_rates: tuple[float, ...] = (50.0, 100.0, 200.0, 400.0)
    #: Publishing masters of the unbatched scenarios (one event per POST each).
    unbatched_masters: int = 10
    #: The unbatched scenarios' higher rate (ws_unbatched_300) and larger crowd (ws_unbatched_3000).
    unbatched_high_rate: float = 300.0
    unbatched_many_subs: int = 3000
    #: ``python -m bench curves``: subscribers at ``rate``, and events/s at ``subs``.
    curve_subs: tuple[int, ...] = (100, 300, 1000, 3000, 10000)
    curve_rates: tuple[float, ...] = (50.0, 100.0, 200.0, 400.0, 800.0)
    #: Seconds the start-up scenario waits for a correct /api answer.
    startup_timeout: float = 180.0
    quick: bool = False

    @classmethod
    def smoke(cls) -> Params:
        return cls(
            subs=50, rate=50.0, warmup=0.5, window=1.0, capacity_rate=200.0, poll_rate=20.0,
            resume_events=5000, idle_conns=200, scaling=(20, 50), load_rates=(50.0,),
            unbatched_high_rate=100.0, unbatched_many_subs=100, curve_subs=(20, 50), curve_rates=(50.0, 100.0),
            quick=True,
        )


#: A server shared by the repeats of one scenario (``__main__`` sets it; fresh connections and a
#: fresh publisher incarnation each run).  ``None``: every run starts its own.
SHARED: dict[str, Server | None] = {"server": None}


@contextlib.contextmanager
def _server(fresh: bool = False) -> Iterator[Server]:
    shared = SHARED["server"]
    if shared is not None and not fresh:
        yield shared
        return
    server = Server().start()
    try:
        yield server
    finally:
        server.stop()


def _fanout(p: Params, mode: str, subs: int, rate: float, extra: list[str] | None = None,
            masters: int = 0) -> dict[str, Any]:
    """``subs`` subscribers, ``rate`` events/s published: batched by one master every
    ``p.interval`` s, or (``masters`` > 0) one event per POST from each of ``masters`` masters."""
    args = ["--mode", mode, "--conns", str(subs), "--pub-rate", str(rate),
            "--pub-interval", str(p.interval), *(extra or [])]
    if masters:
        args += ["--pub-single", "1", "--pub-conns", str(masters)]
    if mode == "ws":
        args += ["--sub", SUBSCRIBE]
    elif mode == "sse":
        args += ["--path", "/sse"]
    with _server() as server:
        gen = Loadgen(server.port, args, max_time=p.warmup + p.window + 120)
        try:
            n = gen.start()
            time.sleep(p.warmup)
            rep = window(server.pid, gen, p.window)
        finally:
            gen.stop()
    rep["subscribed"] = n
    rep["offered_deliveries"] = rate * subs
    rep["delivered_fraction"] = rep["rate"] / (rate * subs) if rate * subs else None
    # below 1: the publisher fell behind its schedule (answers slower than its masters' rate)
    rep["published_fraction"] = rep["pub_rate"] / rate if rate else None
    rep["ev_per_post"] = rep["pub_events"] / rep["pub_batches"] if rep["pub_batches"] else None
    return rep


def ws_fanout(p: Params) -> dict[str, Any]:
    return _fanout(p, "ws", p.subs, p.rate)


def ws_capacity(p: Params) -> dict[str, Any]:
    """Offer far more than one core can deliver; what gets through is the capacity."""
    return _fanout(p, "ws", p.subs, p.capacity_rate)


def ws_unbatched(p: Params) -> dict[str, Any]:
    """1,000 subscribers x 100 ev/s, one event per POST from 10 masters (issue 13's first row)."""
    return _fanout(p, "ws", p.subs, p.rate, masters=p.unbatched_masters)


def ws_unbatched_300(p: Params) -> dict[str, Any]:
    """1,000 x 300 ev/s, one event per POST: all delivered at <= 3 us a delivery?"""
    return _fanout(p, "ws", p.subs, p.unbatched_high_rate, masters=p.unbatched_masters)


def ws_unbatched_3000(p: Params) -> dict[str, Any]:
    """3,000 subscribers x 100 ev/s, one event per POST: bounded reactor turns (p99)."""
    return _fanout(p, "ws", p.unbatched_many_subs, p.rate, masters=p.unbatched_masters)


def sse_unbatched(p: Params) -> dict[str, Any]:
    return _fanout(p, "sse", p.subs, p.rate, masters=p.unbatched_masters)


def sse_fanout(p: Params) -> dict[str, Any]:
    return _fanout(p, "sse", p.subs, p.rate)


def sse_capacity(p: Params) -> dict[str, Any]:
    return _fanout(p, "sse", p.subs, p.capacity_rate)


def longpoll(p: Params) -> dict[str, Any]:
    rep = _fanout(p, "poll", p.subs, p.poll_rate)
    cpu = rep["server_cpu_pct"] / 100.0
    rep["polls_per_core_s"] = rep["poll_rate"] / cpu if cpu > 0 else None
    rep["cpu_us_per_poll"] = cpu * 1e6 / rep["poll_rate"] if rep["poll_rate"] else None
    return rep


def filtered(p: Params) -> dict[str, Any]:
    """1,000 subscribers, each on one of 20 builders (5% of events), against the same number of
    deliveries to unfiltered subscribers (5% as many of them)."""
    subs = p.subs
    # Subscriber i asks for builder b<i % 20> (fhload.c expands --sub FILTERED per socket); the
    # publisher cycles through 20 builders.
    gen_args = ["--mode", "ws", "--conns", str(subs), "--pub-rate", str(p.rate),
                "--pub-interval", str(p.interval), "--sub", "FILTERED"]
    with _server() as server:
        gen = Loadgen(server.port, gen_args, max_time=p.warmup + p.window + 120)
        try:
            gen.start()
            time.sleep(p.warmup)
            rep = window(server.pid, gen, p.window)
        finally:
            gen.stop()
    rep["ev_per_post"] = rep["pub_events"] / rep["pub_batches"] if rep["pub_batches"] else None
    base = _fanout(p, "ws", max(1, subs // 20), p.rate)
    out = {f"filtered_{k}": v for k, v in rep.items() if isinstance(v, int | float)}
    out.update({f"unfiltered_{k}": v for k, v in base.items() if isinstance(v, int | float)})
    out["cpu_ratio_filtered_vs_same_deliveries"] = (
        rep["server_cpu_pct"] / base["server_cpu_pct"] if base["server_cpu_pct"] else None
    )
    # What a filter test costs per (subscriber x event), from the CPU difference.
    extra_cpu_s = (rep["server_cpu_pct"] - base["server_cpu_pct"]) / 100.0
    pairs = subs * p.rate - max(1, subs // 20) * p.rate
    out["filter_ns_per_subscriber_event"] = extra_cpu_s * 1e9 / pairs if pairs > 0 else None
    return out


def _ingest(p: Params, masters: int, batch: int) -> dict[str, Any]:
    with _server() as server:
        gen = Loadgen(server.port, ["--mode", "none", "--pub-flood", str(batch), "--pub-conns", str(masters)],
                      max_time=p.warmup + p.window + 60)
        try:
            gen.start()
            time.sleep(p.warmup)
            rep = window(server.pid, gen, p.window)
        finally:
            gen.stop()
    rep["events_per_s"] = rep["pub_acked_rate"]
    rep["requests_per_s"] = rep["pub_answer_rate"]
    rep["ev_per_post"] = rep["pub_events"] / rep["pub_batches"] if rep["pub_batches"] else None
    cpu = rep["server_cpu_pct"] / 100.0
    rep["cpu_us_per_event"] = cpu * 1e6 / rep["events_per_s"] if rep["events_per_s"] else None
    rep["cpu_us_per_request"] = cpu * 1e6 / rep["requests_per_s"] if rep["requests_per_s"] else None
    # what a whole core would answer at this cost (the figure a contended run still gives)
    rep["requests_per_core_s"] = 1e6 / rep["cpu_us_per_request"] if rep["cpu_us_per_request"] else None
    return rep


def ingest(p: Params) -> dict[str, Any]:
    """Several masters, each with one batch in flight (the plugin's outbox), journal FULL sync."""
    return _ingest(p, p.ingest_masters, p.ingest_batch)


def ingest_one_master(p: Params) -> dict[str, Any]:
    """One master's plugin at saturation: batches up to its 256 KiB limit (~370 events)."""
    return _ingest(p, 1, p.plugin_batch)


def ingest_single(p: Params) -> dict[str, Any]:
    """10 masters, each POSTing one event per request as soon as its previous one is answered:
    requests/s, and p50/p99 from a POST to its 200 (``pub_ack_p50_ms``, ``pub_ack_p99_ms``)."""
    return _ingest(p, p.unbatched_masters, 1)


# -- resume ---------------------------------------------------------------------------------------


def make_journal(path: str, n: int) -> str:
    """A journal of ``n`` build events written straight into SQLite (the server's schema), with
    the same ~700-byte bodies the publisher sends; cached in bench/build/."""
    from firehose.journal import _SCHEMA

    if os.path.exists(path):
        return path
    tmp = path + ".tmp"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(tmp + suffix):
            os.remove(tmp + suffix)
    t0 = time.monotonic()
    epoch = "be0c0001"
    db = sqlite3.connect(tmp, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.executescript(_SCHEMA)
    now = time.time()
    pad = "x" * 130
    tmpl = (
        '{"id":"%s:%d","type":"build.finished","master":"m0","incarnation":"resume-1","seq":%d,'
        '"time":%.6f,"data":{"buildid":%d,"number":%d,"builder":"b%02d","builderid":%d,'
        '"worker":"worker-%d","result":"success","results":0,"branch":"main","project":"firehose",'
        '"repository":"https://git.example.org/firehose.git",'
        '"revision":"4d2c8e1f0a9b7c6d5e4f3a2b1c0d9e8f7a6b5c4d","started_at":%.3f,"complete_at":%.3f,'
        '"state":"build successful","buildrequestid":%d,"buildsetid":%d,"workerid":%d,'
        '"tags":["linux","ci"],"url":"http://buildbot.example.org/#/builders/%d/builds/%d",'
        '"properties":{"owner":"alice","got_revision":"4d2c8e1f0a9b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",'
        '"buildnumber":%d,"scheduler":"force","reason":"bench"},"sent_at":%.6f,"pad":"%s"}}'
    )

    def rows() -> Any:
        for i in range(1, n + 1):
            b = i % 20
            t = now
            body = tmpl % (epoch, i, i, t, i, i, b, b, i % 7, t - 30, t, i, i, i % 7, b, i, i, t, pad)
            yield (i, t, "build.finished", body.encode())

    db.execute("BEGIN")
    db.executemany("INSERT INTO events (offset, received, type, body) VALUES (?, ?, ?, ?)", rows())
    db.execute("INSERT INTO meta VALUES ('epoch', ?)", (epoch,))
    db.execute("INSERT INTO meta VALUES ('head', ?)", (str(n),))
    db.execute("INSERT INTO sources VALUES ('m0', 'resume-1', ?, ?)", (n, now))
    db.execute("COMMIT")
    db.close()
    os.replace(tmp, path)
    log(f"generated a journal of {n} events in {time.monotonic() - t0:.1f}s: {path}")
    return path


def resume(p: Params, repeats: int = 1) -> list[dict[str, Any]]:
    """One WebSocket subscriber replays the whole journal from ``earliest``; one server start
    (it rebuilds its build state from the newest 500k events) serves every repeat."""
    n = p.resume_events
    path = make_journal(os.path.join(BUILD, f"resume-{n}.sqlite"), n)
    server = Server(db=path)
    t0 = time.monotonic()
    server.start()
    startup = time.monotonic() - t0
    runs = []
    try:
        for _ in range(repeats):
            gen = Loadgen(server.port, ["--mode", "ws", "--conns", "1", "--expect", str(n),
                                        "--sub", '{"cmd":"subscribe","since":"earliest"}'], max_time=240)
            try:
                c0 = server.cpu()
                w0 = runqueue_wait_seconds(server.pid)
                t1 = time.monotonic()
                gen.start()
                rep = gen.wait_line(240)
                c1 = server.cpu()
                w1 = runqueue_wait_seconds(server.pid)
                g1 = gen.cpu()  # from its start: the generator was started for this run
                wall = time.monotonic() - t1
            finally:
                gen.stop()
            el = rep["expect_elapsed"]
            runs.append({
                "events": rep["all_deliveries"], "seconds": el,
                "events_per_s": rep["all_deliveries"] / el if el > 0 else None,
                "server_cpu_s": c1 - c0, "cpu_us_per_event": (c1 - c0) * 1e6 / max(1, rep["all_deliveries"]),
                "server_cpu_pct": 100.0 * (c1 - c0) / wall,
                "loadgen_cpu_pct": 100.0 * g1 / wall if g1 is not None else None,
                "server_runq_wait_pct": 100.0 * (w1 - w0) / wall if w0 is not None and w1 is not None else None,
                "server_rss_mb": server.rss() / 2**20, "server_startup_s": startup,
            })
    finally:
        # the journal is reused by the next run: do not let Server.stop remove it (it is not
        # in the server's temporary directory)
        server.stop()
    return runs


# -- start-up -------------------------------------------------------------------------------------


def _expected_builders(n: int) -> dict[str, int]:
    """What a correct ``/api/builders`` says of :func:`make_journal`'s journal: builder b<k>'s
    last build is the newest event i <= n with i % 20 == k (20 builders)."""
    return {f"b{k:02d}": n - ((n - k) % 20) for k in range(20) if n - ((n - k) % 20) > 0}


def _api_answer(url: str) -> tuple[int, Any]:
    """(status, parsed body) of one GET; (0, None) if nothing answered."""
    import json
    import urllib.error

    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (127.0.0.1)
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return 0, None


def _timed_start(server: Server, expected: dict[str, int], timeout: float, poll: float = 0.02) -> dict[str, Any]:
    """Start ``server`` and poll it every ``poll`` s: seconds from the process start to the
    first accepted TCP connection, to ``/health`` 200, to the first ``/api/builders`` 200 and to
    the first *correct* one (200, not warming up, every builder's last build as in the journal).
    A 503 ``warming_up`` (or any non-200) answer in between is counted, not taken."""
    t0 = server.spawn()
    out: dict[str, Any] = {"api_warming_answers": 0, "api_wrong_answers": 0, "api_other_answers": 0}
    deadline = t0 + timeout
    url = server.url
    while time.monotonic() < deadline:
        assert server.proc is not None
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited during start-up: {server.tail()}")
        now = time.monotonic() - t0
        if "listening_s" not in out:
            with socket.socket() as sock:
                sock.settimeout(1)
                try:
                    sock.connect(("127.0.0.1", server.port))
                    out["listening_s"] = time.monotonic() - t0
                except OSError:
                    time.sleep(poll)
                    continue
        if "health_s" not in out:
            status, _ = _api_answer(url + "/health")
            if status == 200:
                out["health_s"] = time.monotonic() - t0
        status, body = _api_answer(url + "/api/builders")
        if status == 200 and isinstance(body, dict) and "builders" in body:
            out.setdefault("api_first_200_s", time.monotonic() - t0)
            got = {b.get("builder"): (b.get("last_build") or {}).get("number") for b in body["builders"]}
            if got == expected:
                out["api_correct_s"] = time.monotonic() - t0
                out.setdefault("health_s", out["api_correct_s"])
                break
            out["api_wrong_answers"] += 1
        elif status == 503 and isinstance(body, dict) and "warm" in str(body.get("error", "")):
            out.setdefault("api_first_warming_s", now)
            out["api_warming_answers"] += 1
        elif status:
            out["api_other_answers"] += 1
            out["api_other_status"] = status
        time.sleep(poll)
    else:
        raise RuntimeError(f"no correct /api/builders answer within {timeout}s: {out}; {server.tail()}")
    out["rss_mb"] = server.rss() / 2**20
    # the process is new: its CPU and run-queue wait so far are the start-up's
    el = time.monotonic() - t0
    out["cpu_s"] = cpu_seconds(server.pid)
    wait = runqueue_wait_seconds(server.pid)
    out["server_runq_wait_pct"] = 100.0 * wait / el if wait is not None and el > 0 else None
    return out


def startup(p: Params) -> dict[str, Any]:
    """A server on a copy of a ``resume_events`` journal (1,000,000 events): the first start
    (no state checkpoint beside or in the journal), then a clean SIGTERM stop and a restart on
    the same files.  Seconds from process start to listening and to a correct ``/api`` answer."""
    n = p.resume_events
    # A journal only ever copied, never served: the resume scenario's one is served (and may
    # carry a checkpoint a clean stop wrote), so it cannot give a first start.
    src = make_journal(os.path.join(BUILD, f"startup-{n}.sqlite"), n)
    # what a start costs without a journal to read (interpreter, imports, listening): the floor
    empty = Server()
    try:
        floor = _timed_start(empty, {}, p.startup_timeout)
    finally:
        empty.stop()
    server = Server()
    try:
        t0 = time.monotonic()
        shutil.copyfile(src, server.db)
        copy_s = time.monotonic() - t0
        expected = _expected_builders(n)
        first = _timed_start(server, expected, p.startup_timeout)
        t0 = time.monotonic()
        rc = server.terminate(grace=120.0)
        stop_s = time.monotonic() - t0
        beside = sorted(os.listdir(server.tmp))
        second = _timed_start(server, expected, p.startup_timeout)
    finally:
        server.stop()
    out: dict[str, Any] = {f"first_{k}": v for k, v in first.items() if not isinstance(v, str)}
    out["server_runq_wait_pct"] = max(first["server_runq_wait_pct"] or 0, second["server_runq_wait_pct"] or 0)
    out.update({f"restart_{k}": v for k, v in second.items() if not isinstance(v, str)})
    out.update({"events": n, "stop_s": stop_s, "stop_exit_status": rc, "copy_s": copy_s,
                "empty_listening_s": floor["listening_s"], "empty_api_correct_s": floor["api_correct_s"]})
    log(f"startup: files beside the journal after a clean stop: {beside}")
    return out


# -- idle connections ------------------------------------------------------------------------------


def idle(p: Params) -> dict[str, Any]:
    """RSS of the server with N subscribed, quiet WebSocket connections, per connection."""
    server = Server()
    n = p.idle_conns
    gen = Loadgen(server.port, ["--mode", "ws", "--conns", str(n), "--sub", SUBSCRIBE], max_time=300)
    server.start()
    try:
        # one request of each kind first, so lazily imported modules are in the baseline
        warm = Loadgen(server.port, ["--mode", "ws", "--conns", "10", "--sub", SUBSCRIBE], max_time=30)
        warm.start()
        warm.stop()
        time.sleep(0.5)
        before = server.rss()
        t0 = time.monotonic()
        c0 = server.cpu()
        got = gen.start(ready_timeout=240)
        connect_s = time.monotonic() - t0
        g1 = gen.cpu()
        c1 = server.cpu()
        time.sleep(2.0)
        after = server.rss()
        health = _get(server.url + "/health")
        return {
            "connections": got, "rss_before_mb": before / 2**20, "rss_after_mb": after / 2**20,
            "kb_per_connection": (after - before) / 1024 / max(1, got), "connect_s": connect_s,
            # over the connecting: the handshakes are the work here
            "server_cpu_pct": 100.0 * (c1 - c0) / connect_s if connect_s > 0 else None,
            "loadgen_cpu_pct": 100.0 * g1 / connect_s if g1 is not None and connect_s > 0 else None,
            "server_subscribers": sum((health.get("subscribers") or {}).values()),
        }
    finally:
        gen.stop()
        server.stop()


def _get(url: str) -> Any:
    return http_json(url)


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:  # noqa: S310 (127.0.0.1)
        total = 0.0
        for line in r.read().decode().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total


# -- slow subscribers ------------------------------------------------------------------------------


def slow(p: Params) -> dict[str, Any]:
    """10% of the subscribers never read (and have small receive buffers): the others' latency
    and the server's memory must not care."""
    subs = p.subs
    noread = int(subs * p.slow_fraction)
    server = Server()
    gen = Loadgen(server.port, ["--mode", "ws", "--conns", str(subs), "--noread", str(noread),
                                "--pub-rate", str(p.rate), "--pub-interval", str(p.interval), "--sub", SUBSCRIBE],
                  max_time=p.warmup + 3 * p.window + 120)
    server.start()
    try:
        gen.start()
        rss0 = server.rss()
        time.sleep(p.warmup)
        first = window(server.pid, gen, p.window)
        second = window(server.pid, gen, p.window)
        return {
            "loadgen_cpu_pct": second["loadgen_cpu_pct"], "server_runq_wait_pct": second["server_runq_wait_pct"],
            "readers": subs - noread, "non_readers": noread,
            "p50_ms": second["p50_ms"], "p99_ms": second["p99_ms"], "p99_first_window_ms": first["p99_ms"],
            "deliveries_per_s": second["rate"], "server_cpu_pct": second["server_cpu_pct"],
            "rss_start_mb": rss0 / 2**20, "rss_mid_mb": first["server_rss_mb"], "rss_end_mb": second["server_rss_mb"],
            "slow_ended": _metric(server.url, "firehose_slow_subscribers_total"),
        }
    finally:
        gen.stop()
        server.stop()


# -- curves ---------------------------------------------------------------------------------------


def scaling_point(subs: int) -> Callable[[Params], dict[str, Any]]:
    def run(p: Params) -> dict[str, Any]:
        return _fanout(p, "ws", subs, p.rate)

    return run


def load_point(rate: float) -> Callable[[Params], dict[str, Any]]:
    def run(p: Params) -> dict[str, Any]:
        return _fanout(p, "ws", p.subs, rate)

    return run


#: A curve point whose server was at least this busy (% of its core) is marked saturated.
SATURATED_PCT = 90.0


def curve_point(subs: int, rate: float, unbatched: bool) -> Callable[[Params], dict[str, Any]]:
    """One point of ``python -m bench curves``: ``subs`` WebSocket subscribers at ``rate`` ev/s,
    batched (one master, ``p.interval`` flush) or unbatched (one event per POST, 10 masters)."""

    def run(p: Params) -> dict[str, Any]:
        rep = _fanout(p, "ws", subs, rate, masters=p.unbatched_masters if unbatched else 0)
        rep["subs"] = subs
        rep["ev_rate"] = rate
        rep["saturated"] = 1 if rep["server_cpu_pct"] >= SATURATED_PCT else 0
        rep["loadgen_saturated"] = 1 if (rep.get("loadgen_cpu_pct") or 0) >= SATURATED_PCT else 0
        return rep

    return run


def curve_name(kind: str, batching: str, value: float) -> str:
    """``curve_subs_batched_1000``, ``curve_rate_unbatched_800``."""
    return f"curve_{kind}_{batching}_{int(value)}"


def curves(p: Params) -> list[tuple[str, Callable[[Params], dict[str, Any]]]]:
    """The points of both curves, both batchings: subscribers at ``p.rate``, events/s at
    ``p.subs`` (the point they share is measured once per batching, under the subs curve)."""
    out = []
    for batching in ("batched", "unbatched"):
        unb = batching == "unbatched"
        for n in p.curve_subs:
            out.append((curve_name("subs", batching, n), curve_point(n, p.rate, unb)))
        for r in p.curve_rates:
            if r == p.rate and p.subs in p.curve_subs:
                continue
            out.append((curve_name("rate", batching, r), curve_point(p.subs, r, unb)))
    return out
