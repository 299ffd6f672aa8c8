"""A real, in-process Buildbot master (4.3, LocalWorker) running ``--builds`` builds, with or
without the FirehoseReporter, and reporting its own CPU time over the run as one JSON line.

Run by ``python -m bench buildbot`` with the project venv (which has buildbot and the plugin),
pinned to the load generator's core, while the firehose server runs on the other one.  The
master is built the way ``buildbot.test.util.integration.TestedMaster`` builds one (a config
dict, an upgraded SQLite db, ``startService``) without importing ``buildbot.test`` (it turns
every warning into an error).

CPU is ``getrusage(RUSAGE_SELF)`` (every thread of the master, none of the shell steps it
spawns) from the first forced build until every buildset has completed and, with the plugin,
its outbox has been acknowledged by the server.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from typing import Any

from twisted.internet import defer, reactor, task


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--builds", type=int, default=200)
    ap.add_argument("--builders", type=int, default=10)
    ap.add_argument("--wave", type=int, default=20, help="builds forced at once")
    ap.add_argument("--url", help="firehose server; without it, no plugin")
    ap.add_argument("--token", default="t0")
    ap.add_argument("--master-name", default="m0")
    ap.add_argument("--flush-interval", type=float, help="the plugin's flush_interval (default: its default)")
    ap.add_argument("--max-time", type=float, default=240.0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    from buildbot.config import BuilderConfig
    from buildbot.config.master import MasterConfig
    from buildbot.master import BuildMaster
    from buildbot.plugins import schedulers, steps, util, worker

    basedir = tempfile.mkdtemp(prefix="bbplugin-bench-")
    names = [f"builder-{i}" for i in range(args.builders)]

    def factory() -> Any:
        f = util.BuildFactory()
        f.addStep(steps.ShellCommand(name="test", command="echo line one; echo line two; echo oops >&2"))
        f.addStep(steps.SetPropertyFromCommand(name="publish", command="echo http://artifacts.invalid/bin.tgz",
                                               property="binary_url"))
        f.addStep(steps.SetProperty(property="deployed", value="yes"))
        return f

    config: dict[str, Any] = {
        "workers": [worker.LocalWorker("local1")],
        "protocols": {"null": {}},
        "builders": [BuilderConfig(name=n, workernames=["local1"], factory=factory(), tags=["bench"]) for n in names],
        "schedulers": [schedulers.ForceScheduler(name="force", builderNames=names)],
        # in-memory, as RunMasterBase runs it: the master does less, the plugin weighs more
        "db_url": "sqlite://",
        "buildbotNetUsageData": None,
        "buildbotURL": "http://buildbot.invalid/",
        "services": [],
    }
    reporter = None
    if args.url:
        from buildbot_plugin.reporter import FirehoseReporter

        opts: dict[str, Any] = {"heartbeat_interval": 3600.0, "spool_dir": os.path.join(basedir, "spool")}
        if args.flush_interval is not None:
            opts["flush_interval"] = args.flush_interval
        reporter = FirehoseReporter(url=args.url, token=args.token, master_name=args.master_name, **opts)
        config["services"].append(reporter)

    class Loader:
        def loadConfig(self) -> MasterConfig:
            return MasterConfig.loadFromDict(config, "<bench>")

    master = BuildMaster(basedir, reactor=reactor, config_loader=Loader())
    out: dict[str, Any] = {}

    @defer.inlineCallbacks
    def run() -> Any:
        master.config.db.db_url = config["db_url"]
        yield master.db.setup(check_version=False)
        yield master.db.model.upgrade()
        master.db.setup = lambda: None
        yield master.startService()
        if not master.running:
            raise RuntimeError("BuildMaster did not start")
        builders = yield master.data.get(("builders",))
        ids = [b["builderid"] for b in builders if b["name"] in names]
        # wait for the LocalWorker to attach
        for _ in range(200):
            workers = yield master.data.get(("workers",))
            if any(w["connected_to"] for w in workers):
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        completed: list[int] = []

        def on_complete(_key: Any, _msg: Any) -> None:
            completed.append(1)

        qref = yield master.mq.startConsuming(on_complete, ("buildsets", None, "complete"))
        c0, t0 = cpu(), time.monotonic()
        forced = 0
        while forced < args.builds:
            n = min(args.wave, args.builds - forced)
            target = forced + n
            for i in range(n):
                yield master.data.control("force", {"builderid": ids[(forced + i) % len(ids)]},
                                          ("forceschedulers", "force"))
            forced = target
            deadline = time.monotonic() + 60
            while len(completed) < forced and time.monotonic() < deadline:
                yield task.deferLater(reactor, 0.01, lambda: None)
        builds_s = time.monotonic() - t0
        if reporter is not None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                ob = reporter.outbox
                if ob is not None and ob.stats.get("delivered", 0) >= reporter.seq and not reporter._raw:
                    break
                yield task.deferLater(reactor, 0.02, lambda: None)
            out["events"] = reporter.seq
            out["requests"] = reporter.outbox.stats.get("requests", 0)
        out.update(cpu_s=cpu() - c0, seconds=time.monotonic() - t0, builds_seconds=builds_s,
                   builds=len(completed), plugin=bool(reporter))
        qref.stopConsuming()
        yield master.stopService()

    def done(result: Any) -> None:
        if isinstance(result, Exception) or hasattr(result, "getTraceback"):
            out["error"] = str(result)
        print(json.dumps(out), flush=True)
        if reactor.running:
            reactor.stop()

    reactor.callWhenRunning(lambda: run().addBoth(done))
    reactor.callLater(args.max_time, lambda: reactor.running and reactor.stop())
    reactor.run()
    shutil.rmtree(basedir, ignore_errors=True)
    return 0 if "error" not in out else 1


if __name__ == "__main__":
    sys.exit(main())
