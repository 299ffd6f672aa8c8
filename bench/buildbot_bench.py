"""``python -m bench buildbot``: the figures that need a real Buildbot master.

* ``plugin``: an in-process master (LocalWorker) runs ``--builds`` builds without and with the
  FirehoseReporter (posting to a real server on the other core); master CPU with / without.
* ``e2e``: in the runs with the plugin, a WebSocket subscriber measures master -> plugin ->
  server -> subscriber latency from each event's ``time`` (the master's clock when the plugin
  took the message; same machine, same clock).
* ``buildbot_ws`` / ``firehose_ws``: the same build events to the same subscribers through
  Buildbot's own ``/ws`` (buildbot-www, in bench/.venv-www) and through firehose's ``/ws``, with
  the same C client: CPU per delivery, p99, memory per subscriber.

The bench venv (bench/.venv-www: buildbot + buildbot-www + matplotlib + py-spy) is created on
first use; the project venv never gets buildbot-www.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.common import (
    BENCH,
    CLIENT_CORE,
    RESULTS,
    SERVER_CORE,
    Loadgen,
    Server,
    compile_loadgen,
    cpu_seconds,
    free_port,
    kill,
    load_average,
    log,
    machine,
    python,
    raise_nofile,
    rss_bytes,
    summarize,
)

VENV = os.path.join(BENCH, ".venv-www")
VENV_PY = os.path.join(VENV, "bin", "python")
PACKAGES = ["buildbot==4.3.0", "buildbot-www==4.3.0", "buildbot-worker==4.3.0", "matplotlib", "py-spy"]


def ensure_venv() -> str:
    """Create bench/.venv-www once (about a minute); reuse it afterwards."""
    marker = os.path.join(VENV, ".bench-ready")
    if os.path.exists(marker):
        return VENV_PY
    log("creating bench/.venv-www (buildbot-www, matplotlib, py-spy): once, about a minute")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", VENV], check=True, timeout=300)
    subprocess.run([VENV_PY, "-m", "pip", "install", "-q", *PACKAGES], check=True, timeout=900)
    with open(marker, "w") as f:
        f.write(" ".join(PACKAGES) + "\n")
    return VENV_PY


# -- plugin overhead and end to end ---------------------------------------------------------------


def _master_run(builds: int, url: str | None, flush: float | None, timeout: float = 400) -> dict[str, Any]:
    cmd = ["taskset", "-c", CLIENT_CORE, python(), os.path.join(BENCH, "bb_plugin_master.py"),
           "--builds", str(builds)]
    if flush is not None:
        cmd += ["--flush-interval", str(flush)]
    if url:
        cmd += ["--url", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"master run failed: {proc.stderr[-2000:]}")
    out = dict(json.loads(lines[-1]))
    if "error" in out:
        raise RuntimeError(f"master run failed: {out['error']}")
    return out


def plugin_pair(builds: int, flush: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One run without the plugin, one with it (and a WebSocket subscriber timing every event).

    :param flush: the plugin's ``flush_interval``; ``None``: its default.
    """
    without = _master_run(builds, None, flush)
    server = Server()
    gen = Loadgen(server.port, ["--mode", "ws", "--conns", "1", "--ts-key", "time", "--sub", '{"cmd":"subscribe"}'],
                  max_time=600)
    server.start()
    try:
        gen.start()
        gen.mark()
        c0 = server.cpu()
        with_plugin = _master_run(builds, server.url, flush)
        time.sleep(0.5)
        e2e = gen.report()
        with_plugin["server_cpu_s"] = server.cpu() - c0
    finally:
        gen.stop()
        server.stop()
    with_plugin.update(e2e_p50_ms=e2e["p50_ms"], e2e_p99_ms=e2e["p99_ms"], e2e_max_ms=e2e["max_ms"],
                       e2e_events=e2e["deliveries"])
    return without, with_plugin


def _py_spy() -> str:
    for candidate in (os.path.join(VENV, "bin", "py-spy"), os.path.join(os.path.dirname(python()), "py-spy")):
        if os.path.exists(candidate):
            return candidate
    found = shutil.which("py-spy")
    if not found:
        raise RuntimeError("py-spy not found (python -m bench buildbot installs it in bench/.venv-www)")
    return found


