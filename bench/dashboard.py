"""How the dashboard copes with a big pushlog: 200 builders x 500 revisions in headless Chromium.

    .venv/bin/python bench/dashboard.py [--builders 200] [--revisions 500] [--runs 3]

Starts a server on a fresh journal, ingests one finished build per cell (100,000 builds), opens
the dashboard in Debian's Chromium (Playwright), and measures, each as median (min-max) over
``--runs`` page loads:

- load: navigation to the grid rendered and the stream live;
- live update: an event ingested to its cell repainted (publish-to-pixel, the server included);
- keyboard: 50 ArrowDown presses down the grid (per press, scrolling included);
- DOM: cells in the grid, cells actually in the DOM (rows are virtualized), and the JS heap.

Everything runs on 127.0.0.1; the server is killed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

HOST = "127.0.0.1"
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def post(url: str, events: list[dict[str, Any]]) -> None:
    req = urllib.request.Request(url + "/ingest", data=json.dumps(events).encode(),
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200


def history(builders: int, revisions: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    t0 = time.time() - revisions * 60
    buildid = 0
    for r in range(revisions):
        rev = f"{r:040x}"
        t = t0 + r * 60
        events.append({"type": "change.new", "time": t, "data": {"changeid": r, "branch": "main", "revision": rev,
                                                                  "author": f"dev{r % 17}", "comments": f"change {r}"}})
        for b in range(builders):
            buildid += 1
            result = "failure" if (r * 7 + b) % 23 == 0 else "success"
            events.append({"type": "build.finished", "time": t + 30, "data": {
                "buildid": buildid, "number": r, "builder": f"builder-{b:03d}", "tags": [f"group-{b // 25}"],
                "branch": "main", "revision": rev, "started_at": t, "complete_at": t + 30, "duration": 30,
                "result": result, "results": 2 if result == "failure" else 0}})
    return events


def seal(events: list[dict[str, Any]], first_seq: int) -> list[dict[str, Any]]:
    return [{"master": "bench", "incarnation": "dash", "seq": first_seq + i, **e} for i, e in enumerate(events)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builders", type=int, default=200)
    parser.add_argument("--revisions", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = tempfile.mkdtemp(prefix="firehose-dash-bench-")
    port = free_port()
    url = f"http://{HOST}:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "firehose.cli", "serve", "--listen", f"tcp:{port}:interface={HOST}",
         "--db", os.path.join(tmp, "j.sqlite"), "--master-token", f"bench={TOKEN}", "--synchronous", "NORMAL"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        events = seal(history(args.builders, args.revisions), 1)
        started = time.monotonic()
        for i in range(0, len(events), 2000):
            post(url, events[i:i + 2000])
        print(f"ingested {len(events)} events in {time.monotonic() - started:.1f}s")
        seq = len(events) + 1
        loads, updates, keys = [], [], []
        cells = heap = rendered = 0
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            for run in range(args.runs):
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.set_default_timeout(120_000)
                t = time.monotonic()
                page.goto(f"{url}/?limit={args.revisions}")
                page.wait_for_selector('#connection[data-state="live"]')
                page.wait_for_function(
                    f"window.firehoseDashboard.grid.rows.length >= {args.revisions}"
                    f" && window.firehoseDashboard.grid.names.length >= {args.builders}"
                    " && document.querySelectorAll('td.cell').length > 0")
                loads.append(time.monotonic() - t)
                cells = page.evaluate("window.firehoseDashboard.grid.rows.length * window.firehoseDashboard.grid.names.length")
                rendered = page.locator("td.cell").count()
                heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : 0")
                # A live update: the newest revision's first builder turns from success to exception.
                rev = f"{args.revisions - 1:040x}"
                t = time.monotonic()
                post(url, seal([{"type": "build.finished", "time": time.time(), "data": {
                    "buildid": 10_000_000 + run, "number": 99_999, "builder": "builder-000", "branch": "main",
                    "revision": rev, "started_at": time.time(), "complete_at": time.time(),
                    "result": "exception", "results": 4}}], seq))
                seq += 1
                page.wait_for_selector(f'td.cell[data-rev="{rev}"][data-builder="builder-000"][data-state="exception"]')
                updates.append(time.monotonic() - t)
                page.locator('td.cell[tabindex="0"]').focus()
                t = time.monotonic()
                for _ in range(50):
                    page.keyboard.press("ArrowDown")
                page.evaluate("new Promise(r => requestAnimationFrame(() => r()))")
                keys.append((time.monotonic() - t) / 50)
                page.close()
            browser.close()

        def fmt(xs: list[float], scale: float, unit: str) -> str:
            return f"{statistics.median(xs) * scale:.0f} {unit} ({min(xs) * scale:.0f}-{max(xs) * scale:.0f})"

        print(f"grid: {args.builders} builders x {args.revisions} revisions = {cells} cells"
              f" ({rendered} in the DOM at a time), JS heap {heap / 1e6:.0f} MB")
        print(f"load to live grid:  {fmt(loads, 1000, 'ms')}")
        print(f"live update:        {fmt(updates, 1000, 'ms')}")
        print(f"keyboard per press: {fmt(keys, 1000, 'ms')}")
    finally:
        server.kill()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
