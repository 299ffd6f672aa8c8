"""A real Buildbot master and worker (``buildbot``/``buildbot-worker`` processes, as the demo
runs them) publishing through the plugin into a real ``firehose serve``, for the browser tests
of the pages (``test_insights.py``).

The master has two builders, ``pass-build`` (checkout, compile, test: passes) and
``fail-build`` (checkout, test: prints test lines, fails with ``FAIL: expected 3, got 4``), both
scheduled by every change on any branch; changes arrive with ``buildbot sendchange``.  The last
step of every build waits for a **gate** file named after its revision and builder, so a test
decides when each build finishes: :meth:`BuildbotCI.release`.  (The step polls for the file: that
is the build's own work, bounded at two minutes, not a wait of the test.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import DEADLINE, ServerProcess, free_port, http_get, wait_for

CHROMIUM = os.environ.get("FIREHOSE_CHROMIUM", "/usr/bin/chromium")
#: Longest any Playwright wait may take (ms).
WAIT_MS = 20_000
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (``./dev test`` installs Debian's chromium)."""
    if not os.path.exists(CHROMIUM) and not shutil.which("chromium"):
        pytest.fail(f"no Chromium at {CHROMIUM}: ./dev test installs Debian's 'chromium' package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
                              args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def new_page(browser: Any, errors: list[str], **context: Any) -> Any:
    """A page in a fresh context (``context``: Playwright's new_context options) whose
    JavaScript errors are collected in ``errors``."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, **context)
    pg = ctx.new_page()
    pg.set_default_timeout(WAIT_MS)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    return pg

MASTER = "pages-master"
TOKEN = "tok-pages-master"
BUILDERS = ("pass-build", "fail-build")
FAIL_LINE = "test_frobnicate ... FAIL: expected 3, got 4"

_GATE = (
    "import os, sys, time\n"
    "path = os.path.join(sys.argv[1], sys.argv[2])\n"
    "for _ in range(2400):\n"
    "    if os.path.exists(path):\n"
    "        break\n"
    "    time.sleep(0.05)\n"
    "else:\n"
    "    sys.exit('gate %s never opened' % path)\n"
    "for i in range(3):\n"
    "    print('test_%d ... ok' % i)\n"
    "if sys.argv[3] == 'fail':\n"
    "    print(" + repr(FAIL_LINE) + ", file=sys.stderr)\n"
    "    sys.exit(1)\n"
)

MASTER_CFG = r'''# -*- python -*-
# The pages tests' master (tests/e2e/pages_support.py).
import sys
from buildbot.plugins import changes, reporters, schedulers, steps, util, worker

PY = sys.executable
GATE = %(gate)r
c = BuildmasterConfig = {}
c['buildbotNetUsageData'] = None
c['title'] = "pages e2e"
c['buildbotURL'] = "http://127.0.0.1:8010/"
c['db'] = {'db_url': "sqlite:///state.sqlite"}
c['protocols'] = {'pb': {'port': "tcp:%(pb_port)d:interface=127.0.0.1"}}
c['workers'] = [worker.Worker("w1", "w1-pass", max_builds=4)]
c['change_source'] = [changes.PBChangeSource(user="change", passwd="change-pass")]


def factory(outcome):
    f = util.BuildFactory()
    f.addStep(steps.ShellCommand(name="checkout", command=[PY, "-c", "print('checking out')"]))
    if outcome == "pass":
        f.addStep(steps.ShellCommand(name="compile", command=[PY, "-c", "print('cc -c a.c')"]))
    f.addStep(steps.ShellCommand(name="test", command=[
        PY, "-c", GATE, %(gates)r, util.Interpolate("%%(prop:revision)s-%%(prop:buildername)s"), outcome]))
    return f


c['builders'] = [
    util.BuilderConfig(name="pass-build", workernames=["w1"], factory=factory("pass"), tags=["ci"]),
    util.BuilderConfig(name="fail-build", workernames=["w1"], factory=factory("fail"), tags=["ci"]),
]
c['schedulers'] = [
    schedulers.AnyBranchScheduler(name="any", treeStableTimer=None, builderNames=["pass-build", "fail-build"]),
]
c['services'] = [
    reporters.FirehoseReporter(url=%(url)r, token=%(token)r, master_name=%(master)r, logs=True,
                               flush_interval=0.05, heartbeat_interval=3600),
]
'''


def _tool(module: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; from {module} import run; sys.argv[0] = 'tool'; run()"]


class BuildbotCI:
    """A real master and worker publishing into ``server``; ``push`` a revision, ``release``
    its builds, read back through the server's API."""

    def __init__(self, server: ServerProcess, base: Path) -> None:
        from buildbot_plugin.demo.__main__ import start, wait_for_log

        self.server = server
        self.base = base
        self.gates = base / "gates"
        self.gates.mkdir(parents=True)
        self.master_dir = base / "master"
        self.worker_dir = base / "worker"
        self.pb_port = free_port()
        self.children: list[subprocess.Popen[bytes]] = []
        self._run([*_tool("buildbot.scripts.runner"), "create-master", "-r", "-q", str(self.master_dir)])
        (self.master_dir / "master.cfg").write_text(MASTER_CFG % {
            "gate": _GATE, "gates": str(self.gates), "pb_port": self.pb_port, "url": server.url,
            "token": TOKEN, "master": MASTER,
        })
        self._run([*_tool("buildbot_worker.scripts.runner"), "create-worker", "-q", str(self.worker_dir),
                   f"127.0.0.1:{self.pb_port}", "w1", "w1-pass"])
        master = start(str(self.master_dir))
        self.children.append(master)
        if not wait_for_log(str(self.master_dir / "twistd.log"), "BuildMaster is running", master, timeout=60):
            raise AssertionError(f"the master did not start:\n{self.master_log()}")
        self.children.append(start(str(self.worker_dir)))
        wait_for(lambda: any(w.get("connected") for w in self.api("/api/masters")["workers"]),
                 "the worker connected (worker.connected in /api/masters)", deadline=60)

    @staticmethod
    def _run(argv: list[str]) -> None:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
                       stdin=subprocess.DEVNULL)

    def master_log(self) -> str:
        try:
            return (self.master_dir / "twistd.log").read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self) -> None:
        from buildbot_plugin.demo.__main__ import stop

        stop(self.children)

    def api(self, path: str) -> Any:
        status, body = http_get(self.server.url + path)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)

    def push(self, revision: str, branch: str = "main", comments: str = "a change") -> None:
        """``buildbot sendchange``: a change of ``revision`` on ``branch``, which schedules both
        builders; returns once both builds have started (their gates hold them)."""
        self._run([*_tool("buildbot.scripts.runner"), "sendchange", "-m", f"127.0.0.1:{self.pb_port}",
                   "-a", "change:change-pass", "-W", "Ada <ada@example.invalid>", "-b", branch,
                   "-r", revision, "-C", comments, "src/app.py"])
        self.wait_builds(revision, lambda b: len([x for x in b if x["status"] != "pending"]) == len(BUILDERS),
                         "both builds started")

    def release(self, revision: str, builder: str, wait: bool = True) -> None:
        """Open the gate of ``builder``'s build of ``revision``; with ``wait``, return once the
        server has the build finished."""
        (self.gates / f"{revision}-{builder}").write_text("go")
        if wait:
            self.wait_builds(revision, lambda b: any(x["builder"] == builder and x["status"] == "finished" for x in b),
                             f"{builder} finished")

    def wait_builds(self, revision: str, predicate: Any, what: str) -> list[dict[str, Any]]:
        def check() -> Any:
            builds = self.api(f"/api/builds?revision={revision}&limit=50")["builds"]
            return builds if predicate(builds) else None

        try:
            return wait_for(check, f"{what} for {revision}", deadline=DEADLINE * 3)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nmaster log:\n{self.master_log()}") from None

    def build_of(self, revision: str, builder: str) -> dict[str, Any]:
        builds = self.api(f"/api/builds?revision={revision}&limit=50")["builds"]
        return next(b for b in builds if b["builder"] == builder and b["status"] == "finished")


def revision(n: int) -> str:
    """A 40-hex revision, unique per ``n``."""
    return f"{n:08x}" + "c0ffee" * 5 + "ab"