def _in_plugin(frame: str) -> bool:
    # The plugin's own code and what it calls in firehose (schema, codec); its socket's writes
    # run from the reactor without a plugin frame, and the bench master has no other socket.
    return "buildbot_plugin/" in frame or "/firehose/" in frame or frame.startswith("FileDescriptor.doWrite ")


def _plugin_part(frames: list[str]) -> list[str]:
    """The frames of a sample that can be the plugin's: the master's own mq delivery runs
    inside the plugin's ``produce`` wrapper (it calls the original), and is not the plugin's."""
    for i in range(len(frames) - 1, 0, -1):
        if "_install_hook.<locals>.produce" in frames[i - 1] and not _in_plugin(frames[i]):
            return frames[i:]
    return frames


def plugin_share(builds: int, flush: float | None = None, rate: int = 200) -> dict[str, Any]:
    """One run with the plugin under ``py-spy record --gil``: the share of the master's Python
    samples (threads holding the GIL) that are in the plugin, and where.

    A ratio of CPU totals needs two runs and moves by 10-20 % on a shared machine; a share of
    one run's samples does not (whatever slows the master slows the plugin alike).  It slightly
    overstates the plugin (the master's C work without the GIL, such as SQLite, is not sampled),
    so ``1 / (1 - share)`` is an upper estimate of the with / without ratio.
    """
    server = Server()
    raw = tempfile.NamedTemporaryFile(prefix="bbshare-", suffix=".txt", delete=False).name
    server.start()
    try:
        cmd = [_py_spy(), "record", "--gil", "-r", str(rate), "-f", "raw", "-o", raw, "--",
               "taskset", "-c", CLIENT_CORE, python(), os.path.join(BENCH, "bb_plugin_master.py"),
               "--builds", str(builds), "--url", server.url]
        if flush is not None:
            cmd += ["--flush-interval", str(flush)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            raise RuntimeError(f"profiled master run failed: {proc.stderr[-2000:]}")
        out = dict(json.loads(lines[-1]))
        total = plugin = 0
        where: dict[str, int] = {}
        with open(raw) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if "ReactorBase.run" not in stack and not stack.startswith("Thread"):
                    continue  # imports and set-up before the reactor runs
                n = int(count)
                total += n
                frames = _plugin_part(stack.split(";"))
                first = next((fr for fr in frames if _in_plugin(fr)), None)
                if first is not None:
                    plugin += n
                    name = first.split(" (")[0]
                    where[name] = where.get(name, 0) + n
    finally:
        server.stop()
        os.unlink(raw)
    share = plugin / total if total else 0.0
    out.update(samples=total, plugin_samples=plugin, share=share, est_ratio=1 / (1 - share) if share < 1 else None,
               plugin_us_per_event=out["cpu_s"] * share * 1e6 / max(1, out.get("events", 1)),
               where=sorted(where.items(), key=lambda kv: -kv[1])[:8])
    return out


# -- Buildbot's /ws against firehose's /ws ---------------------------------------------------------


def _bb_ws_run(subs: int, rate: float, interval: float, warmup: float, window_s: float) -> dict[str, Any]:
    port = free_port()
    basedir = tempfile.mkdtemp(prefix="bbws-bench-")
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, VENV_PY, os.path.join(BENCH, "bb_ws_master.py"), "--port", str(port),
         "--rate", str(rate), "--interval", str(interval), "--max-time", "300", "--basedir", basedir],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        preexec_fn=raise_nofile,
    )
    gen = None
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded by the master's own --max-time
        if not line.startswith("READY"):
            raise RuntimeError("Buildbot master did not start")
        time.sleep(1.0)
        rss0 = rss_bytes(proc.pid)
        gen = Loadgen(port, ["--mode", "ws", "--conns", str(subs),
                             "--sub", '{"cmd":"startConsuming","path":"builds/*/*","_id":1}'],
                      max_time=warmup + window_s + 120)
        gen.start(ready_timeout=180)
        rss1 = rss_bytes(proc.pid)
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(warmup)
        c0 = cpu_seconds(proc.pid)
        gen.mark()
        t0 = time.monotonic()
        time.sleep(window_s)
        rep = gen.report()
        el = time.monotonic() - t0
        c1 = cpu_seconds(proc.pid)
    finally:
        if gen is not None:
            gen.stop()
        kill(proc)
        shutil.rmtree(basedir, ignore_errors=True)
    return _ws_figures(rep, c1 - c0, el, rss0, rss1, subs, rate)


