"""``python -m bench``: run the benchmark suite, write bench/results/<name>.json and PNG plots,
print the table of targets against measured values.

    .venv/bin/python -m bench                 # the default suite (~9 minutes; issue 13's rows too)
    .venv/bin/python -m bench --smoke         # seconds: proves the bench runs (tests use it)
    .venv/bin/python -m bench --only ws_fanout,ingest --repeat 5
    .venv/bin/python -m bench --only ws_unbatched,ws_unbatched_300,ingest_single --repeat 1 --name baseline13
    .venv/bin/python -m bench curves --curve-repeat 3   # scaling curves (~5 min at 1 run a point, ~12 at 3)
    .venv/bin/python -m bench buildbot        # plugin overhead, end to end, Buildbot's own /ws
    .venv/bin/python -m bench profile         # py-spy flame graphs of the hot paths
    .venv/bin/python -m bench profile --only ws_unbatched,ingest_single
    .venv/bin/python -m bench redis           # several nodes on one Redis stream vs SQLite
    .venv/bin/python -m bench table --name baseline13   # the tables again from a results file

Each figure is the median of ``--repeat`` runs (default 3) with min and max.  Every run records
the server's CPU (``server_cpu_pct``) and the load generator's own (``loadgen_cpu_pct``,
utime+stime of fhload from /proc over the same window): the second table of the output has both
for every scenario, so a figure whose generator was near 100% of its core says the client, not
the server, was the limit.  Each window also records how long the server and the generator were
runnable but waiting for their cores (``*_runq_wait_pct``, /proc/<pid>/task/*/schedstat) and the
machine's CPU and I/O pressure (/proc/pressure); scenarios where either process waited more than
20% of a window are listed as CONTENDED under the tables: on a shared machine they measured the
machine, and should be rerun when it is quiet (CPU per delivery or per request holds up best).

Scenarios (``--only``; the default suite runs all of them):

- batched publishing, one master flushing every 0.2 s (100 ev/s arrive as 20-event POSTs):
  ``ws_fanout`` (1,000 WS subscribers x 100 ev/s), ``ws_capacity`` (1,000 ev/s offered),
  ``sse_fanout``, ``sse_capacity``, ``longpoll`` (40 ev/s), ``filtered``, ``slow``,
  ``scaling_100``, ``scaling_5000``, ``load_50``, ``load_200``, ``load_400``;
- unbatched publishing, ONE event per POST from 10 masters (one request in flight each,
  keep-alive; ``fhload --pub-single 1``): ``ws_unbatched`` (1,000 x 100 ev/s),
  ``ws_unbatched_300`` (1,000 x 300), ``ws_unbatched_3000`` (3,000 x 100), ``sse_unbatched``
  (1,000 SSE x 100);
- ingest: ``ingest`` (4 masters x 100-event batches), ``ingest_one_master`` (370-event
  batches), ``ingest_single`` (10 masters, one event per POST as fast as the server answers:
  requests/s, p50/p99 from POST to its 200);
- ``idle`` (10,000 quiet WebSocket connections: RSS each), ``resume`` (one subscriber replays a
  1,000,000-event journal), ``startup`` (a server on a copy of a 1,000,000-event journal: seconds
  from process start to listening and to the first correct ``/api/builders`` answer, for the
  first start and for a restart after a clean SIGTERM stop; a 503 ``warming_up`` answer in
  between is counted, a wrong 200 misses the row).  The journals are generated once into
  bench/build/ (~30 s each, ~850 MB; git-ignored).

``curves``: deliveries/s and p99 against subscribers (100, 300, 1,000, 3,000, 10,000 at 100 ev/s)
and against events/s (50, 100, 200, 400, 800 at 1,000 subscribers), batched and unbatched;
``--curve-repeat N`` runs per point; results in bench/results/curves.json, plots
bench/results/scaling_subs.png and scaling_rate.png (points whose server used >= 90% of its
core are circled: saturated).  Single points: ``--only curve_subs_unbatched_3000,...``.

The server is ``firehose serve`` from this checkout (or ``FIREHOSE_BENCH_SRC=/path``) pinned to
core 0, the load generator (bench/fhload.c, compiled into bench/build/) to core 1.  Plots need
matplotlib and profiles py-spy: bench/.venv-www's (``python -m bench buildbot`` makes it) or,
without it, bench/build/venv-tools (made on first use: matplotlib and py-spy only).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from bench import scenarios as sc
from bench.common import RESULTS, Server, compile_loadgen, load_average, log, machine, summarize

Scenario = Callable[[sc.Params], dict[str, Any]]
#: Scenarios that start their own servers (memory, start-up): a new server for every run.
FRESH_SERVER = {"idle", "slow", "startup"}


def suite(p: sc.Params) -> list[tuple[str, Scenario]]:
    out: list[tuple[str, Scenario]] = [
        ("ws_fanout", sc.ws_fanout),
        ("ws_capacity", sc.ws_capacity),
        ("ws_unbatched", sc.ws_unbatched),
        ("ws_unbatched_300", sc.ws_unbatched_300),
        ("ws_unbatched_3000", sc.ws_unbatched_3000),
        ("sse_fanout", sc.sse_fanout),
        ("sse_unbatched", sc.sse_unbatched),
        ("sse_capacity", sc.sse_capacity),
        ("longpoll", sc.longpoll),
        ("filtered", sc.filtered),
        ("ingest", sc.ingest),
        ("ingest_one_master", sc.ingest_one_master),
        ("ingest_single", sc.ingest_single),
        ("idle", sc.idle),
        ("slow", sc.slow),
        ("startup", sc.startup),
    ]
    for n in p.scaling:
        if n != p.subs:
            out.append((f"scaling_{n}", sc.scaling_point(n)))
    for r in p.load_rates:
        if r != p.rate:
            out.append((f"load_{int(r)}", sc.load_point(r)))
    return out


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k in runs[0] if isinstance(runs[0][k], int | float) and not isinstance(runs[0][k], bool)]
    return {k: summarize([r.get(k) for r in runs]) for k in keys}


def run_suite(p: sc.Params, repeat: int, only: set[str] | None, name: str, curve_repeat: int,
              idle_repeat: int = 1, todo: list[tuple[str, Scenario]] | None = None) -> dict[str, Any]:
    """Run ``todo`` (default: the suite and resume), write bench/results/<name>.json."""
    compile_loadgen()
    started = time.time()
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "machine": machine(), "load_before": load_average(), "params": p.__dict__.copy(),
        "repeat": repeat, "scenarios": {},
    }
    if todo is None:
        todo = suite(p)
        if only is None or "resume" in only:
            todo.append(("resume", lambda _: {}))  # placeholder: resume repeats on one server
    unknown = (only or set()) - {scen for scen, _ in todo}
    if unknown:
        raise SystemExit(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(s for s, _ in todo)}")
    for scen, fn in todo:
        if only is not None and scen not in only:
            continue
        n = curve_repeat if scen.startswith(("load_", "scaling_5000", "curve_")) else repeat
        if scen == "idle":
            n = min(repeat, idle_repeat)  # 10,000 handshakes take a while: see --idle-repeat
        log(f"{scen}: {n} run(s), load average {load_average()[0]:.2f}")
        t0 = time.monotonic()
        try:
            if scen == "resume":
                runs = sc.resume(p, repeats=n)
            elif scen in FRESH_SERVER:
                runs = [fn(p) for _ in range(n)]
            else:
                # one server for the repeats of a scenario: fresh connections and publisher each run
                sc.SHARED["server"] = Server().start()
                try:
                    runs = [fn(p) for _ in range(n)]
                finally:
                    server, sc.SHARED["server"] = sc.SHARED["server"], None
                    server.stop()
        except Exception as exc:  # noqa: BLE001 - one broken scenario must not lose the others
            log(f"{scen} FAILED: {exc!r}")
            result["scenarios"][scen] = {"error": repr(exc)}
            continue
        result["scenarios"][scen] = {"runs": runs, "summary": aggregate(runs),
                                     "seconds": round(time.monotonic() - t0, 1)}
        log(f"{scen}: done in {time.monotonic() - t0:.0f}s")
    result["load_after"] = load_average()
    result["seconds"] = round(time.time() - started, 1)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    log(f"results: {path}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", default="suite",
                    choices=["suite", "curves", "buildbot", "profile", "table", "plots", "redis"])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one run each: seconds")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--curve-repeat", type=int, default=1,
                    help="runs per point of the curves (`curves`, and the suite's load_*/scaling_5000)")
    ap.add_argument("--idle-repeat", type=int, default=1, help="runs of the 10,000-connection scenario")
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--window", type=float, help="seconds of each measurement window")
    ap.add_argument("--name", help="results file name (default: suite, smoke, curves, buildbot)")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    # SIGTERM (a timeout, a Ctrl-C elsewhere) unwinds normally, so every server and load
    # generator started here is stopped by the finally blocks that started it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = set(args.only.split(",")) if args.only else None

    if args.command == "buildbot":
        from bench import buildbot_bench

        return buildbot_bench.main(args.repeat, args.name or "buildbot", smoke=args.smoke)
    if args.command == "redis":
        from bench import redis_bench

        return redis_bench.main(args.repeat, args.name or "redis", smoke=args.smoke, only=only)
    if args.command == "profile":
        from bench import profile

        return profile.main(sorted(only) if only else None)
    if args.command in ("table", "plots"):
        from bench import report

        res = report.load(args.name or "suite")
        if args.command == "table" and any(k.startswith("curve_") for k in res.get("scenarios", {})):
            print(report.curve_table(res))
        elif args.command == "table":
            print(report.table(res, report.load_optional("buildbot")))
        else:
            report.plots(res, args.name or "suite")
        return 0
    if args.command == "curves":
        from bench import report

        p = sc.Params.smoke() if args.smoke else sc.Params()
        if args.window:
            p.window = args.window
        name = args.name or ("curves-smoke" if args.smoke else "curves")
        res = run_suite(p, 1, only, name, 1 if args.smoke else args.curve_repeat, todo=sc.curves(p))
        print(report.curve_table(res))
        if not args.no_plots and not args.smoke:
            report.plots(res, name)
        return 0

    p = sc.Params.smoke() if args.smoke else sc.Params()
    if args.window:
        p.window = args.window
    repeat = 1 if args.smoke else args.repeat
    name = args.name or ("smoke" if args.smoke else "suite")
    res = run_suite(p, repeat, only, name, 1 if args.smoke else args.curve_repeat, args.idle_repeat)
    from bench import report

    print(report.table(res, report.load_optional("buildbot")))
    if not args.no_plots and not args.smoke:
        report.plots(res, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
