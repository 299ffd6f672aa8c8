"""The benchmark suite still runs: a seconds-long smoke run of ``python -m bench --smoke``.

Benchmarks are not tests: nothing here asserts a timing, only that the bench ran, every scenario
produced numbers, and no process was left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("taskset") is None,
                    reason="the bench needs gcc and taskset")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the bench pins server and client to two cores")
def test_bench_smoke_runs_and_produces_numbers(tmp_path: object) -> None:
    """``python -m bench --smoke`` exits 0 and every scenario it ran recorded numbers."""
    name = f"smoke-test-{os.getpid()}"
    out = os.path.join(ROOT, "bench", "results", f"{name}.json")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench", "--smoke", "--name", name,
             "--only", "ws_fanout,ws_unbatched,sse_fanout,longpoll,ingest,ingest_single,idle,resume,startup"],
            cwd=ROOT, capture_output=True, text=True, timeout=240,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        with open(out) as f:
            res = json.load(f)
    finally:
        if os.path.exists(out):
            os.remove(out)
    scen = res["scenarios"]
    for key in ("ws_fanout", "ws_unbatched", "sse_fanout", "longpoll", "ingest", "ingest_single", "idle", "resume",
                "startup"):
        assert "error" not in scen[key], scen[key]
        assert scen[key]["runs"], key
    assert scen["ws_fanout"]["summary"]["deliveries"]["median"] > 0
    # one event per POST from 10 masters: every POST carried one event, and they were delivered
    assert scen["ws_unbatched"]["summary"]["deliveries"]["median"] > 0
    assert scen["ws_unbatched"]["summary"]["ev_per_post"]["median"] == 1
    assert scen["ws_unbatched"]["summary"]["loadgen_cpu_pct"]["n"] == 1
    assert scen["ingest_single"]["summary"]["requests_per_s"]["median"] > 0
    assert scen["startup"]["summary"]["first_api_correct_s"]["n"] == 1
    assert scen["startup"]["summary"]["restart_api_correct_s"]["n"] == 1
    assert scen["sse_fanout"]["summary"]["deliveries"]["median"] > 0
    assert scen["longpoll"]["summary"]["polls"]["median"] > 0
    assert scen["ingest"]["summary"]["events_per_s"]["median"] > 0
    assert scen["idle"]["summary"]["connections"]["median"] > 0
    assert scen["resume"]["summary"]["events"]["median"] == 5000
    assert "| what | target |" in proc.stdout
