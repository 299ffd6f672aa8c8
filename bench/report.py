"""The table of targets against measured values, and the plots (drawn by bench/plot.py with
matplotlib from the bench's own venv, bench/.venv-www, so the project venv never needs it)."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from bench.common import BENCH, RESULTS, log

BENCH_VENV_PY = os.path.join(BENCH, ".venv-www", "bin", "python")


def load(name: str) -> dict[str, Any]:
    with open(os.path.join(RESULTS, f"{name}.json")) as f:
        return dict(json.load(f))


def load_optional(name: str) -> dict[str, Any] | None:
    try:
        return load(name)
    except (OSError, ValueError):
        return None


def _s(res: dict[str, Any] | None, scen: str, key: str) -> dict[str, Any] | None:
    if not res:
        return None
    got = res.get("scenarios", {}).get(scen, {}).get("summary", {}).get(key)
    return got if got and got.get("median") is not None else None


def fmt(s: dict[str, Any] | None, unit: str = "", digits: int = 1) -> str:
    if not s:
        return "n/a"

    def f(v: float) -> str:
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"

    if s.get("n", 1) == 1 or s["min"] == s["max"]:
        return f"{f(s['median'])}{unit}"
    return f"{f(s['median'])}{unit} ({f(s['min'])}-{f(s['max'])})"


def verdict(s: dict[str, Any] | None, ok: Any) -> str:
    if not s:
        return "n/a"
    return "met" if ok(s["median"]) else "MISSED"


def rows(res: dict[str, Any], bb: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    r: list[tuple[str, str, str, str]] = []

    def add(what: str, target: str, s: dict[str, Any] | None, unit: str, ok: Any, digits: int = 1,
            src: dict[str, Any] | None = None) -> None:
        r.append((what, target, fmt(s, unit, digits), verdict(s, ok)))

    add("WS fan-out 1,000 subs x 100 ev/s: p99", "<= 50 ms", _s(res, "ws_fanout", "p99_ms"), " ms", lambda v: v <= 50)
    add("WS fan-out 1,000 x 100: server CPU", "<= 50% of a core", _s(res, "ws_fanout", "server_cpu_pct"), "%",
        lambda v: v <= 50)
    add("WS fan-out 1,000 x 100: deliveries/s", "100,000", _s(res, "ws_fanout", "rate"), "/s", lambda v: v >= 95000)
    add("WS capacity: CPU per delivery (saturated)", "<= 4 us", _s(res, "ws_capacity", "cpu_us_per_delivery"), " us",
        lambda v: v <= 4, 2)
    add("WS capacity: deliveries/s on one core", ">= 250,000", _s(res, "ws_capacity", "rate"), "/s",
        lambda v: v >= 250000)
    add("SSE 1,000 x 100: p99", "<= 50 ms", _s(res, "sse_fanout", "p99_ms"), " ms", lambda v: v <= 50)
    add("SSE 1,000 x 100: server CPU", "<= 50%", _s(res, "sse_fanout", "server_cpu_pct"), "%", lambda v: v <= 50)
    add("SSE capacity: CPU per delivery", "<= 4 us", _s(res, "sse_capacity", "cpu_us_per_delivery"), " us",
        lambda v: v <= 4, 2)
    add("long-poll 1,000 clients: polls/s per core", ">= 10,000", _s(res, "longpoll", "polls_per_core_s"), "/s",
        lambda v: v >= 10000)
    add("long-poll 1,000 x 40 ev/s: p99", "<= 100 ms", _s(res, "longpoll", "p99_ms"), " ms", lambda v: v <= 100)
    add("long-poll 1,000 x 40 ev/s: deliveries/s", "40,000", _s(res, "longpoll", "rate"), "/s", lambda v: v >= 38000)
    add("filtered (5% each) vs unfiltered, same deliveries: CPU ratio", "~1 (cost follows matches)",
        _s(res, "filtered", "cpu_ratio_filtered_vs_same_deliveries"), "x", lambda v: v <= 1.5, 2)
    add("filtered: cost per subscriber x event", "small", _s(res, "filtered", "filter_ns_per_subscriber_event"),
        " ns", lambda v: v <= 1000, 0)
    add("ingest, 4 masters x 100-event batches, FULL sync", ">= 20,000 ev/s", _s(res, "ingest", "events_per_s"),
        "/s", lambda v: v >= 20000)
    add("ingest, 1 master x 370-event batches (256 KiB)", ">= 20,000 ev/s",
        _s(res, "ingest_one_master", "events_per_s"), "/s", lambda v: v >= 20000)
    add("resume: catch up 1,000,000 events", ">= 100,000 ev/s", _s(res, "resume", "events_per_s"), "/s",
        lambda v: v >= 100000)
    add("idle: 10,000 WS connections, RSS each", "<= 10 KB", _s(res, "idle", "kb_per_connection"), " KB",
        lambda v: v <= 10)
    base = _s(res, "ws_fanout", "p99_ms")
    slow = _s(res, "slow", "p99_ms")
    add("slow: 10% never read, others' p99", f"unchanged (ws_fanout: {fmt(base, ' ms')})", slow, " ms",
        lambda v: base is not None and v <= max(base["max"] * 1.25, base["median"] + 10))
    add("slow: server RSS at end of run", "bounded", _s(res, "slow", "rss_end_mb"), " MB", lambda v: v <= 500)
    for key, label in (("scaling_100", "100"), ("ws_fanout", "1,000"), ("scaling_5000", "5,000")):
        s = _s(res, key, "rate")
        r.append((f"scaling: {label} subs x 100 ev/s", "a curve",
                  f"{fmt(s, '/s')}, p99 {fmt(_s(res, key, 'p99_ms'), ' ms')}, "
                  f"CPU {fmt(_s(res, key, 'server_cpu_pct'), '%')}", "-"))
    if bb:
        add("plugin: master CPU with / without plugin", "<= 1.10x", _s(bb, "plugin", "cpu_ratio"), "x",
            lambda v: v <= 1.10, 3)
        add("end to end: master -> plugin -> server -> WS p99", "<= 200 ms", _s(bb, "e2e", "p99_ms"), " ms",
            lambda v: v <= 200)
        add("Buildbot /ws: CPU per delivery", "(baseline)", _s(bb, "buildbot_ws", "cpu_us_per_delivery"), " us",
            lambda v: True, 2)
        add("firehose /ws, same load: CPU per delivery", "(ratio below)", _s(bb, "firehose_ws", "cpu_us_per_delivery"),
            " us", lambda v: True, 2)
        add("Buildbot /ws / firehose /ws, CPU per delivery", "ratio", _s(bb, "compare", "cpu_ratio"), "x",
            lambda v: True, 1)
    return r


def table(res: dict[str, Any], bb: dict[str, Any] | None = None) -> str:
    out = ["| what | target | measured: median (min-max) | |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(res, bb)]
    la = res.get("load_before")
    if la:
        out.append(f"\nload average at start {la[0]:.2f}, at end {res.get('load_after', [0])[0]:.2f}; "
                   f"{res.get('repeat')} runs per figure; suite took {res.get('seconds')} s")
    return "\n".join(out)


def plots(res: dict[str, Any], name: str = "suite") -> None:
    """Draw the PNGs with matplotlib from the bench venv; skipped (with a note) if it is missing."""
    py = BENCH_VENV_PY
    if not os.path.exists(py):
        import importlib.util
        import sys

        if importlib.util.find_spec("matplotlib") is None:
            log("no matplotlib: run `python -m bench buildbot` once (it makes bench/.venv-www) or "
                "`pip install -e .[bench]`; plots skipped")
            return
        py = sys.executable
    try:
        subprocess.run([py, os.path.join(BENCH, "plot.py"), os.path.join(RESULTS, f"{name}.json"),
                        RESULTS], check=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        log(f"plots failed: {exc!r}")
