"""A real Buildbot master (4.3, with buildbot-www) whose own ``/ws`` endpoint is the baseline.

Run by ``python -m bench buildbot`` with bench/.venv-www's Python (the project venv must not get
buildbot-www), pinned to the server core.  It produces ``builds/<id>/update`` messages on the
master's own message queue at ``--rate`` per second, in batches every ``--interval`` seconds, each
payload shaped like a Buildbot build (~700 bytes as JSON) with ``sent_at`` (epoch seconds) for the
subscriber to measure latency: exactly what Buildbot's web UI subscribers receive through ``/ws``.

Prints ``READY <port>`` when the web server listens and starts producing when a line ``go``
arrives on stdin (so that subscribers connect to an idle master, as they would in real life);
runs until SIGTERM or ``--max-time``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings

from twisted.internet import defer, reactor, task


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--max-time", type=float, default=300.0)
    ap.add_argument("--basedir", help="the master's directory (the caller removes it)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from twisted.python import log as twlog

    twlog.startLogging(sys.stderr, setStdout=False)

    from buildbot.config import BuilderConfig
    from buildbot.config.master import MasterConfig
    from buildbot.master import BuildMaster
    from buildbot.process.factory import BuildFactory
    from buildbot.schedulers.forcesched import ForceScheduler
    from buildbot.worker import Worker

    basedir = args.basedir or tempfile.mkdtemp(prefix="bbws-bench-")
    config = {
        # One worker that never connects and one builder that never builds: the messages below
        # stand in for builds, so the master spends its time on /ws alone.
        "workers": [Worker("w1", "pw")],
        "builders": [BuilderConfig(name="b0", workernames=["w1"], factory=BuildFactory())],
        "schedulers": [ForceScheduler(name="force", builderNames=["b0"])], "protocols": {"pb": {"port": "tcp:0:interface=127.0.0.1"}},
        "www": {"port": f"tcp:{args.port}:interface=127.0.0.1", "plugins": {}},
        "db_url": f"sqlite:///{os.path.join(basedir, 'state.sqlite')}",
        "buildbotNetUsageData": None, "title": "bench",
    }

    class Loader:
        def loadConfig(self) -> MasterConfig:
            return MasterConfig.loadFromDict(config, "<bench>")

    master = BuildMaster(basedir, reactor=reactor, config_loader=Loader())
    pad = "x" * 120
    state = {"n": 0, "t0": 0.0}

    def produce() -> None:
        now = time.time()
        due = int((now - state["t0"]) * args.rate) - state["n"]
        for _ in range(max(0, due)):
            state["n"] += 1
            i = state["n"]
            payload = {
                "buildid": i, "number": i, "builderid": i % 20, "buildrequestid": i, "workerid": i % 7,
                "masterid": 1, "started_at": int(now) - 30, "complete_at": int(now), "locks_duration_s": 0,
                "complete": True, "state_string": "build successful", "results": 0,
                "properties": {"owner": ["alice", "Force Build Form"], "scheduler": ["force", "Scheduler"],
                               "got_revision": ["4d2c8e1f0a9b7c6d5e4f3a2b1c0d9e8f7a6b5c4d", "Git"],
                               "buildnumber": [i, "Build"], "reason": ["bench", "Force Build Form"]},
                "sent_at": now, "pad": pad,
            }
            master.mq.produce(("builds", str(i), "update"), payload)

    @defer.inlineCallbacks
    def start() -> defer.Deferred[None]:
        master.config.db.db_url = config["db_url"]
        yield master.db.setup(check_version=False)
        yield master.db.model.upgrade()
        master.db.setup = lambda: None
        yield master.startService()
        if not master.running:
            raise RuntimeError("BuildMaster did not start (see the log above)")
        print(f"READY {args.port}", flush=True)
        import select

        def wait_go() -> None:
            if select.select([sys.stdin], [], [], 0)[0] and sys.stdin.readline().strip() == "go":
                waiting.stop()
                state["t0"] = time.time()
                task.LoopingCall(produce).start(args.interval, now=False)

        waiting = task.LoopingCall(wait_go)
        waiting.start(0.05)

    def failed(f: object) -> None:
        print(f"bb_ws_master: failed to start: {f}", file=sys.stderr, flush=True)
        if reactor.running:
            reactor.stop()

    reactor.callWhenRunning(lambda: start().addErrback(failed))
    reactor.callLater(args.max_time, reactor.stop)
    reactor.run()
    shutil.rmtree(basedir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
