"""``python -m bench profile``: py-spy samples of the server under each hot load, written as
collapsed stacks (``bench/results/profile-<name>.txt``), a flame graph drawn from them
(``profile-<name>.svg``) and the top functions by own and inclusive time (printed, and in
``profile-<name>.top.txt``).

py-spy comes from the bench venv (bench/.venv-www, made by ``python -m bench buildbot``), PATH,
or bench/build/venv-tools (made on first use); it runs on the load generator's core,
``--nonblocking`` so it never stops the server.  ``--only ws_unbatched,ingest_single`` picks
profiles; the unbatched ones (one event per POST from 10 masters) are issue 13's.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import time
from collections import Counter
from typing import Any

from bench.common import BENCH, CLIENT_CORE, RESULTS, Loadgen, Server, log
from bench.scenarios import SUBSCRIBE, make_journal

PROFILES: dict[str, dict[str, Any]] = {
    "ingest": {"gen": ["--mode", "none", "--pub-flood", "100", "--pub-conns", "4"]},
    "ws_fanout": {"gen": ["--mode", "ws", "--conns", "1000", "--pub-rate", "100", "--pub-interval", "0.2",
                          "--sub", SUBSCRIBE]},
    "ws_capacity": {"gen": ["--mode", "ws", "--conns", "1000", "--pub-rate", "1000", "--pub-interval", "0.2",
                            "--sub", SUBSCRIBE]},
    "ws_unbatched": {"gen": ["--mode", "ws", "--conns", "1000", "--pub-rate", "100", "--pub-single", "1",
                             "--pub-conns", "10", "--sub", SUBSCRIBE]},
    "ws_unbatched_300": {"gen": ["--mode", "ws", "--conns", "1000", "--pub-rate", "300", "--pub-single", "1",
                                 "--pub-conns", "10", "--sub", SUBSCRIBE]},
    "sse_unbatched": {"gen": ["--mode", "sse", "--path", "/sse", "--conns", "1000", "--pub-rate", "100",
                              "--pub-single", "1", "--pub-conns", "10"]},
    "ingest_single": {"gen": ["--mode", "none", "--pub-flood", "1", "--pub-conns", "10"]},
    # 100 single-event POSTs/s from 10 masters, no subscriber: what a commit a request costs
    "ingest_trickle": {"gen": ["--mode", "none", "--pub-rate", "100", "--pub-single", "1", "--pub-conns", "10"]},
    "longpoll": {"gen": ["--mode", "poll", "--conns", "1000", "--pub-rate", "40", "--pub-interval", "0.2"]},
    "resume": {"gen": ["--mode", "ws", "--conns", "1", "--expect", "1000000",
                       "--sub", '{"cmd":"subscribe","since":"earliest"}'], "journal": 1_000_000},
}


def pyspy() -> str:
    local = os.path.join(BENCH, ".venv-www", "bin", "py-spy")
    found = local if os.path.exists(local) else shutil.which("py-spy")
    if not found:
        from bench.report import tools_venv

        bindir = tools_venv()
        found = os.path.join(bindir, "py-spy") if bindir else None
    if not found or not os.path.exists(found):
        raise SystemExit("py-spy not found (no bench/.venv-www, none on PATH, bench/build/venv-tools failed)")
    return found


def record(name: str, seconds: float = 8.0, warmup: float = 2.0) -> str:
    spec = PROFILES[name]
    db = None
    if "journal" in spec:
        db = make_journal(os.path.join(BENCH, "build", f"resume-{spec['journal']}.sqlite"), spec["journal"])
    server = Server(db=db)
    out = os.path.join(RESULTS, f"profile-{name}.txt")
    gen = Loadgen(server.port, spec["gen"], max_time=warmup + seconds + 120)
    server.start()
    try:
        gen.start()
        time.sleep(warmup)
        subprocess.run(
            ["taskset", "-c", CLIENT_CORE, pyspy(), "record", "--pid", str(server.pid), "--duration",
             str(int(seconds)), "--rate", "200", "--nonblocking", "--format", "raw", "--output", out],
            check=True, timeout=seconds + 60, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    finally:
        gen.stop()
        server.stop()
    return out


def read_stacks(path: str) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if stack and n.isdigit():
                stacks[tuple(stack.split(";"))] += int(n)
    return stacks


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py:123)"
    name, _, where = frame.partition(" (")
    return f"{name} ({os.path.basename(where)}" if where else name


def top(stacks: Counter[tuple[str, ...]], n: int = 25) -> str:
    total = sum(stacks.values()) or 1
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for stack, c in stacks.items():
        own[_short(stack[-1])] += c
        for fr in {_short(f) for f in stack}:
            incl[fr] += c
    lines = [f"{total} samples", "", "own%   function"]
    lines += [f"{100 * c / total:5.1f}  {f}" for f, c in own.most_common(n)]
    lines += ["", "incl%  function"]
    lines += [f"{100 * c / total:5.1f}  {f}" for f, c in incl.most_common(n)]
    return "\n".join(lines)


def flamegraph(stacks: Counter[tuple[str, ...]], path: str, title: str) -> None:
    """A plain SVG flame graph (root at the bottom, width = share of samples)."""
    tree: dict[str, Any] = {"n": 0, "c": {}}
    for stack, c in stacks.items():
        node = tree
        node["n"] += c
        for fr in stack:
            node = node["c"].setdefault(_short(fr), {"n": 0, "c": {}})
            node["n"] += c
    width, row = 1400.0, 16
    total = tree["n"] or 1
    rects: list[str] = []
    depth_max = [0]

    def walk(node: dict[str, Any], x: float, depth: int) -> None:
        for name, child in sorted(node["c"].items()):
            w = width * child["n"] / total
            if w >= 0.5:
                depth_max[0] = max(depth_max[0], depth)
                hue = 20 + (hash(name) % 40)
                label = html.escape(name)
                pct = 100 * child["n"] / total
                text = html.escape(name[: int(w / 7)]) if w > 30 else ""
                rects.append(
                    f'<g><title>{label} ({pct:.1f}%)</title><rect x="{x:.1f}" y="DEPTH{depth}" width="{w:.1f}" '
                    f'height="{row - 1}" fill="hsl({hue},85%,60%)"/><text x="{x + 2:.1f}" y="DEPTH{depth}T" '
                    f'font-size="11" font-family="monospace">{text}</text></g>'
                )
                walk(child, x, depth + 1)
            x += w

    walk(tree, 0.0, 0)
    height = (depth_max[0] + 3) * row
    svg = "\n".join(rects)
    for d in range(depth_max[0], -1, -1):
        y = height - (d + 2) * row
        svg = svg.replace(f'"DEPTH{d}T"', f'"{y + 12}"').replace(f'"DEPTH{d}"', f'"{y}"')
    with open(path, "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{int(width)}" height="{height}">'
                f'<text x="4" y="14" font-size="13" font-family="sans-serif">{html.escape(title)}</text>'
                f"{svg}</svg>\n")


def main(names: list[str] | None = None) -> int:
    os.makedirs(RESULTS, exist_ok=True)
    unknown = set(names or ()) - set(PROFILES)
    if unknown:
        raise SystemExit(f"unknown profile(s) {sorted(unknown)}; known: {', '.join(PROFILES)}")
    for name in names or list(PROFILES):
        log(f"profiling {name}")
        raw = record(name)
        stacks = read_stacks(raw)
        summary = top(stacks)
        with open(os.path.join(RESULTS, f"profile-{name}.top.txt"), "w") as f:
            f.write(summary + "\n")
        flamegraph(stacks, os.path.join(RESULTS, f"profile-{name}.svg"), f"firehose server: {name}")
        print(f"== {name}\n{summary}\n")
    return 0
