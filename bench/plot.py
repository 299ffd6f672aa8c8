"""Draw the bench's PNGs from a results JSON (run with bench/.venv-www's Python: matplotlib).

    bench/.venv-www/bin/python bench/plot.py bench/results/suite.json bench/results
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def med(res: dict[str, Any], scen: str, key: str) -> tuple[float, float, float] | None:
    s = res.get("scenarios", {}).get(scen, {}).get("summary", {}).get(key)
    if not s or s.get("median") is None:
        return None
    return s["median"], s["min"], s["max"]


def _errplot(ax: Any, xs: list[float], vals: list[tuple[float, float, float]], label: str, fmt: str) -> None:
    ys = [v[0] for v in vals]
    lo = [v[0] - v[1] for v in vals]
    hi = [v[2] - v[0] for v in vals]
    ax.errorbar(xs, ys, yerr=[lo, hi], fmt=fmt, label=label, capsize=3)


def latency_vs_load(res: dict[str, Any], out: str) -> None:
    subs = res["params"]["subs"]
    base_rate = res["params"]["rate"]
    points = []
    for rate in sorted({*res["params"]["load_rates"], base_rate, res["params"]["capacity_rate"]}):
        scen = ("ws_fanout" if rate == base_rate else
                "ws_capacity" if rate == res["params"]["capacity_rate"] else f"load_{int(rate)}")
        p50, p99, got, cpu = (med(res, scen, k) for k in ("p50_ms", "p99_ms", "rate", "server_cpu_pct"))
        if p50 and p99 and got and cpu:
            points.append((rate * subs, p50, p99, got, cpu))
    if not points:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [p[0] / 1000 for p in points]
    _errplot(ax1, xs, [p[1] for p in points], "p50", "o-")
    _errplot(ax1, xs, [p[2] for p in points], "p99", "s-")
    ax1.axhline(50, color="grey", ls="--", lw=0.8, label="target p99 50 ms")
    ax1.set_xlabel(f"offered deliveries/s (thousands; {subs} WebSocket subscribers)")
    ax1.set_ylabel("publish-to-receive latency, ms")
    ax1.set_yscale("log")
    ax1.legend()
    ax1.set_title("Latency versus load")
    _errplot(ax2, xs, [(p[3][0] / 1000, p[3][1] / 1000, p[3][2] / 1000) for p in points], "delivered/s (k)", "o-")
    ax2.plot(xs, xs, color="grey", ls=":", lw=0.8, label="offered")
    ax2.set_xlabel("offered deliveries/s (thousands)")
    ax2.set_ylabel("delivered/s (thousands)")
    ax3 = ax2.twinx()
    _errplot(ax3, xs, [p[4] for p in points], "server CPU %", "s--r")
    ax3.set_ylabel("server CPU, % of one core")
    ax3.set_ylim(0, 110)
    ax2.legend(loc="upper left")
    ax3.legend(loc="lower right")
    ax2.set_title("Throughput and CPU (server on one core)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "latency_vs_load.png"), dpi=110)
    plt.close(fig)


def scaling(res: dict[str, Any], out: str) -> None:
    pts = []
    for n in res["params"]["scaling"]:
        scen = "ws_fanout" if n == res["params"]["subs"] else f"scaling_{n}"
        got, p99, cpu = (med(res, scen, k) for k in ("rate", "p99_ms", "server_cpu_pct"))
        if got and p99 and cpu:
            pts.append((n, got, p99, cpu))
    if not pts:
        return
    fig, ax1 = plt.subplots(figsize=(7, 4.2))
    xs = [p[0] for p in pts]
    _errplot(ax1, xs, [(p[1][0] / 1000, p[1][1] / 1000, p[1][2] / 1000) for p in pts], "delivered/s (k)", "o-")
    ax1.plot(xs, [x * res["params"]["rate"] / 1000 for x in xs], ":", color="grey", label="offered")
    ax1.set_xscale("log")
    ax1.set_xlabel(f"WebSocket subscribers ({res['params']['rate']:g} events/s)")
    ax1.set_ylabel("deliveries/s (thousands)")
    ax2 = ax1.twinx()
    _errplot(ax2, xs, [p[2] for p in pts], "p99 ms", "s--r")
    ax2.set_ylabel("p99 latency, ms")
    ax2.set_yscale("log")
    ax1.legend(loc="upper left")
    ax2.legend(loc="lower right")
    ax1.set_title("Scaling with subscribers (server on one core)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "scaling.png"), dpi=110)
    plt.close(fig)


def comparison(bb: dict[str, Any], out: str) -> None:
    rows = [("cpu_us_per_delivery", "CPU us per delivery"), ("p99_ms", "p99 latency, ms"),
            ("kb_per_subscriber", "KB RSS per subscriber")]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, (key, label) in zip(axes, rows, strict=True):
        names, vals, errs = [], [], []
        for scen, name in (("buildbot_ws", "Buildbot /ws\n20 ev/s"), ("firehose_ws", "firehose /ws\n20 ev/s"),
                           ("buildbot_ws_100", "Buildbot /ws\n100 ev/s"), ("firehose_ws_100", "firehose /ws\n100 ev/s")):
            m = med(bb, scen, key)
            if m:
                names.append(name)
                vals.append(m[0])
                errs.append((m[0] - m[1], m[2] - m[0]))
        ax.bar(names, vals, yerr=list(zip(*errs, strict=True)) if errs else None, capsize=3,
               color=["#c55", "#48c", "#c55", "#48c"][: len(vals)])
        ax.set_title(label)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("Same build events, same 1,000 subscribers, same C client")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "buildbot_ws_vs_firehose.png"), dpi=110)
    plt.close(fig)


def main() -> int:
    path, out = sys.argv[1], sys.argv[2]
    with open(path) as f:
        res = json.load(f)
    os.makedirs(out, exist_ok=True)
    if "params" in res:
        latency_vs_load(res, out)
        scaling(res, out)
    bb_path = os.path.join(os.path.dirname(path), "buildbot.json")
    if os.path.exists(bb_path):
        with open(bb_path) as f:
            comparison(json.load(f), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
