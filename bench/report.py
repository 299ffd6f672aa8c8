"""The table of targets against measured values, and the plots (drawn by bench/plot.py with
matplotlib from the bench's own venv, bench/.venv-www, so the project venv never needs it; without
that venv, from bench/build/venv-tools, made once with only matplotlib and py-spy)."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from bench.common import BENCH, BUILD, RESULTS, log

BENCH_VENV_PY = os.path.join(BENCH, ".venv-www", "bin", "python")
TOOLS_VENV = os.path.join(BUILD, "venv-tools")
TOOLS = ["matplotlib", "py-spy"]


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


def _inverse(s: dict[str, Any] | None, k: float) -> dict[str, Any] | None:
    """The summary of k / x from the summary of x (min and max swap)."""
    if not s or not s["median"] or not s["min"] or not s["max"]:
        return None
    return {"median": k / s["median"], "min": k / s["max"], "max": k / s["min"], "n": s.get("n", 1)}


def verdict(s: dict[str, Any] | None, ok: Any) -> str:
    if not s:
        return "n/a"
    return "met" if ok(s["median"]) else "MISSED"


def against(s: dict[str, Any] | None, op: str, limit: float) -> str:
    """met / MISSED by N% (or by Nx) of a median against ``<= limit`` or ``>= limit``."""
    if not s:
        return "n/a"
    v = s["median"]
    if (v <= limit) if op == "<=" else (v >= limit):
        return "met"
    ratio = v / limit if op == "<=" else (limit / v if v > 0 else float("inf"))
    return f"MISSED by {ratio:.1f}x" if ratio >= 2 else f"MISSED by {100 * (ratio - 1):.0f}%"


Row = tuple[str, str, str, str, str]
#: "All delivered": at least this fraction of subscribers x events/s offered arrived in the window
#: (what was in flight at the window's two edges is the rest).
ALL_DELIVERED = 0.97


def rows(res: dict[str, Any], bb: dict[str, Any] | None) -> list[Row]:
    """Issue 13's targets first (with the issue's "today" figure), then the older rows of issue 6
    that still say something (batched fan-out, capacity, resume, slow subscribers, scaling)."""
    r: list[Row] = []

    def add(what: str, target: str, before: str, s: dict[str, Any] | None, unit: str, op: str, limit: float,
            digits: int = 1) -> None:
        r.append((what, target, before, fmt(s, unit, digits), against(s, op, limit)))

    def add_ok(what: str, target: str, before: str, s: dict[str, Any] | None, unit: str, ok: Any,
               digits: int = 1, shown: str | None = None) -> None:
        r.append((what, target, before, shown if shown is not None else fmt(s, unit, digits), verdict(s, ok)))

    def all_of(scen: str, offered: float, digits: int = 0) -> None:
        got = _s(res, scen, "rate")
        frac = _s(res, scen, "delivered_fraction")
        pub = _s(res, scen, "published_fraction")
        shown = fmt(got, "/s", digits)
        if frac:
            shown += f" ({100 * frac['median']:.1f}% of {offered:,.0f}"
            if pub and pub["median"] < ALL_DELIVERED:
                shown += f"; the publisher sent only {100 * pub['median']:.0f}% of its schedule"
            shown += ")"
        add_ok(f"{label[scen]}: deliveries/s", f"all {offered:,.0f}/s", before.get(scen, "-"), frac, "",
               lambda v: v >= ALL_DELIVERED, shown=shown)

    p = res.get("params", {})
    subs, rate = p.get("subs", 1000), p.get("rate", 100.0)
    hi, many = p.get("unbatched_high_rate", 300.0), p.get("unbatched_many_subs", 3000)
    label = {
        "ws_unbatched": f"{subs:,} WS subs x {rate:g} ev/s, one event per POST",
        "ws_unbatched_300": f"{subs:,} WS subs x {hi:g} ev/s, one event per POST",
        "ws_unbatched_3000": f"{many:,} WS subs x {rate:g} ev/s, one event per POST",
    }
    before = {"ws_unbatched": "~45k/s, saturated"}
    all_of("ws_unbatched", subs * rate)
    add(f"{label['ws_unbatched']}: server CPU", "<= 40%", "100%", _s(res, "ws_unbatched", "server_cpu_pct"),
        "%", "<=", 40)
    add(f"{label['ws_unbatched']}: p99", "<= 50 ms", "117 ms", _s(res, "ws_unbatched", "p99_ms"), " ms", "<=", 50)
    add_ok(f"{label['ws_unbatched']}: CPU per delivery", "-", "20 us",
           _s(res, "ws_unbatched", "cpu_us_per_delivery"), " us", lambda _v: True, 2)
    r[-1] = (*r[-1][:4], "-")
    all_of("ws_unbatched_300", subs * hi)
    add(f"{label['ws_unbatched_300']}: CPU per delivery", "<= 3 us", "-",
        _s(res, "ws_unbatched_300", "cpu_us_per_delivery"), " us", "<=", 3, 2)
    all_of("ws_unbatched_3000", many * rate)
    add(f"{label['ws_unbatched_3000']}: p99", "<= 100 ms", "-", _s(res, "ws_unbatched_3000", "p99_ms"), " ms",
        "<=", 100)
    add(f"SSE {subs:,} x {rate:g} (0.2 s batches): p99", "<= 50 ms", "62 ms", _s(res, "sse_fanout", "p99_ms"),
        " ms", "<=", 50)
    add(f"SSE {subs:,} x {rate:g}, one event per POST: p99", "<= 50 ms", "-", _s(res, "sse_unbatched", "p99_ms"),
        " ms", "<=", 50)
    add("long-poll 1,000 clients: polls/s per core", ">= 10,000", "3,345/s", _s(res, "longpoll", "polls_per_core_s"),
        "/s", ">=", 10000)
    add("long-poll 1,000 x 40 ev/s: p99", "<= 100 ms", "436 ms", _s(res, "longpoll", "p99_ms"), " ms", "<=", 100)
    add("filtered (1,000 subs each matching 5%) vs 50 unfiltered, same deliveries: CPU ratio", "<= 1.5x", "5.75x",
        _s(res, "filtered", "cpu_ratio_filtered_vs_same_deliveries"), "x", "<=", 1.5, 2)
    add("ingest, 4 masters x 100-event batches, journal FULL", ">= 25,000 ev/s", "11,968/s",
        _s(res, "ingest", "events_per_s"), "/s", ">=", 25000)
    add("ingest, single-event POSTs from 10 masters: requests/s", ">= 3,000/s", "-",
        _s(res, "ingest_single", "requests_per_s"), "/s", ">=", 3000)
    r.append(("ingest, single-event POSTs: server CPU per request (requests/s a whole core would answer)", "-", "-",
              f"{fmt(_s(res, 'ingest_single', 'cpu_us_per_request'), ' us')} "
              f"({fmt(_inverse(_s(res, 'ingest_single', 'cpu_us_per_request'), 1e6), '/s')})", "-"))
    ack50, ack99 = _s(res, "ingest_single", "pub_ack_p50_ms"), _s(res, "ingest_single", "pub_ack_p99_ms")
    r.append(("ingest, single-event POSTs: time to the 200, p50 / p99", "-", "-",
              f"{fmt(ack50, ' ms', 2)} / {fmt(ack99, ' ms', 2)}", "-"))
    if bb:
        add("plugin: master CPU with / without, 200 builds", "<= 1.05x", "1.15x", _s(bb, "plugin", "cpu_ratio"), "x",
            "<=", 1.05, 3)
    n = p.get("resume_events", 1_000_000)
    for when, word in (("first", "first start"), ("restart", "restart after a clean stop")):
        add(f"start-up, {n:,}-event journal, {word}: to listening", "<= 1 s", "9.8 s" if when == "first" else "-",
            _s(res, "startup", f"{when}_listening_s"), " s", "<=", 1.0, 2)
        wrong = _s(res, "startup", f"{when}_api_wrong_answers")
        other = _s(res, "startup", f"{when}_api_other_answers")
        warm = _s(res, "startup", f"{when}_api_warming_answers")
        correct = _s(res, "startup", f"{when}_api_correct_s")
        cpu = _s(res, "startup", f"{when}_cpu_s")
        shown = (f"{fmt(correct, ' s', 2)} ({fmt(cpu, ' s', 2)} of server CPU); before it {fmt(warm, '', 0)} "
                 f"warming_up, {fmt(wrong, '', 0)} wrong")
        if other and other["max"]:
            shown += f", {fmt(other, '', 0)} other"
        # any wrong (200 but not the journal's state) or unexpected answer in any run misses it
        clean = not (wrong and wrong["max"]) and not (other and other["max"])
        add_ok(f"start-up, {word}: to a correct `/api/builders`", "only correct or `warming_up` answers", "-",
               correct, "", lambda _v, clean=clean: clean, shown=shown)
    floor = _s(res, "startup", "empty_listening_s")
    if floor:
        r.append(("start-up, empty journal (interpreter, imports, listen): to listening", "(the floor)", "-",
                  fmt(floor, " s", 2), "-"))
    add("idle WebSocket subscriber: server RSS each", "<= 8 KB", "10.0 KB", _s(res, "idle", "kb_per_connection"),
        " KB", "<=", 8, 2)
    if bb:
        add("end to end, real master -> plugin -> server -> WS subscriber: p99", "<= 60 ms", "112 ms",
            _s(bb, "e2e", "p99_ms"), " ms", "<=", 60)
    # -- issue 6's rows that still matter --
    add(f"WS fan-out {subs:,} x {rate:g} (0.2 s batches): p99", "<= 50 ms", "43 ms", _s(res, "ws_fanout", "p99_ms"),
        " ms", "<=", 50)
    add(f"WS fan-out {subs:,} x {rate:g} (0.2 s batches): server CPU", "<= 50%", "15%",
        _s(res, "ws_fanout", "server_cpu_pct"), "%", "<=", 50)
    add(f"WS fan-out {subs:,} x {rate:g} (0.2 s batches): deliveries/s", f"{subs * rate:,.0f}", "100,326/s",
        _s(res, "ws_fanout", "rate"), "/s", ">=", 0.95 * subs * rate)
    add("WS capacity: CPU per delivery (saturated)", "<= 4 us", "0.75 us", _s(res, "ws_capacity", "cpu_us_per_delivery"),
        " us", "<=", 4, 2)
    add("WS capacity: deliveries/s on one core", ">= 250,000", "1,023,859/s", _s(res, "ws_capacity", "rate"), "/s",
        ">=", 250000)
    add("SSE 1,000 x 100: server CPU", "<= 50%", "25%", _s(res, "sse_fanout", "server_cpu_pct"), "%", "<=", 50)
    add("SSE capacity: CPU per delivery", "<= 4 us", "1.08 us", _s(res, "sse_capacity", "cpu_us_per_delivery"), " us",
        "<=", 4, 2)
    add("long-poll 1,000 x 40 ev/s: deliveries/s", "40,000", "40,998/s", _s(res, "longpoll", "rate"), "/s", ">=", 38000)
    add("filtered: cost per subscriber x event", "small", "-", _s(res, "filtered", "filter_ns_per_subscriber_event"),
        " ns", "<=", 1000, 0)
    add("ingest, 1 master x 370-event batches (256 KiB)", ">= 20,000 ev/s", "11,716/s",
        _s(res, "ingest_one_master", "events_per_s"), "/s", ">=", 20000)
    add("resume: catch up 1,000,000 events", ">= 100,000 ev/s", "157,077/s", _s(res, "resume", "events_per_s"), "/s",
        ">=", 100000)
    base = _s(res, "ws_fanout", "p99_ms")
    slow = _s(res, "slow", "p99_ms")
    add_ok("slow: 10% never read, others' p99", f"unchanged (ws_fanout: {fmt(base, ' ms')})", "36.9 ms", slow, " ms",
           lambda v: base is not None and v <= max(base["max"] * 1.25, base["median"] + 10))
    add("slow: server RSS at end of run", "bounded", "74.4 MB", _s(res, "slow", "rss_end_mb"), " MB", "<=", 500)
    for key, lab in (("scaling_100", "100"), ("ws_fanout", "1,000"), ("scaling_5000", "5,000")):
        s = _s(res, key, "rate")
        if s:
            r.append((f"scaling: {lab} subs x 100 ev/s (0.2 s batches)", "a curve", "-",
                      f"{fmt(s, '/s')}, p99 {fmt(_s(res, key, 'p99_ms'), ' ms')}, "
                      f"CPU {fmt(_s(res, key, 'server_cpu_pct'), '%')}", "-"))
    if bb:
        add_ok("Buildbot /ws: CPU per delivery", "(baseline)", "-", _s(bb, "buildbot_ws", "cpu_us_per_delivery"),
               " us", lambda v: True, 2)
        add_ok("firehose /ws, same load: CPU per delivery", "(ratio below)", "-",
               _s(bb, "firehose_ws", "cpu_us_per_delivery"), " us", lambda v: True, 2)
        add_ok("Buildbot /ws / firehose /ws, CPU per delivery", "ratio", "-", _s(bb, "compare", "cpu_ratio"), "x",
               lambda v: True, 1)
    # rows of scenarios this run did not include say nothing: leave them out
    return [row for row in r if not row[3].startswith("n/a")]


def scenario_rows(res: dict[str, Any]) -> list[str]:
    """One line per scenario run: what it delivered, and both processes' CPU (the server's and
    the load generator's own: a generator near 100% would mean the client was the limit)."""
    out = ["| scenario | deliveries/s | p50 / p99 | server CPU | server waiting for its core | load generator CPU | "
           "events per POST | server RSS |", "|---|---|---|---|---|---|---|---|"]
    for scen, body in res.get("scenarios", {}).items():
        if "error" in body:
            out.append(f"| {scen} | FAILED: {body['error'][:80]} | | | | | | |")
            continue

        def g(key: str, unit: str = "", digits: int = 1, scen: str = scen) -> str:
            return fmt(_s(res, scen, key), unit, digits)

        if scen == "startup":
            out.append(f"| startup | first start: listening {g('first_listening_s', ' s', 2)}, correct /api "
                       f"{g('first_api_correct_s', ' s', 2)}; restart: {g('restart_listening_s', ' s', 2)}, "
                       f"{g('restart_api_correct_s', ' s', 2)}; empty journal: {g('empty_listening_s', ' s', 2)} | | | | | | "
                       f"{g('restart_rss_mb', ' MB')} |")
            continue
        if scen == "filtered":
            rate, lat = g("filtered_rate", "/s", 0), f"{g('filtered_p50_ms')} / {g('filtered_p99_ms', ' ms')}"
            cpu, gen, ev, rss = (g("filtered_server_cpu_pct", "%"), g("filtered_loadgen_cpu_pct", "%"),
                                 g("filtered_ev_per_post"), g("filtered_server_rss_mb", " MB"))
            wait = g("filtered_server_runq_wait_pct", "%")
        else:
            if _s(res, scen, "requests_per_s"):
                rate = f"{g('requests_per_s', ' req/s', 0)}, {g('events_per_s', ' ev/s', 0)} (ingest)"
            elif _s(res, scen, "rate") and _s(res, scen, "rate")["median"] > 0:
                rate = g("rate", "/s", 0)
            elif _s(res, scen, "deliveries_per_s"):
                rate = g("deliveries_per_s", "/s", 0)
            else:
                rate = g("events_per_s", " ev/s", 0)
            lat = f"{g('p50_ms')} / {g('p99_ms', ' ms')}"
            if _s(res, scen, "requests_per_s"):
                lat = f"{g('pub_ack_p50_ms', '', 2)} / {g('pub_ack_p99_ms', ' ms', 2)} to the 200"
            cpu, gen, ev, rss = (g("server_cpu_pct", "%"), g("loadgen_cpu_pct", "%"), g("ev_per_post"),
                                 g("server_rss_mb", " MB"))
            wait = g("server_runq_wait_pct", "%")
        out.append(f"| {scen} | {rate} | {lat} | {cpu} | {wait} | {gen} | {ev} | {rss} |")
    return out