def _fh_ws_run(subs: int, rate: float, interval: float, warmup: float, window_s: float) -> dict[str, Any]:
    server = Server()
    gen = Loadgen(server.port, ["--mode", "ws", "--conns", str(subs), "--pub-rate", str(rate),
                                "--pub-interval", str(interval), "--sub", '{"cmd":"subscribe"}'],
                  max_time=warmup + window_s + 120)
    server.start()
    try:
        time.sleep(1.0)
        rss0 = server.rss()
        gen.start(ready_timeout=180)
        rss1 = server.rss()  # before the publisher's first batch (it waits 0.5 s): like Buildbot's
        time.sleep(warmup)
        c0 = server.cpu()
        gen.mark()
        t0 = time.monotonic()
        time.sleep(window_s)
        rep = gen.report()
        el = time.monotonic() - t0
        c1 = server.cpu()
    finally:
        gen.stop()
        server.stop()
    return _ws_figures(rep, c1 - c0, el, rss0, rss1, subs, rate)


def _ws_figures(rep: dict[str, Any], cpu_s: float, el: float, rss0: int, rss1: int, subs: int,
                rate: float) -> dict[str, Any]:
    return {
        "events_per_s": rate, "subscribers": subs, "deliveries_per_s": rep["rate"],
        "offered_deliveries_per_s": rate * subs, "p50_ms": rep["p50_ms"], "p99_ms": rep["p99_ms"],
        "server_cpu_pct": 100 * cpu_s / el,
        "cpu_us_per_delivery": cpu_s * 1e6 / rep["deliveries"] if rep["deliveries"] else None,
        "kb_per_subscriber": (rss1 - rss0) / 1024 / subs, "errors": rep["errors"],
    }


# -- the command -----------------------------------------------------------------------------------


#: What ``main`` can run (``--only``): Buildbot's /ws vs ours, the plugin pairs (overhead and
#: end to end), the end to end run with the former flush_interval, the py-spy share.
PARTS = ("ws", "plugin", "e2e_flush50", "share")


