"""Real Buildbot masters publishing through the plugin into the REAL firehose server.

No stand-in anywhere on the path: in-process ``RunMasterBase`` masters (and, in the slow test,
``buildbot``/``buildbot-worker`` processes) run the plugin, which posts to a
:class:`firehose.service.FirehoseServer` with an SQLite journal; what a subscriber sees is read
over the server's own WebSocket (autobahn client) and ``/poll`` endpoints, and the secret checks
read the journal files themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.trial import unittest

from .plugin_testlib import TempDirMixin, quiet_warnings, wait_for
from .realserver_lib import (
    RealServer,
    WSSubscriber,
    builderid,
    check_stream,
    force_build,
    reporter_of,
    run_buildset,
    seqs_by_source,
    spool_segments,
    start_master,
)

quiet_warnings()

from buildbot.config import BuilderConfig  # noqa: E402
from buildbot.plugins import schedulers, steps, util  # noqa: E402
from buildbot.process import buildstep  # noqa: E402
from buildbot.process.results import CANCELLED, FAILURE, SUCCESS  # noqa: E402
from buildbot.secrets.providers.file import SecretInAFile  # noqa: E402

from buildbot_plugin.reporter import FirehoseReporter  # noqa: E402

#: A Buildbot secret (SecretInAFile), used by builds through Interpolate('%(secret:deploy)s').
SECRET = "hunter2-deploy-secret-7f3a9c"
#: The value of a property whose *name* is deny-listed (not a Buildbot secret).
PASSWORD_VALUE = "plain-db-password-51d0e2"
#: A property value inside a change, under a deny-listed name.
CHANGE_KEY_VALUE = "change-api-key-9b8a7c"
#: Only in the step's environment: only the environment-dump filter keeps it off the server.
ENV_ONLY_VALUE = "env-only-value-c4e5f6"
#: Rendered by the reporter from a secret: the ingest token itself.
TOKEN_VALUE = "ingest-token-value-0a1b2c3d"
#: A Buildbot secret no build renders, printed by a step; scrubbed because of ``secret_names``.
SSH_VALUE = "ssh-private-key-body-e7d6c5"
REVISION = "4d2c1b0a9f8e7d6c5b4a39281706f5e4d3c2b1a0"
GOT_REVISION = "0123456789abcdef0123456789abcdef01234567"
BUILDBOT_URL = "http://buildbot.invalid/"


class PublishURL(buildstep.BuildStep):
    """A step that publishes an artifact link (what a step's ``urls`` carry)."""

    name = "publish-url"

    @defer.inlineCallbacks
    def run(self) -> Any:
        yield self.addURL("artifact", "http://artifacts.invalid/bin.tgz")
        return SUCCESS


def _factory(exit_code: int = 0, sleep: float = 0, got_revision: bool = False) -> util.BuildFactory:
    f = util.BuildFactory()
    f.addStep(
        steps.ShellCommand(
            name="test",
            command=f"echo line one; echo ssh {SSH_VALUE} ok; echo oops >&2; sleep {sleep}; exit {exit_code}",
            env={"MY_ENV_SECRET": SECRET, "MY_ENV_PLAIN": ENV_ONLY_VALUE},
        )
    )
    f.addStep(PublishURL())
    f.addStep(steps.SetProperty(name="props", property="db_password", value=PASSWORD_VALUE))
    f.addStep(steps.SetProperty(name="deploy", property="deploy_token", value=util.Interpolate("%(secret:deploy)s")))
    f.addStep(steps.SetProperty(name="innocent", property="innocent",
                                value=util.Interpolate("x-%(secret:deploy)s-y")))
    f.addStep(steps.SetProperty(name="owner", property="owner", value="alice"))
    if got_revision:
        f.addStep(steps.SetProperty(name="got", property="got_revision", value=GOT_REVISION))
    return f


def token_of(master_name: str) -> str:
    """Each master's own ingest token (the server maps a token to one master)."""
    return f"{TOKEN_VALUE}-{master_name}"


def secrets_dir(base: str, master_names: Iterable[str]) -> str:
    """A SecretInAFile directory with the build secrets and each master's ingest token."""
    path = os.path.join(base, "secrets")
    os.makedirs(path, mode=0o700, exist_ok=True)
    values = [("deploy", SECRET), ("ssh_key", SSH_VALUE)]
    values += [(f"firehose_token_{name}", token_of(name)) for name in master_names]
    for name, value in values:
        file = os.path.join(path, name)
        with open(file, "w", encoding="utf-8") as fh:
            fh.write(value + "\n")
        os.chmod(file, 0o600)
    return path


def master_config(
    server: RealServer, master_name: str, secrets: str, buildbot_url: str | None = BUILDBOT_URL,
    step_sleep: float = 0, **reporter_kwargs: Any,
) -> dict[str, Any]:
    """Builders ``linux-build`` (passes, sets got_revision), ``flaky-tests`` (fails), ``slow``
    (for cancelling); a force scheduler and a change scheduler; secrets in files; the reporter
    with the token as a Buildbot secret."""
    builders = [
        BuilderConfig(name="linux-build", workernames=["local1"], tags=["linux", "ci"],
                      factory=_factory(0, sleep=step_sleep, got_revision=True)),
        BuilderConfig(name="flaky-tests", workernames=["local1"], factory=_factory(1, sleep=step_sleep)),
        BuilderConfig(name="slow", workernames=["local1"], factory=_factory(0, sleep=60)),
    ]
    opts: dict[str, Any] = {"flush_interval": 0.05, "heartbeat_interval": 3600.0, "logs": True,
                            "backoff_max": 0.5, "stop_timeout": 2.0}
    opts.update(reporter_kwargs)
    config: dict[str, Any] = {
        "builders": builders,
        "schedulers": [
            schedulers.ForceScheduler(name="force", builderNames=[b.name for b in builders]),
            schedulers.AnyBranchScheduler(name="on-change", treeStableTimer=None,
                                          builderNames=["linux-build", "flaky-tests"]),
        ],
        "secretsProviders": [SecretInAFile(dirname=secrets)],
        "services": [FirehoseReporter(url=server.url, token=util.Secret(f"firehose_token_{master_name}"),
                                      master_name=master_name, **opts)],
    }
    if buildbot_url:
        config["buildbotURL"] = buildbot_url
    return config


def add_change(master: Any, n: int = 0) -> Any:
    """A commit on ``main``: triggers ``linux-build`` and ``flaky-tests`` (one buildset)."""
    return master.data.updates.addChange(
        author="Alice <alice@example.invalid>",
        committer="Alice <alice@example.invalid>",
        branch="main",
        revision=REVISION,
        repository="https://git.example.invalid/app.git",
        project="app",
        codebase="",
        files=["src/app.py", "README.md"],
        comments=f"Fix the frobnicator #{n}",
        revlink=f"https://git.example.invalid/app/commit/{REVISION}",
        properties={"api_key": CHANGE_KEY_VALUE, "ticket": "T-1"},
        category="feature",
        when_timestamp=1_700_000_000,
        src="git",
    )


def first(events: list[dict[str, Any]], type_: str, **match: Any) -> dict[str, Any]:
    """The first event of ``type_`` whose data has every ``match`` field."""
    for e in events:
        if e["type"] == type_ and all(e["data"].get(k) == v for k, v in match.items()):
            return e
    raise AssertionError(f"no {type_} with {match}")


class RealServerTestBase(TempDirMixin, unittest.TestCase):
    """A real server on a fresh journal and a WebSocket subscriber from ``earliest``."""

    timeout = 90
    #: The masters the server knows (each gets its own token, see :func:`token_of`).
    masters: tuple[str, ...] = ("rs-master",)

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.secrets = secrets_dir(self.base, self.masters)
        tokens = {name: token_of(name) for name in self.masters}
        self.server = RealServer(os.path.join(self.base, "journal.sqlite"), tokens)
        yield self.server.start()
        self.addCleanup(self.server.stop)
        self.sub = yield self.subscribe()

    @defer.inlineCallbacks
    def subscribe(self, since: str | None = "earliest", **kw: Any) -> Any:
        sub = WSSubscriber(self.server.ws_url, since=since, **kw)
        self.addCleanup(sub.stop)
        yield sub.start()
        return sub

    @defer.inlineCallbacks
    def master(self, name: str = "rs-master", basedir: str | None = None, **kw: Any) -> Any:
        basedir = basedir or os.path.join(self.base, name)
        tested = yield start_master(self, master_config(self.server, name, self.secrets, **kw), basedir)
        return tested

    @defer.inlineCallbacks
    def journal_matches_subscriber(self) -> Any:
        """The whole journal read from ``earliest`` is exactly what the live subscriber got."""
        stored = yield self.server.read_all()
        yield wait_for(lambda: len(self.sub.events) >= len(stored), what="subscriber caught up")
        self.assertEqual([e["id"] for e in self.sub.events], [e["id"] for e in stored])
        self.assertEqual(self.sub.events, stored)
        return stored


class BuildsTest(RealServerTestBase):
    """Passing, failing and cancelled builds, from a real master to a real WebSocket subscriber."""

    @defer.inlineCallbacks
    def test_builds_reach_websocket_subscriber_with_every_field_in_order(self) -> Any:
        """A commit builds on two builders (pass, fail) and a forced build is cancelled: the
        WebSocket subscriber receives build/step/request/buildset/change/worker events carrying
        every field issue 3 lists, in a coherent order, with seq 1..N; the journal read from
        ``earliest`` equals the live stream."""
        tested = yield self.master()
        master = tested.master
        change_run = yield run_buildset(master, lambda: add_change(master))
        by_builder = {b["builderid"]: b for b in change_run["builds"]}
        ok_id = yield builderid(master, "linux-build")
        bad_id = yield builderid(master, "flaky-tests")
        ok, bad = by_builder[ok_id], by_builder[bad_id]
        self.assertEqual((ok["results"], bad["results"]), (SUCCESS, FAILURE))

        # cancel a running build
        slow_id = yield builderid(master, "slow")
        yield master.data.control("force", {"builderid": slow_id, "reason": "please cancel"},
                                  ("forceschedulers", "force"))
        started = yield wait_for(
            lambda: [e for e in self.sub.of_type("step.started")
                     if e["data"]["builder"] == "slow" and e["data"]["name"] == "test"],
            what="slow build running")
        cancelled_buildid = started[0]["data"]["buildid"]
        yield master.data.control("stop", {"reason": "test cancel"}, ("builds", cancelled_buildid))
        yield wait_for(lambda: len(self.sub.of_type("build.finished")) >= 3, what="three finished builds")
        yield wait_for(lambda: len(self.sub.of_type("buildset.completed")) >= 2, what="two buildsets complete")
        yield wait_for(lambda: len(self.sub.of_type("request.completed")) >= 3, what="three requests complete")

        evs = self.sub.events
        check_stream(self, evs)
        self.assertEqual({e["master"] for e in evs}, {"rs-master"})
        self.assertEqual(len(seqs_by_source(evs)), 1, "one incarnation")
        self.assertEqual(evs[0]["type"], "master.started")
        self.assertEqual(evs[0]["data"]["running"], [])
        self.assertEqual(evs[0]["data"]["url"], BUILDBOT_URL)
        index = {id(e): i for i, e in enumerate(evs)}

        # -- builds ------------------------------------------------------------------------------
        stamp = {"repository": "https://git.example.invalid/app.git", "branch": "main", "revision": REVISION,
                 "project": "app", "codebase": ""}
        for build, result, code, name in ((ok, "success", SUCCESS, "linux-build"),
                                          (bad, "failure", FAILURE, "flaky-tests")):
            fin = first(evs, "build.finished", buildid=build["buildid"])
            d = fin["data"]
            self.assertEqual(d["builder"], name)
            self.assertEqual(d["builderid"], build["builderid"])
            self.assertEqual(d["number"], build["number"])
            self.assertEqual(d["buildid"], build["buildid"])
            self.assertEqual(d["worker"], "local1")
            self.assertIsInstance(d["workerid"], int)
            self.assertIsInstance(d["state"], str)
            self.assertTrue(d["state"])
            self.assertEqual((d["result"], d["results"]), (result, code))
            self.assertTrue(d["complete"])
            self.assertIsInstance(d["started_at"], int | float)
            self.assertIsInstance(d["complete_at"], int | float)
            self.assertLessEqual(d["started_at"], d["complete_at"])
            self.assertEqual(d["duration"], d["complete_at"] - d["started_at"])
            props = d["properties"]
            self.assertEqual(props["owner"], "alice")
            self.assertEqual(props["buildername"], name)
            self.assertEqual(props["branch"], "main")
            self.assertEqual(props["db_password"], "<redacted>")
            self.assertEqual(props["deploy_token"], "<redacted>")
            self.assertEqual(props["innocent"], "x-<secret>-y")
            self.assertTrue(all(not isinstance(v, list) or len(v) != 2 or not isinstance(v[1], str)
                                for v in props.values()), "values, not (value, source) pairs")
            self.assertEqual(len(d["sourcestamps"]), 1)
            self.assertEqual({k: d["sourcestamps"][0][k] for k in stamp}, stamp)
            self.assertEqual(d["branch"], "main")
            self.assertEqual(d["project"], "app")
            self.assertEqual(d["repository"], "https://git.example.invalid/app.git")
            self.assertEqual(d["buildrequestid"], build["buildrequestid"])
            self.assertEqual(d["buildsetid"], change_run["bsid"])
            self.assertEqual(d["url"], f"{BUILDBOT_URL}#/builders/{build['builderid']}/builds/{build['number']}")
            started_ev = first(evs, "build.started", buildid=build["buildid"])
            self.assertEqual(started_ev["data"]["builder"], name)
            self.assertIsNone(started_ev["data"]["result"])
            self.assertFalse(started_ev["data"]["complete"])

            # steps: identity of the build, name, number, result, times, urls
            step_evs = [e for e in evs if e["type"] == "step.finished" and e["data"]["buildid"] == build["buildid"]]
            names = [e["data"]["name"] for e in step_evs]
            self.assertEqual(names, ["worker_preparation", "test", "publish-url", "props", "deploy", "innocent",
                                     "owner", *(["got"] if name == "linux-build" else [])])
            self.assertEqual([e["data"]["number"] for e in step_evs], sorted(e["data"]["number"] for e in step_evs))
            for s in step_evs:
                sd = s["data"]
                self.assertEqual((sd["builder"], sd["builderid"], sd["build_number"], sd["worker"]),
                                 (name, build["builderid"], build["number"], "local1"))
                self.assertEqual(sd["branch"], "main")
                self.assertEqual(sd["build_url"], d["url"])
                self.assertIsInstance(sd["stepid"], int)
                self.assertIsInstance(sd["started_at"], int | float)
                self.assertIsInstance(sd["complete_at"], int | float)
                self.assertIsInstance(sd["duration"], int | float)
                self.assertIn(sd["result"], ("success", "failure"))
                self.assertLess(index[id(started_ev)], index[id(s)])
                self.assertLess(index[id(s)], index[id(fin)])
                started_step = first(evs, "step.started", stepid=sd["stepid"])
                self.assertLess(index[id(started_step)], index[id(s)])
            test_step = step_evs[1]["data"]
            self.assertEqual(test_step["result"], result)
            self.assertEqual(step_evs[2]["data"]["urls"], [{"name": "artifact", "url": "http://artifacts.invalid/bin.tgz"}])

        # got_revision wins at top level; otherwise the source stamp's revision
        self.assertEqual(first(evs, "build.finished", buildid=ok["buildid"])["data"]["revision"], GOT_REVISION)
        self.assertEqual(first(evs, "build.finished", buildid=bad["buildid"])["data"]["revision"], REVISION)
        self.assertEqual(first(evs, "build.finished", buildid=ok["buildid"])["data"]["tags"], ["linux", "ci"])
        self.assertEqual(first(evs, "build.finished", buildid=bad["buildid"])["data"]["tags"], [])

        # the cancelled build
        cfin = first(evs, "build.finished", buildid=cancelled_buildid)["data"]
        self.assertEqual((cfin["result"], cfin["results"]), ("cancelled", CANCELLED))
        self.assertEqual(cfin["builder"], "slow")
        self.assertEqual(cfin["worker"], "local1")
        self.assertIsInstance(cfin["complete_at"], int | float)
        creq = first(evs, "request.completed", buildrequestid=cfin["buildrequestid"])["data"]
        self.assertEqual(creq["result"], "cancelled")
        self.assertIn("please cancel",
                      first(evs, "request.submitted", buildrequestid=cfin["buildrequestid"])["data"]["reason"])

        # -- requests and buildsets: the queue ---------------------------------------------------
        change = first(evs, "change.new")
        bs_sub = first(evs, "buildset.submitted", buildsetid=change_run["bsid"])
        bs_fin = first(evs, "buildset.completed", buildsetid=change_run["bsid"])
        self.assertLess(index[id(change)], index[id(bs_sub)])
        for bs in (bs_sub, bs_fin):
            d = bs["data"]
            self.assertIn("on-change", d["reason"])
            self.assertEqual(d["scheduler"], "on-change", bs["type"])
            self.assertEqual({k: d["sourcestamps"][0][k] for k in stamp}, stamp)
            self.assertEqual((d["branch"], d["revision"]), ("main", REVISION))
            self.assertIsInstance(d["submitted_at"], int | float)
        self.assertEqual(sorted(bs_fin["data"]["builders"]), ["flaky-tests", "linux-build"])
        self.assertEqual((bs_fin["data"]["result"], bs_fin["data"]["complete"]), ("failure", True))
        self.assertIsInstance(bs_fin["data"]["complete_at"], int | float)
        for build, name in ((ok, "linux-build"), (bad, "flaky-tests")):
            brid = build["buildrequestid"]
            sub = first(evs, "request.submitted", buildrequestid=brid)
            claimed = first(evs, "request.claimed", buildrequestid=brid)
            done = first(evs, "request.completed", buildrequestid=brid)
            b_start = first(evs, "build.started", buildid=build["buildid"])
            b_fin = first(evs, "build.finished", buildid=build["buildid"])
            self.assertLess(index[id(bs_sub)], index[id(sub)])
            self.assertLess(index[id(sub)], index[id(claimed)])
            self.assertLess(index[id(claimed)], index[id(b_start)])
            self.assertLess(index[id(b_fin)], index[id(done)])
            self.assertLess(index[id(done)], index[id(bs_fin)])
            for r in (sub, claimed, done):
                rd = r["data"]
                self.assertEqual((rd["builder"], rd["builderid"], rd["buildsetid"]),
                                 (name, build["builderid"], change_run["bsid"]))
                self.assertIn("on-change", rd["reason"])
                self.assertEqual({k: rd["sourcestamps"][0][k] for k in stamp}, stamp)
                self.assertEqual((rd["branch"], rd["revision"]), ("main", REVISION))
                self.assertIsInstance(rd["submitted_at"], int | float)
            self.assertIsNone(sub["data"]["claimed_at"])
            self.assertIsInstance(claimed["data"]["claimed_at"], int | float)
            self.assertTrue(claimed["data"]["claimed"])
            self.assertIsInstance(done["data"]["complete_at"], int | float)
            self.assertEqual(done["data"]["results"], build["results"])

        # -- the change and the worker -----------------------------------------------------------
        cd = change["data"]
        self.assertEqual(cd["author"], "Alice <alice@example.invalid>")
        self.assertEqual((cd["branch"], cd["revision"], cd["project"]), ("main", REVISION, "app"))
        self.assertEqual(cd["repository"], "https://git.example.invalid/app.git")
        self.assertEqual(cd["files"], ["src/app.py", "README.md"])
        self.assertEqual(cd["comments"], "Fix the frobnicator #0")
        self.assertEqual(cd["revlink"], f"https://git.example.invalid/app/commit/{REVISION}")
        self.assertEqual(cd["properties"], {"api_key": "<redacted>", "ticket": "T-1"})
        workers = self.sub.of_type("worker.connected", "worker.disconnected")
        self.assertTrue(workers, "worker events arrive")
        self.assertEqual(workers[0]["data"]["worker"], "local1")

        # the live stream is the journal
        yield self.journal_matches_subscriber()


class TwoMastersTest(RealServerTestBase):
    """Independent masters, each under its own name, into one server."""

    masters = ("alpha", "beta")

    @defer.inlineCallbacks
    def test_two_masters_publish_complete_ordered_streams(self) -> Any:
        """Two in-process masters build at the same time into one server: each one's events
        carry its own name, form their own complete 1..N sequence with coherent builds, and a
        ``master=beta`` subscriber gets exactly beta's events."""
        alpha = yield self.master("alpha")
        beta = yield self.master("beta")

        @defer.inlineCallbacks
        def work(tested: Any, n: int) -> Any:
            change = yield run_buildset(tested.master, lambda: add_change(tested.master, n))
            forced = yield force_build(tested.master, "linux-build")
            return change["builds"] + forced["builds"]

        built = yield defer.gatherResults([work(alpha, 1), work(beta, 2)], consumeErrors=True)
        for name, builds in zip(("alpha", "beta"), built, strict=True):
            self.assertEqual(len(builds), 3)
            yield wait_for(
                lambda name=name: len([e for e in self.sub.of_type("build.finished") if e["master"] == name]) >= 3
                and len([e for e in self.sub.of_type("buildset.completed") if e["master"] == name]) >= 2,
                what=f"{name}'s builds and buildsets complete")
        beta_only = yield self.subscribe(filter={"master": "beta"})
        yield alpha.shutdown()
        yield beta.shutdown()
        for name in ("alpha", "beta"):
            yield wait_for(lambda name=name: any(e["master"] == name for e in self.sub.of_type("master.stopped")),
                           what=f"{name} stopped")
        stored = yield self.journal_matches_subscriber()
        check_stream(self, stored)
        self.assertEqual({m for m, _ in seqs_by_source(stored)}, {"alpha", "beta"})
        self.assertEqual(len(seqs_by_source(stored)), 2, "one incarnation each")

        for name, builds in zip(("alpha", "beta"), built, strict=True):
            mine = [e for e in stored if e["master"] == name]
            self.assertEqual(mine[0]["type"], "master.started")
            self.assertEqual(mine[-1]["type"], "master.stopped")
            self.assertEqual(mine[-1]["data"]["last_seq"], len(mine))
            self.assertEqual(mine[-1]["data"]["dropped"], 0)
            finished = {e["data"]["buildid"]: e["data"] for e in mine if e["type"] == "build.finished"}
            self.assertEqual(sorted(finished), sorted(b["buildid"] for b in builds))
            for b in builds:
                d = finished[b["buildid"]]
                self.assertEqual((d["number"], d["results"], d["worker"]), (b["number"], b["results"], "local1"))
                self.assertTrue([e for e in mine if e["type"] == "build.started"
                                 and e["data"]["buildid"] == b["buildid"]])
            comments = [e["data"]["comments"] for e in mine if e["type"] == "change.new"]
            self.assertEqual(comments, [f"Fix the frobnicator #{1 if name == 'alpha' else 2}"])

        yield wait_for(lambda: len(beta_only.events) >= len([e for e in stored if e["master"] == "beta"]),
                       what="beta subscriber caught up")
        self.assertEqual(beta_only.events, [e for e in stored if e["master"] == "beta"])
        health = yield self.server.get_json("/health")
        for name in ("alpha", "beta"):
            self.assertEqual(health["masters"][name]["last_seq"], len([e for e in stored if e["master"] == name]))


class ServerRestartTest(RealServerTestBase):
    """The server goes away while builds run, and comes back."""

    @defer.inlineCallbacks
    def test_server_stopped_while_builds_run_every_event_once_in_order(self) -> Any:
        """While two builds run, the server stores a batch and stops before the master hears
        the answer; the builds finish and a third build runs entirely while it is down; then
        it restarts on the same port and journal.  The master resends (the server counts the
        duplicates and drops them) and every event is stored exactly once and in order (seq
        1..N without a gap or a duplicate), every build has started and finished, and the
        WebSocket subscriber, resuming after its last event, saw the same stream."""
        tested = yield self.master(step_sleep=0.5)
        master = tested.master
        reporter = reporter_of(master)
        real_sender = reporter.outbox.sender
        lose = {"armed": False, "fired": False}

        @defer.inlineCallbacks
        def sender(body: bytes) -> Any:
            answer = yield real_sender(body)
            if lose["armed"] and not lose["fired"] and answer[0] == 200:
                # The batch is durable in the journal; its acknowledgement never arrives.
                lose["fired"] = True
                yield self.server.stop()
                raise ConnectionLost("the server stopped before answering")
            return answer

        reporter.outbox.sender = sender
        running = run_buildset(master, lambda: add_change(master))
        yield wait_for(lambda: len([e for e in self.sub.of_type("step.started") if e["data"]["name"] == "test"]) >= 2,
                       what="both builds running")
        lose["armed"] = True
        yield wait_for(lambda: lose["fired"] and not self.server.running, what="the server stopped mid-delivery")
        change_run = yield running
        forced = yield force_build(master, "flaky-tests")
        self.assertGreater(reporter.outbox.pending, 0, "events wait for the server")
        self.assertTrue(reporter.outbox.stats["failures"], "the plugin saw the outage")
        seen_before = len(self.sub.events)

        yield self.server.start()
        builds = change_run["builds"] + forced["builds"]
        yield wait_for(lambda: len(self.sub.of_type("build.finished")) >= 3
                       and len(self.sub.of_type("buildset.completed")) >= 2, what="all builds delivered")
        yield wait_for(lambda: reporter.outbox.pending == 0, what="outbox drained")
        self.assertGreater(len(self.sub.events), seen_before)
        self.assertGreaterEqual(self.sub.connections, 2, "the subscriber reconnected")
        self.assertFalse([m for m in self.sub.control if m.get("type") == "gap"], "no gap")
        self.assertGreater(self.server.server.ingest_stats.duplicates["rs-master"], 0, "the lost batch was resent")

        stored = yield self.journal_matches_subscriber()
        check_stream(self, stored)
        self.assertEqual(len(seqs_by_source(stored)), 1)
        keys = [(e["master"], e["incarnation"], e["seq"]) for e in stored]
        self.assertEqual(len(keys), len(set(keys)), "exactly once")
        self.assertEqual(stored[-1]["seq"], reporter.seq, "everything the master numbered is stored")
        for b in builds:
            types = [e["type"] for e in stored if e["type"].startswith("build.") and e["data"]["buildid"] == b["buildid"]]
            self.assertEqual((types[0], types[-1]), ("build.started", "build.finished"), types)
        for b in builds:
            brid = b["buildrequestid"]
            self.assertEqual([e["type"] for e in stored if e["type"].startswith("request.")
                              and e["data"]["buildrequestid"] == brid],
                             ["request.submitted", "request.claimed", "request.completed"])


class SpoolRestartTest(RealServerTestBase):
    """The disk spool outlives the master while the server is away."""

    @defer.inlineCallbacks
    def test_spool_survives_master_restart_with_server_down(self) -> Any:
        """Server down, a build runs, the master stops (its events go to the spool), starts again
        (server still down) and runs another build; once the server is back everything is
        delivered in order: the whole first incarnation, ending in master.stopped, then the
        second; the spool is emptied and nothing was dropped."""
        basedir = os.path.join(self.base, "spooling-master")
        spool = os.path.join(basedir, "firehose-spool")
        first_master = yield self.master(basedir=basedir, spool_after=0.0)
        yield force_build(first_master.master, "linux-build")
        yield wait_for(lambda: self.sub.of_type("build.finished"), what="first build delivered")
        first_inc = self.sub.events[0]["incarnation"]

        yield self.server.stop()
        yield run_buildset(first_master.master, lambda: add_change(first_master.master))
        yield first_master.shutdown()
        self.assertTrue(spool_segments(spool), "undelivered events are on disk")

        second_master = yield self.master(basedir=basedir, spool_after=0.0)
        reporter = reporter_of(second_master.master)
        self.assertNotEqual(reporter.incarnation, first_inc)
        yield force_build(second_master.master, "flaky-tests")
        self.assertGreater(reporter.outbox.spooled, 0, "the old spool is still waiting")

        yield self.server.start()
        yield wait_for(lambda: any(e["incarnation"] == reporter.incarnation and e["type"] == "build.finished"
                                   for e in self.sub.events), what="second incarnation's build delivered")
        yield wait_for(lambda: reporter.outbox.pending == 0, what="outbox drained")
        yield wait_for(lambda: not spool_segments(spool), what="spool emptied")
        stored = yield self.journal_matches_subscriber()
        check_stream(self, stored)
        incs = [e["incarnation"] for e in stored]
        switch = incs.index(reporter.incarnation)
        self.assertEqual(set(incs[:switch]), {first_inc}, "all of the first incarnation first")
        self.assertEqual(set(incs[switch:]), {reporter.incarnation})
        old, new = stored[:switch], stored[switch:]
        self.assertEqual(old[0]["type"], "master.started")
        self.assertEqual(old[-1]["type"], "master.stopped")
        self.assertEqual(old[-1]["data"]["last_seq"], len(old))
        self.assertEqual(len([e for e in old if e["type"] == "build.finished"]), 3)
        self.assertEqual(len([e for e in old if e["type"] == "buildset.completed"]), 2)
        self.assertEqual(new[0]["type"], "master.started")
        self.assertEqual([e["data"]["result"] for e in new if e["type"] == "build.finished"], ["failure"])
        self.assertFalse(os.path.exists(os.path.join(spool, "dropped.jsonl")), "nothing dropped")


class SecretsTest(RealServerTestBase):
    """Nothing secret reaches the server's journal."""

    @defer.inlineCallbacks
    def test_secrets_and_environment_dump_never_reach_the_journal(self) -> Any:
        """With logs on, builds that render a Buildbot secret, set a deny-listed property, run
        with secret values in their environment, print a configured secret and come from a
        change with a deny-listed property: none of those values (nor the ingest token, itself
        a secret) is anywhere in the journal - not in its files, not in what ``/poll`` replays -
        while the redacted placeholders and ordinary log lines are."""
        tested = yield self.master(secret_names=["ssh_key"])
        master = tested.master
        yield run_buildset(master, lambda: add_change(master))
        yield force_build(master, "linux-build")
        yield tested.shutdown()
        yield wait_for(lambda: self.sub.of_type("master.stopped"), what="master stopped")
        stored = yield self.server.read_all()
        self.assertEqual(len(stored), len(self.sub.events))
        replayed = repr(stored)
        raw = self.server.journal_bytes()
        self.assertIn(b"build.finished", raw, "the journal files hold the events")
        for secret in (SECRET, PASSWORD_VALUE, CHANGE_KEY_VALUE, ENV_ONLY_VALUE, TOKEN_VALUE, SSH_VALUE,
                       "MY_ENV_SECRET", "MY_ENV_PLAIN"):
            self.assertNotIn(secret, replayed)
            self.assertNotIn(secret.encode(), raw)
        env = os.environ.get("PATH", "")
        lines = [ln for e in stored if e["type"] == "log.lines" for ln in e["data"]["lines"]]
        self.assertFalse([ln for ln in lines if ln.startswith("  ") and "=" in ln], "no environment dump lines")
        if len(env) > 8:
            self.assertNotIn(env.encode(), raw)

        # positive controls: the things around the secrets did arrive
        self.assertIn("line one", lines)
        self.assertIn(" environment:", lines)
        self.assertIn("ssh <secret> ok", lines)
        removed = sum(e["data"]["removed_lines"] for e in stored if e["type"] == "log.finished")
        self.assertGreater(removed, 2)
        fins = [e["data"] for e in stored if e["type"] == "build.finished"]
        self.assertEqual(len(fins), 3)
        for d in fins:
            self.assertEqual(d["properties"]["db_password"], "<redacted>")
            self.assertEqual(d["properties"]["deploy_token"], "<redacted>")
            self.assertEqual(d["properties"]["innocent"], "x-<secret>-y")
        change = first(stored, "change.new")["data"]
        self.assertEqual(change["properties"]["api_key"], "<redacted>")


@pytest.mark.slow
class RealProcessesTest(TempDirMixin, unittest.TestCase):
    """``buildbot`` and ``buildbot-worker`` processes (the demo's setup) and the real server."""

    timeout = 150

    @defer.inlineCallbacks
    def test_buildbot_processes_publish_into_real_server(self) -> Any:
        """A real master process with the plugin and a real worker process build invented
        commits; a WebSocket subscriber of the real server sees the change, the worker, complete
        and coherent builds with branch/revision/properties and log lines, then master.stopped
        on SIGTERM; the journal replayed from ``earliest`` is the same stream."""
        from buildbot_plugin.demo.__main__ import create
        from buildbot_plugin.demo.__main__ import start as start_process
        from buildbot_plugin.demo.__main__ import stop as stop_processes

        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        token = token_of("proc-master")
        server = RealServer(os.path.join(base, "journal.sqlite"), {"proc-master": token})
        yield server.start()
        self.addCleanup(server.stop)
        sub = WSSubscriber(server.ws_url)
        self.addCleanup(sub.stop)
        yield sub.start()

        master_dir, worker_dir = create(os.path.join(base, "demo"), server.url, token, "proc-master", interval=2)
        children = [start_process(master_dir)]
        self.addCleanup(stop_processes, children)
        yield wait_for(lambda: sub.of_type("master.started"), timeout=60, what="master.started")
        children.append(start_process(worker_dir))
        yield wait_for(lambda: sub.of_type("build.finished"), timeout=90, what="a finished build")
        # SIGTERM without blocking (this reactor also runs the server), the master first: a worker
        # leaving while the master starts a build can leave that build stuck forever in Buildbot
        # 4.3 ('NoneType' object has no attribute 'workername' in startBuild), and a clean master
        # shutdown waits for it.
        children[0].terminate()
        try:
            yield wait_for(lambda: sub.of_type("master.stopped"), timeout=30, what="master.stopped")
            yield wait_for(lambda: children[0].poll() is not None, timeout=30, what="master exits")
            children[1].terminate()
            yield wait_for(lambda: children[1].poll() is not None, timeout=30, what="worker exits")
        except AssertionError as exc:
            with open(os.path.join(master_dir, "twistd.log"), encoding="utf-8", errors="replace") as fh:
                tail = fh.read()[-6000:]
            types = [e["type"] for e in sub.events[-15:]]
            raise AssertionError(f"{exc}; exit codes {[p.poll() for p in children]}; last events {types}; "
                                 f"master log:\n{tail}") from None

        stored = yield server.read_all()
        self.assertEqual(sub.events, stored)
        check_stream(self, stored)
        self.assertEqual({e["master"] for e in stored}, {"proc-master"})
        self.assertEqual(stored[-1]["type"], "master.stopped")
        self.assertEqual(stored[-1]["data"]["last_seq"], len(stored))
        fin = first(stored, "build.finished")["data"]
        self.assertIn(fin["builder"], ("linux-build", "flaky-tests", "try-linux"))
        self.assertIn(fin["result"], ("success", "failure"))
        self.assertIn(fin["branch"], ("main", "try"))
        self.assertEqual(len(fin["revision"]), 40)
        self.assertEqual(fin["worker"], "demo-worker")
        self.assertEqual(fin["url"], f"http://127.0.0.1:8010/#/builders/{fin['builderid']}/builds/{fin['number']}")
        self.assertTrue(fin["properties"]["binary_url"].startswith("https://artifacts.example.invalid/"))
        steps_of_build = [e["data"]["name"] for e in stored
                          if e["type"] == "step.finished" and e["data"]["buildid"] == fin["buildid"]]
        self.assertEqual(steps_of_build, ["worker_preparation", "checkout", "compile", "test", "upload"])
        changes = [e["data"] for e in stored if e["type"] == "change.new"]
        self.assertIn(fin["revision"], [c["revision"] for c in changes], "the build is of a published change")
        self.assertTrue(all(c["author"] and c["files"] and c["comments"] for c in changes))
        self.assertEqual(first(stored, "worker.connected")["data"]["worker"], "demo-worker")
        lines = [ln for e in stored if e["type"] == "log.lines" for ln in e["data"]["lines"]]
        self.assertIn("test_0 ... ok", lines)
        self.assertFalse([ln for ln in lines if ln.startswith("  PATH=")])
        self.assertNotIn(token.encode(), server.journal_bytes())
