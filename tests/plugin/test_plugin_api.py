"""The query API answering from state built by a real Buildbot master's events.

A real in-process master runs two commits through ``linux-build`` (passes) and ``flaky-tests``
(fails) and publishes through the plugin into the real server; the /api answers must then
describe exactly those builds: the pushlog, the last green revision, one build with its steps,
step timings, trends, an empty queue and no running build, all at the stream's head cursor.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from .plugin_testlib import wait_for
from .realserver_lib import run_buildset
from .test_plugin_realserver import GOT_REVISION, RealServerTestBase

REV_A = "a" * 40
REV_B = "b" * 40


def commit(master: Any, revision: str, n: int) -> Any:
    return master.data.updates.addChange(
        author="Ann <ann@example.invalid>", committer=None, branch="main", revision=revision,
        repository="https://git.example.invalid/app.git", project="app", codebase="",
        files=["a.py"], comments=f"change {n}", revlink=None, properties={}, category=None,
        when_timestamp=1_700_000_000 + n, src="git",
    )


class ApiFromRealMasterTest(RealServerTestBase):
    """Two commits built on a real master, then every API question asked of the server."""

    @defer.inlineCallbacks
    def test_api_describes_the_builds_the_master_ran(self) -> Any:
        """Pushlog (each revision done, failed overall, green on linux alone), last green (all
        builders, and narrowed to one), every build of a revision with its status, a build
        with steps, properties and links, step timings, trend, queue, running and the cursor
        all agree with what the master did."""
        tested = yield self.master()
        master = tested.master
        for n, rev in enumerate((REV_A, REV_B)):
            yield run_buildset(master, lambda rev=rev, n=n: commit(master, rev, n))
        yield wait_for(lambda: len(self.sub.of_type("build.finished")) >= 4, what="four finished builds")
        yield wait_for(lambda: len(self.sub.of_type("buildset.completed")) >= 2, what="two buildsets done")
        api = self.server.get_json

        revs = yield api("/api/revisions", branch="main")
        self.assertEqual([r["revision"] for r in revs["revisions"]], [REV_B, REV_A])
        for row in revs["revisions"]:
            cells = row["builders"]
            self.assertEqual((cells["linux-build"]["state"], cells["linux-build"]["result"]), ("finished", "success"))
            self.assertEqual((cells["flaky-tests"]["state"], cells["flaky-tests"]["result"]), ("finished", "failure"))
            self.assertEqual((row["author"], row["green"]), ("Ann <ann@example.invalid>", False))
            self.assertEqual((row["state"], row["result"]), ("done", "failure"))
        self.assertNotIn(GOT_REVISION, [r["revision"] for r in revs["revisions"]])
        narrowed = yield api("/api/revisions", branch="main", builder="linux-*")
        self.assertEqual([(r["state"], r["result"], r["green"]) for r in narrowed["revisions"]],
                         [("done", "success", True)] * 2)

        # Every build of a revision in one question; the builds checked out GOT_REVISION but
        # are found by the revision they were asked to build.
        of_a = yield api("/api/builds", revision=REV_A)
        self.assertEqual(sorted((b["builder"], b["status"], b["result"]) for b in of_a["builds"]),
                         [("flaky-tests", "finished", "failure"), ("linux-build", "finished", "success")])

        green = yield api("/api/lastgreen", branch="main")
        self.assertIsNone(green["revision"])
        green = yield api("/api/lastgreen", branch="main", builder="linux-*")
        self.assertEqual(green["revision"]["revision"], REV_B)
        self.assertEqual((green["revision"]["state"], green["revision"]["result"]), ("done", "success"))

        failures = yield api("/api/builds", builder="flaky-tests", result="failure")
        self.assertEqual(len(failures["builds"]), 2)
        newest = failures["builds"][0]
        one = yield api(f"/api/builds/rs-master/{newest['buildid']}")
        build = one["build"]
        self.assertEqual((build["builder"], build["result"], build["worker"]), ("flaky-tests", "failure", "local1"))
        self.assertEqual(build["revision"], REV_B)
        steps = {s["name"]: s for s in build["steps"]}
        self.assertEqual(steps["test"]["result"], "failure")
        self.assertEqual(steps["publish-url"]["urls"], [{"name": "artifact", "url": "http://artifacts.invalid/bin.tgz"}])
        self.assertEqual(build["properties"]["owner"], "alice")
        self.assertEqual(build["properties"]["db_password"], "<redacted>")
        self.assertTrue(build["url"].startswith("http://buildbot.invalid/#/builders/"))

        timings = yield api("/api/steps", builder="flaky-tests")
        by_step = {r["step"]: r for r in timings["steps"]}
        self.assertEqual(by_step["test"]["count"], 2)
        self.assertLessEqual(by_step["test"]["p50"], by_step["test"]["max"])
        trend = yield api("/api/trend", builder="linux-build")
        (series,) = trend["builders"]
        self.assertEqual(sum(b["count"] for b in series["buckets"]), 2)

        builders = yield api("/api/builders")
        tags = {b["builder"]: b["tags"] for b in builders["builders"]}
        self.assertEqual(tags["linux-build"], ["linux", "ci"])
        queue = yield api("/api/queue")
        running = yield api("/api/running")
        self.assertEqual((queue["requests"], running["builds"]), ([], []))
        health = yield api("/health")
        self.assertEqual(running["cursor"], health["cursor"])
        masters = yield api("/api/masters")
        self.assertEqual([m["master"] for m in masters["masters"]], ["rs-master"])


class WaitOnRealBuildsTest(RealServerTestBase):
    """``firehose wait`` (the real command, as a process) on a real master's builds."""

    @defer.inlineCallbacks
    def test_wait_exits_0_1_2_as_real_builds_finish(self) -> Any:
        """Started before the commit is even pushed, ``wait --builder linux-build`` exits 0 once
        that build succeeds; ``wait`` over all builders exits 1 (flaky-tests failed); a
        revision nobody builds times out with 2."""
        import sys

        from twisted.internet import reactor
        from twisted.internet.utils import getProcessOutputAndValue

        def wait(*args: str) -> Any:
            return getProcessOutputAndValue(
                sys.executable, ["-m", "firehose.cli", "wait", self.server.url, *args], reactor=reactor)

        tested = yield self.master()
        master = tested.master
        early = wait("--revision", REV_A, "--builder", "linux-build", "--timeout", "60")
        yield wait_for(lambda: self.server.server.hub.stats.subscribers["longpoll"] >= 1,
                       what="the waiting process to subscribe")
        yield run_buildset(master, lambda: commit(master, REV_A, 0))
        out, err, code = yield early
        self.assertEqual(code, 0, (out, err))
        self.assertIn(b"linux-build", out)
        out, err, code = yield wait("--revision", REV_A, "--timeout", "60")
        self.assertEqual(code, 1, (out, err))
        self.assertIn(b"failure", out)
        out, err, code = yield wait("--revision", "c" * 40, "--timeout", "1")
        self.assertEqual(code, 2, (out, err))
