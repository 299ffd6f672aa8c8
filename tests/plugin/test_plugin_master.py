"""In-process real Buildbot masters (``RunMasterBase``) publishing to an ingest server.

Each test runs real builds (passing, failing, cancelled) and checks what reached the server:
every field a subscriber needs, a coherent order per build, sequence numbers without holes,
redaction, and that nothing is sent twice.
"""

from __future__ import annotations

import os
from typing import Any

from buildbot.test.util.integration import RunMasterBase
from twisted.internet import defer

from firehose.schema import validate_event

from .plugin_testlib import StubIngest, TempDirMixin, quiet_warnings, wait_for

quiet_warnings()

from buildbot.config import BuilderConfig  # noqa: E402
from buildbot.plugins import schedulers, steps, util  # noqa: E402
from buildbot.process.results import CANCELLED  # noqa: E402

from buildbot_plugin.reporter import FirehoseReporter  # noqa: E402

SECRET = "hunter2-very-secret-value"


def _factory(exit_code: int = 0, sleep: float = 0) -> util.BuildFactory:
    f = util.BuildFactory()
    f.addStep(
        steps.ShellCommand(
            name="test",
            command=f"echo line one; echo line two; echo oops >&2; sleep {sleep}; exit {exit_code}",
            env={"MY_ENV_SECRET": SECRET},
        )
    )
    f.addStep(steps.SetPropertyFromCommand(name="publish", command="echo http://artifacts.invalid/bin.tgz",
                                           property="binary_url"))
    f.addStep(steps.SetProperty(property="deploy_token", value=util.Interpolate("%(secret:deploy)s")))
    f.addStep(steps.SetProperty(property="innocent", value=util.Interpolate("x-%(secret:deploy)s-y")))
    return f


def master_config(ingest: StubIngest, **reporter_kwargs: Any) -> dict[str, Any]:
    """Three builders (passing, failing, slow for cancelling) and the reporter."""
    from buildbot.test.fake.secrets import FakeSecretStorage

    builders = [
        BuilderConfig(name="linux-build", workernames=["local1"], factory=_factory(0), tags=["linux", "ci"]),
        BuilderConfig(name="flaky-tests", workernames=["local1"], factory=_factory(1)),
        BuilderConfig(name="slow", workernames=["local1"], factory=_factory(0, sleep=30)),
    ]
    opts = {"flush_interval": 0.05, "heartbeat_interval": 3600.0, "logs": True}
    opts.update(reporter_kwargs)
    return {
        "builders": builders,
        "schedulers": [schedulers.ForceScheduler(name="force", builderNames=[b.name for b in builders])],
        "secretsProviders": [FakeSecretStorage(secretdict={"deploy": SECRET})],
        "services": [FirehoseReporter(url=ingest.url, token=ingest.token, master_name="test-master", **opts)],
        "buildbotURL": "http://buildbot.invalid/",
    }