def main(repeat: int = 3, name: str = "buildbot", smoke: bool = False, only: set[str] | None = None,
         builds: int | None = None) -> int:
    parts = set(PARTS) if only is None else only
    if "ws" in parts:
        ensure_venv()  # buildbot-www for Buildbot's own /ws; the plugin runs use the project venv
    compile_loadgen()
    builds = builds or (10 if smoke else 200)
    subs = 50 if smoke else 1000
    warmup, window_s = (0.5, 1.0) if smoke else (2.0, 4.0)
    n = 1 if smoke else repeat
    res: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(),
                           "load_before": load_average(), "repeat": n, "builds": builds, "scenarios": {}}

    def keep(scen: str, runs: list[dict[str, Any]]) -> None:
        keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
        res["scenarios"][scen] = {"runs": runs, "summary": {k: summarize([r.get(k) for r in runs]) for k in keys}}

    # Buildbot's /ws vs ours first (a few minutes), then the long plugin runs.
    for rate in (20.0, 100.0) if "ws" in parts else ():
        bb_runs, fh_runs = [], []
        for i in range(n):
            log(f"/ws comparison at {rate:g} ev/s x {subs} subscribers, run {i + 1}/{n}, "
                f"load {load_average()[0]:.2f}")
            try:
                bb_runs.append(_bb_ws_run(subs, rate, 0.05, warmup, window_s))
                fh_runs.append(_fh_ws_run(subs, rate, 0.05, warmup, window_s))
            except Exception as exc:  # noqa: BLE001 - record it, keep the other figures
                log(f"/ws comparison at {rate:g} ev/s failed: {exc!r}")
                res["scenarios"][f"error_ws_{int(rate)}"] = {"error": repr(exc)}
                break
        if not bb_runs or len(bb_runs) != len(fh_runs):
            continue
        tag = "" if rate == 20.0 else f"_{int(rate)}"
        keep(f"buildbot_ws{tag}", bb_runs)
        keep(f"firehose_ws{tag}", fh_runs)
        keep(f"compare{tag}", [
            {"cpu_ratio": b["cpu_us_per_delivery"] / f["cpu_us_per_delivery"]
             if b["cpu_us_per_delivery"] and f["cpu_us_per_delivery"] else None,
             "p99_ratio": b["p99_ms"] / f["p99_ms"] if f["p99_ms"] > 0 else None,
             "memory_ratio": b["kb_per_subscriber"] / f["kb_per_subscriber"] if f["kb_per_subscriber"] > 0 else None}
            for b, f in zip(bb_runs, fh_runs, strict=True)])

    without: list[dict[str, Any]] = []
    with_plugin: list[dict[str, Any]] = []
    for i in range(n) if "plugin" in parts else ():
        log(f"plugin overhead: {builds} builds without / with the plugin, run {i + 1}/{n}, "
            f"load {load_average()[0]:.2f}")
        a, b = plugin_pair(builds)
        without.append(a)
        with_plugin.append(b)
    if with_plugin:
        keep("master_without_plugin", without)
        keep("master_with_plugin", with_plugin)
        keep("plugin", [{"cpu_ratio": b["cpu_s"] / a["cpu_s"], "cpu_without_s": a["cpu_s"], "cpu_with_s": b["cpu_s"],
                         "events": b.get("events", 0), "requests": b.get("requests", 0),
                         "plugin_us_per_event": (b["cpu_s"] - a["cpu_s"]) * 1e6 / max(1, b.get("events", 1))}
                        for a, b in zip(without, with_plugin, strict=True)])
        keep("e2e", [{"p50_ms": b["e2e_p50_ms"], "p99_ms": b["e2e_p99_ms"], "max_ms": b["e2e_max_ms"],
                      "events": b["e2e_events"]} for b in with_plugin])
    if "share" in parts:
        shares = []
        for i in range(n):
            log(f"plugin share of the master's samples (py-spy --gil), {builds} builds, run {i + 1}/{n}")
            shares.append(plugin_share(builds))
        keep("plugin_share", shares)
    if not smoke and "e2e_flush50" in parts:
        log("end to end with the former flush_interval=0.05 (one run of 100 builds)")
        _, fast = plugin_pair(100, flush=0.05)
        keep("e2e_flush50", [{"p50_ms": fast["e2e_p50_ms"], "p99_ms": fast["e2e_p99_ms"],
                              "max_ms": fast["e2e_max_ms"], "events": fast["e2e_events"],
                              "requests": fast.get("requests", 0)}])
    res["load_after"] = load_average()
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    log(f"results: {path}")
    from bench import report

    for key in ("compare", "compare_100", "plugin", "e2e", "plugin_share", "e2e_flush50", "buildbot_ws",
                "firehose_ws", "buildbot_ws_100", "firehose_ws_100"):
        s = res["scenarios"].get(key, {}).get("summary", {})
        print(key, {k: report.fmt(v, "", 2) for k, v in s.items()})
    return 0


if __name__ == "__main__":
    # python -m bench.buildbot_bench --only plugin,share: parts of `python -m bench buildbot`.
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.buildbot_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help=f"comma-separated parts of {', '.join(PARTS)} (default: all)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--builds", type=int, help="builds per master run (default 200)")
    ap.add_argument("--name", default="buildbot", help="results file name")
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    sys.exit(main(a.repeat, a.name, smoke=a.smoke, only=set(a.only.split(",")) if a.only else None,
                  builds=a.builds))