def table(res: dict[str, Any], bb: dict[str, Any] | None = None) -> str:
    out = ["| what | target | before (issue 13) | measured: median (min-max) | |", "|---|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows(res, bb)]
    out += ["", *scenario_rows(res)]
    out.append(_footer(res))
    return "\n".join(out)


#: A run whose server spent more than this share of the window runnable but waiting for its core
#: (another process had it) measured the machine, not the server.
CONTENDED_PCT = 20.0


def contended(res: dict[str, Any]) -> list[str]:
    """The scenarios with at least one run whose server waited > CONTENDED_PCT for its core."""
    out = []
    for scen, body in res.get("scenarios", {}).items():
        for key in ("server_runq_wait_pct", "filtered_server_runq_wait_pct", "loadgen_runq_wait_pct",
                    "filtered_loadgen_runq_wait_pct"):
            s = (body.get("summary") or {}).get(key)
            if s and s.get("max") is not None and s["max"] > CONTENDED_PCT:
                out.append(scen)
                break
    return out


def _footer(res: dict[str, Any]) -> str:
    la = res.get("load_before")
    if not la:
        return ""
    out = (f"\nload average at start {la[0]:.2f}, at end {res.get('load_after', [0])[0]:.2f}; "
           f"{res.get('repeat')} runs per figure; took {res.get('seconds')} s")
    press = []
    for k in ("cpu", "io"):
        vals = [b["summary"][f"machine_{k}_pressure_pct"]["median"] for b in res.get("scenarios", {}).values()
                if (b.get("summary") or {}).get(f"machine_{k}_pressure_pct", {}).get("median") is not None]
        if vals:
            press.append(f"{k} {sum(vals) / len(vals):.0f}%")
    if press:
        out += ("\nmachine pressure (share of each window some task waited for it, mean over scenarios): "
                + ", ".join(press))
    bad = contended(res)
    if bad:
        out += (f"\nCONTENDED (the server or the load generator waited > {CONTENDED_PCT:.0f}% of a window for its "
                f"core, which another process had: these measured the machine, rerun them on a quiet one): "
                f"{', '.join(bad)}")
    return out


def curve_table(res: dict[str, Any]) -> str:
    """The points of ``python -m bench curves``, one line each; ``SATURATED`` where the server
    used >= 90% of its core (the load generator's CPU beside it)."""
    out = ["| curve | batching | subscribers | ev/s | offered/s | delivered/s | p50 / p99 | server CPU | "
           "server waiting for its core | load generator CPU | |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for scen in res.get("scenarios", {}):
        if not scen.startswith("curve_"):
            continue
        _, kind, batching, _v = scen.split("_", 3)
        if "error" in res["scenarios"][scen]:
            out.append(f"| {kind} | {batching} | FAILED: {res['scenarios'][scen]['error'][:80]} | | | | | | | | |")
            continue

        def g(key: str, unit: str = "", digits: int = 1, scen: str = scen) -> str:
            return fmt(_s(res, scen, key), unit, digits)

        sat = _s(res, scen, "saturated")
        gsat = _s(res, scen, "loadgen_saturated")
        mark = "SATURATED" if sat and sat["max"] else ""
        if gsat and gsat["max"]:
            mark += " (client busy)"
        if scen in contended(res):
            mark += " CONTENDED"
        out.append(f"| {kind} | {batching} | {g('subs', '', 0)} | {g('ev_rate', '', 0)} | "
                   f"{g('offered_deliveries', '', 0)} | {g('rate', '', 0)} | {g('p50_ms')} / {g('p99_ms', ' ms')} | "
                   f"{g('server_cpu_pct', '%')} | {g('server_runq_wait_pct', '%')} | {g('loadgen_cpu_pct', '%')} | "
                   f"{mark} |")
    out.append(_footer(res))
    return "\n".join(out)


def tools_venv() -> str | None:
    """bench/build/venv-tools (matplotlib and py-spy only, git-ignored), made here once (~30 s)
    for a machine without bench/.venv-www; its bin/ directory, or None (and a note)."""
    import sys

    bindir = os.path.join(TOOLS_VENV, "bin")
    marker = os.path.join(TOOLS_VENV, ".bench-ready")
    if os.path.exists(marker):
        return bindir
    log(f"making bench/build/venv-tools ({', '.join(TOOLS)}), once")
    try:
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", TOOLS_VENV], check=True, timeout=300)
        subprocess.run([os.path.join(bindir, "python"), "-m", "pip", "install", "-q", *TOOLS], check=True,
                       timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        log(f"could not make bench/build/venv-tools ({exc!r})")
        return None
    with open(marker, "w") as f:
        f.write(" ".join(TOOLS) + "\n")
    return bindir


def plot_python() -> str | None:
    """A Python with matplotlib: bench/.venv-www's, this one, or bench/build/venv-tools'.  None
    (and a note: the plots are skipped) if none can be had."""
    import importlib.util
    import sys

    if os.path.exists(BENCH_VENV_PY):
        return BENCH_VENV_PY
    if importlib.util.find_spec("matplotlib") is not None:
        return sys.executable
    bindir = tools_venv()
    if bindir is None:
        log("no matplotlib: plots skipped")
        return None
    return os.path.join(bindir, "python")


def plots(res: dict[str, Any], name: str = "suite") -> None:
    """Draw the PNGs with matplotlib (see :func:`plot_python`); skipped with a note without it."""
    py = plot_python()
    if py is None:
        return
    try:
        subprocess.run([py, os.path.join(BENCH, "plot.py"), os.path.join(RESULTS, f"{name}.json"),
                        RESULTS], check=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        log(f"plots failed: {exc!r}")