class PluginMasterTest(TempDirMixin, RunMasterBase):
    """A real master with a LocalWorker; the reporter posts to a :class:`StubIngest`."""

    timeout = 90

    def setUp(self) -> None:
        self.ingest = StubIngest()
        self.ingest.start()
        self.addCleanup(self.ingest.stop)

    @defer.inlineCallbacks
    def _builderid(self, name: str) -> Any:
        builders = yield self.master.data.get(("builders",))
        return next(b["builderid"] for b in builders if b["name"] == name)

    @defer.inlineCallbacks
    def _force(self, name: str, **params: Any) -> Any:
        bid = yield self._builderid(name)
        build = yield self.doForceBuild(wantProperties=True, forceParams={"builderid": bid, **params})
        return build

    def _build_events(self, buildid: int) -> list[dict[str, Any]]:
        return [e for e in self.ingest.events if e["data"].get("buildid") == buildid]

    def _check_stream(self) -> None:
        evs = self.ingest.events
        for e in evs:
            validate_event(e)
        by_inc: dict[str, list[int]] = {}
        for e in evs:
            by_inc.setdefault(e["incarnation"], []).append(e["seq"])
        for seqs in by_inc.values():
            self.assertEqual(seqs, list(range(1, len(seqs) + 1)), "in order, no holes, no repeats")

    @defer.inlineCallbacks
    def test_builds_arrive_with_full_detail(self) -> Any:
        """Passing and failing builds arrive in order with every field subscribers filter on."""
        yield self.setup_master(master_config(self.ingest))
        ok = yield self._force("linux-build")
        bad = yield self._force("flaky-tests")
        yield wait_for(lambda: len(self.ingest.of_type("build.finished")) >= 2, what="two finished builds")
        yield wait_for(lambda: len(self.ingest.of_type("buildset.completed")) >= 2, what="buildsets complete")
        self._check_stream()
        evs = self.ingest.events
        self.assertEqual(evs[0]["type"], "master.started")
        self.assertEqual(evs[0]["data"]["running"], [])

        for build, result in ((ok, "success"), (bad, "failure")):
            mine = self._build_events(build["buildid"])
            types = [e["type"] for e in mine if e["type"].startswith("build.")]
            self.assertEqual(types[0], "build.started")
            self.assertEqual(types[-1], "build.finished")
            self.assertEqual(types.count("build.started"), 1)
            self.assertEqual(types.count("build.finished"), 1)
            # every step and log event comes after build.started and before build.finished
            started = mine.index(next(e for e in mine if e["type"] == "build.started"))
            finished = mine.index(next(e for e in mine if e["type"] == "build.finished"))
            for i, e in enumerate(mine):
                if e["type"].startswith(("step.", "log.")):
                    self.assertTrue(started < i < finished, e["type"])
            fin = mine[finished]["data"]
            self.assertEqual(fin["result"], result)
            self.assertEqual(fin["number"], build["number"])
            self.assertIsInstance(fin["started_at"], int | float)
            self.assertIsInstance(fin["complete_at"], int | float)
            self.assertEqual(fin["worker"], "local1")
            self.assertEqual(fin["properties"]["binary_url"], "http://artifacts.invalid/bin.tgz")
            self.assertEqual(fin["properties"]["buildername"], fin["builder"])
            self.assertIsNotNone(fin["buildrequestid"])
            self.assertIsNotNone(fin["buildsetid"])
            self.assertEqual(len(fin["sourcestamps"]), 1)
            self.assertTrue(fin["url"].startswith("http://buildbot.invalid/#/builders/"))
            step_names = [e["data"]["name"] for e in mine if e["type"] == "step.finished"]
            self.assertIn("test", step_names)
        fin_ok = next(e for e in self._build_events(ok["buildid"]) if e["type"] == "build.finished")["data"]
        self.assertEqual(fin_ok["builder"], "linux-build")
        self.assertEqual(fin_ok["tags"], ["linux", "ci"])

        # the queue: submitted, claimed, completed, with builder and reason
        reqs = [e for e in evs if e["type"].startswith("request.")]
        self.assertEqual({e["type"] for e in reqs}, {"request.submitted", "request.claimed", "request.completed"})
        sub = next(e for e in reqs if e["type"] == "request.submitted")["data"]
        self.assertEqual(sub["builder"], "linux-build")
        self.assertIn("force", sub["reason"])
        self.assertIsInstance(sub["submitted_at"], int | float)
        self.assertEqual(len(self.ingest.of_type("buildset.submitted")), 2)
        self.assertEqual(len(self.ingest.of_type("buildset.completed")), 2)

        # logs: lines arrive, the environment dump does not
        lines = [ln for e in self.ingest.of_type("log.lines") for ln in e["data"]["lines"]]
        self.assertIn("line one", lines)
        self.assertIn("oops", lines)
        self.assertIn(" environment:", lines)
        self.assertFalse([ln for ln in lines if "MY_ENV_SECRET" in ln or "PATH=" in ln], "env dump removed")

    @defer.inlineCallbacks
    def test_secrets_never_sent(self) -> Any:
        """Secret values, deny-listed properties and the token itself never reach the server."""
        yield self.setup_master(master_config(self.ingest))
        yield self._force("linux-build")
        yield wait_for(lambda: self.ingest.of_type("build.finished"), what="build finished")
        blob = "".join(str(b) for b in self.ingest.batches)
        self.assertNotIn(SECRET, blob)
        self.assertNotIn(self.ingest.token, blob)
        fin = self.ingest.of_type("build.finished")[0]["data"]
        self.assertEqual(fin["properties"]["deploy_token"], "<redacted>")
        self.assertEqual(fin["properties"]["innocent"], "x-<secret>-y")

    @defer.inlineCallbacks
    def test_cancelled_build(self) -> Any:
        """A build stopped while running finishes as cancelled, its request completes."""
        yield self.setup_master(master_config(self.ingest))
        bid = yield self._builderid("slow")
        yield self.master.data.control("force", {"builderid": bid}, ("forceschedulers", "force"))
        yield wait_for(
            lambda: any(e["data"].get("name") == "test" for e in self.ingest.of_type("step.started")),
            what="slow step started",
        )
        build = self.ingest.of_type("build.started")[0]["data"]
        yield self.master.data.control("stop", {"reason": "test cancel"}, ("builds", build["buildid"]))
        yield wait_for(lambda: self.ingest.of_type("build.finished"), what="build finished")
        yield wait_for(lambda: self.ingest.of_type("request.completed"), what="request completed")
        fin = self.ingest.of_type("build.finished")[0]["data"]
        self.assertEqual(fin["results"], CANCELLED)
        self.assertEqual(fin["result"], "cancelled")
        self._check_stream()

    @defer.inlineCallbacks
    def test_stop_flushes_and_spool_survives_restart(self) -> Any:
        """With the server away, a stopping master spools; the next start delivers it first."""
        basedir = os.path.abspath(self.mktemp())
        yield self.setup_master(master_config(self.ingest, spool_after=0.0), basedir=basedir)
        yield self._force("linux-build")
        yield wait_for(lambda: self.ingest.of_type("build.finished"), what="first build delivered")
        yield self.ingest.stop()
        yield self._force("flaky-tests")
        yield self.tested_master.shutdown()
        spool = os.path.join(basedir, "firehose-spool")
        segments = [n for n in os.listdir(spool) if n.endswith(".jsonl") and n != "dropped.jsonl"]
        self.assertTrue(segments, "undelivered events are on disk")
        first_inc = self.ingest.events[0]["incarnation"]
        delivered_before = len(self.ingest.events)

        self.ingest.start()
        yield self.setup_master(master_config(self.ingest), basedir=basedir)
        yield wait_for(
            lambda: any(e["type"] == "master.started" and e["incarnation"] != first_inc for e in self.ingest.events),
            what="second incarnation started",
        )
        evs = self.ingest.events
        old = [e for e in evs if e["incarnation"] == first_inc]
        self.assertGreater(len(old), delivered_before)
        self.assertIn("master.stopped", [e["type"] for e in old])
        # all of the first incarnation came before anything of the second
        first_new = next(i for i, e in enumerate(evs) if e["incarnation"] != first_inc)
        self.assertTrue(all(e["incarnation"] == first_inc for e in evs[:first_new]))
        self.assertTrue(all(e["incarnation"] != first_inc for e in evs[first_new:]))
        self._check_stream()
        self.assertFalse(os.path.exists(os.path.join(spool, "dropped.jsonl")))
