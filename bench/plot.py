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
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

PLAIN = FuncFormatter(lambda v, _pos: f"{v:g}")


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


def _curve(res: dict[str, Any], kind: str, batching: str) -> list[dict[str, Any]]:
    """The points of one curve of ``python -m bench curves``, by x (subscribers or events/s);
    the point both curves share (``subs`` x ``rate``) is stored under the subs curve."""
    p = res["params"]
    pts = []
    for scen, body in res.get("scenarios", {}).items():
        if "summary" not in body:
            continue
        _, k, b, _v = scen.split("_", 3) if scen.startswith("curve_") else ("", "", "", "")
        sm = body["summary"]
        subs, rate = sm.get("subs", {}).get("median"), sm.get("ev_rate", {}).get("median")
        if b != batching or subs is None or rate is None:
            continue
        if k == kind or (kind == "rate" and k == "subs" and subs == p["subs"] and rate == p["rate"]):
            x = subs if kind == "subs" else rate
            pts.append({"x": x, "offered": sm["offered_deliveries"]["median"],
                        **{key: med(res, scen, key) for key in ("rate", "p99_ms", "server_cpu_pct", "loadgen_cpu_pct")},
                        "saturated": bool(sm.get("saturated", {}).get("max")),
                        # the server waited > 20% of the window for its core (another process had it)
                        "contended": max((sm.get(k, {}).get("max") or 0)
                                         for k in ("server_runq_wait_pct", "loadgen_runq_wait_pct")) > 20.0,
                        "client_busy": bool(sm.get("loadgen_saturated", {}).get("max"))})
    return sorted((q for q in pts if q["rate"] and q["p99_ms"]), key=lambda q: q["x"])


def scaling_curves(res: dict[str, Any], out: str) -> None:
    """bench/results/scaling_subs.png and scaling_rate.png: deliveries/s and p99 against
    subscribers and against events/s, batched and unbatched; saturated points circled red."""
    p = res["params"]
    for kind, fname, xlabel in (
        ("subs", "scaling_subs.png", f"WebSocket subscribers ({p['rate']:g} events/s)"),
        ("rate", "scaling_rate.png", f"events/s published ({p['subs']:,} WebSocket subscribers)"),
    ):
        curves = {b: _curve(res, kind, b) for b in ("batched", "unbatched")}
        if not any(curves.values()):
            continue
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
        styles = {"batched": ("o-", "#48c", f"batched ({p['interval']:g} s flush, 1 master)"),
                  "unbatched": ("s-", "#c84", f"unbatched (1 event per POST, {p.get('unbatched_masters', 10)} masters)")}
        for b, pts in curves.items():
            if not pts:
                continue
            fmt, color, label = styles[b]
            xs = [q["x"] for q in pts]
            ax1.errorbar(xs, [q["rate"][0] / 1000 for q in pts],
                         yerr=[[(q["rate"][0] - q["rate"][1]) / 1000 for q in pts],
                               [(q["rate"][2] - q["rate"][0]) / 1000 for q in pts]],
                         fmt=fmt, color=color, label=label, capsize=3)
            ax2.errorbar(xs, [q["p99_ms"][0] for q in pts],
                         yerr=[[q["p99_ms"][0] - q["p99_ms"][1] for q in pts],
                               [q["p99_ms"][2] - q["p99_ms"][0] for q in pts]],
                         fmt=fmt, color=color, label=f"p99, {b}", capsize=3)
            for ax, key, scale in ((ax1, "rate", 1000), (ax2, "p99_ms", 1)):
                sat = [q for q in pts if q["saturated"]]
                if sat:
                    ax.scatter([q["x"] for q in sat], [q[key][0] / scale for q in sat], s=160, facecolors="none",
                               edgecolors="red", linewidths=1.5, zorder=5,
                               label="server CPU >= 90% (saturated)" if b == "batched" or not any(
                                   q["saturated"] for q in curves["batched"]) else None)
            cont = [q for q in pts if q["contended"]]
            for ax, key, scale in ((ax1, "rate", 1000), (ax2, "p99_ms", 1)) if cont else ():
                first = not any(h.get_label().startswith("contended") for h in ax.collections)
                ax.scatter([q["x"] for q in cont], [q[key][0] / scale for q in cont], marker="^", s=110,
                           facecolors="none", edgecolors="grey", zorder=6,
                           label="contended: server or client waited > 20% for its core" if first else None)
            busy = [q for q in pts if q["client_busy"]]
            if busy:
                ax1.scatter([q["x"] for q in busy], [q["rate"][0] / 1000 for q in busy], marker="x", s=80,
                            color="black", zorder=6, label=f"load generator CPU >= 90% ({b})")
            for q in pts:
                if q["server_cpu_pct"]:
                    ax1.annotate(f"{q['server_cpu_pct'][0]:.0f}%", (q["x"], q["rate"][0] / 1000),
                                 textcoords="offset points", xytext=(4, -12 if b == "batched" else 6), fontsize=7,
                                 color=color)
        every = sorted({q["x"] for pts in curves.values() for q in pts})
        offered = {q["x"]: q["offered"] for pts in curves.values() for q in pts}
        ax1.plot(every, [offered[x] / 1000 for x in every], ":", color="grey", label="offered")
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_xticks(every)
            ax.set_xticklabels([f"{x:,.0f}" for x in every])
            ax.minorticks_off()
        ax1.set_yscale("log")
        ax1.set_ylabel("deliveries/s (thousands; labels: server CPU %)")
        ax1.set_title("Delivered (server on one core)")
        ax1.legend(fontsize=7, loc="upper left")
        ax2.axhline(50, color="grey", ls="--", lw=0.8, label="50 ms")
        ax2.set_yscale("log")
        for ax in (ax1, ax2):
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(PLAIN)
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax2.set_ylabel("p99 publish-to-receive, ms")
        ax2.set_title("p99 latency")
        ax2.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(os.path.join(out, fname), dpi=110)
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
    if "params" in res and any(k.startswith("curve_") for k in res.get("scenarios", {})):
        scaling_curves(res, out)
    elif "params" in res:
        latency_vs_load(res, out)
        scaling(res, out)
    bb_path = os.path.join(os.path.dirname(path), "buildbot.json")
    # the Buildbot comparison comes from buildbot.json whatever results are plotted: redraw it
    # with the default suite's plots (or buildbot.json's own) only, not with every named run's
    if os.path.basename(path) in ("suite.json", "buildbot.json") and os.path.exists(bb_path):
        with open(bb_path) as f:
            comparison(json.load(f), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
