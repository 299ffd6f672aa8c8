"""A real Buildbot master cut off from the firehose for a while, then reconnected.

The master (``RunMasterBase``'s real ``BuildMaster``) and its worker (a real ``buildbot_worker``
over PB on 127.0.0.1) run in this test's reactor with the ``FirehoseReporter``; the firehose is
a real ``firehose serve`` process; between them a loopback TCP proxy (tests/faults/conftest.py
``Proxy``) forwards, refuses, blackholes or loses the answers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from tests.e2e.conftest import ServerProcess, http_get
from tests.plugin.plugin_testlib import TempDirMixin, quiet_warnings, wait_for
from tests.plugin.realserver_lib import check_stream, force_build, reporter_of, start_master

from .conftest import Proxy, count, read_journal

quiet_warnings()

from buildbot.config import BuilderConfig  # noqa: E402
from buildbot.plugins import schedulers, steps, util  # noqa: E402

from buildbot_plugin.reporter import FirehoseReporter  # noqa: E402

MASTER = "outage-master"
TOKEN = "tok-outage-master"
#: The outage kinds, in order; each lasts at least OUTAGE_SECONDS and until a build has run
#: during it and the plugin has seen a delivery fail.
PHASES = ("refuse", "blackhole", "lose_answers")
OUTAGE_SECONDS = float(os.environ.get("FIREHOSE_FAULT_OUTAGE_SECONDS", "2.0"))


def _config(url: str) -> dict[str, Any]:
    f = util.BuildFactory()
    f.addStep(steps.ShellCommand(name="hello", command="echo hello; echo world >&2"))
    return {
        "builders": [BuilderConfig(name="trivial", workernames=["local1"], factory=f)],
        "schedulers": [schedulers.ForceScheduler(name="force", builderNames=["trivial"])],
        "services": [FirehoseReporter(
            url=url, token=TOKEN, master_name=MASTER, logs=True, flush_interval=0.05,
            heartbeat_interval=3600.0, backoff_max=0.5, request_timeout=1.5, spool_after=1.0,
            stop_timeout=2.0,
        )],
    }


def _metric(base: str, name: str, **labels: str) -> float:
    status, body = http_get(base + "/metrics", timeout=10)
    assert status == 200, body
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in body.decode().splitlines():
        key, _, value = line.rpartition(" ")
        if key == want:
            return float(value)
    return 0.0


@pytest.mark.slow
class MasterOutageTest(TempDirMixin, unittest.TestCase):
    """Builds go on while the link to the firehose is down; every event arrives exactly once."""

    timeout = 240

    def setUp(self) -> None:
        base = Path(self.mktemp())
        base.mkdir(parents=True)
        self.base = base
        self.server = ServerProcess(base / "journal.sqlite", base / "server.log", {MASTER: TOKEN},
                                    ("--synchronous", "FULL"))
        self.server.start()
        self.addCleanup(self.server.kill)
        self.proxy = Proxy(self.server.port)
        self.addCleanup(self.proxy.close)

    @defer.inlineCallbacks
    def test_link_refused_blackholed_and_answers_lost_every_event_once(self) -> Any:
        """A real master and worker run builds of a trivial step, publishing through the proxy.
        One build with the link up; then for each outage kind (connections reset and refused;
        accepted and never answered; requests delivered but answers lost) the link stays down
        while a whole build runs (the build is not held up by it) and until the plugin has
        seen deliveries fail; then the link comes back and the plugin drains.  One more build
        with the link up.  The journal then holds the master's events with seq 1..N, no gap and no
        duplicate, N at least the last seq the plugin assigned; each build's ``build.started``
        and ``build.finished`` are there once; the stream passes the plugin stream invariants;
        and the server counted the resent, already-stored batches as duplicates."""
        rounds = count("outage_rounds", 1)
        tested = yield start_master(self, _config(self.proxy.url), str(self.base / "master"), proto="pb")
        master = tested.master
        reporter = reporter_of(master)
        outbox = reporter.outbox
        buildids: list[int] = []

        run = yield force_build(master, "trivial")
        buildids += [b["buildid"] for b in run["builds"]]
        yield wait_for(lambda: outbox.pending == 0, timeout=30, what="first build delivered")
        self.assertEqual(outbox.stats["failures"], 0, "link up: no failure")

        timeline: list[str] = []
        for _round in range(rounds):
            for phase in PHASES:
                failures = outbox.stats["failures"]
                started = time.monotonic()
                self.proxy.set_mode(phase)
                run = yield force_build(master, "trivial")
                buildids += [b["buildid"] for b in run["builds"]]
                yield wait_for(lambda failures=failures: outbox.stats["failures"] > failures, timeout=60,
                               what=f"the plugin noticing the {phase} outage")
                left = OUTAGE_SECONDS - (time.monotonic() - started)
                if left > 0:  # the outage's length (the fault itself), not synchronisation
                    yield task.deferLater(reactor, left, lambda: None)
                pending = outbox.pending
                down = time.monotonic() - started
                self.proxy.set_mode("forward")
                yield wait_for(lambda: outbox.pending == 0, timeout=90, what=f"the plugin drained after {phase}")
                timeline.append(f"{phase}: {down:.1f}s down, {outbox.stats['failures'] - failures} failed "
                                f"deliveries, {pending} events held then delivered")

        run = yield force_build(master, "trivial")
        buildids += [b["buildid"] for b in run["builds"]]
        yield wait_for(lambda: outbox.pending == 0, timeout=90, what="the plugin drained after the outages")
        last_seq = reporter.seq
        events = yield threads.deferToThread(read_journal, self.server.url)
        duplicates = yield threads.deferToThread(_metric, self.server.url, "firehose_events_duplicate_total",
                                                 master=MASTER)

        mine = [e for e in events if e["master"] == MASTER]
        self.assertEqual(len({e["incarnation"] for e in mine}), 1, "one incarnation")
        seqs = [e["seq"] for e in mine]
        print(f"\nmaster outage: builds={len(buildids)} events={len(seqs)} last_seq={last_seq} "
              f"duplicates_dropped={duplicates:.0f} failures={outbox.stats['failures']} "
              f"spooled={outbox.stats['spooled']} dropped={outbox.stats['dropped']} proxy_accepted={self.proxy.accepted}"
              f"\n  " + "\n  ".join(timeline))
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)), "seq 1..N, no gap, no duplicate")
        self.assertGreaterEqual(len(seqs), last_seq, "every event the master produced is stored")
        check_stream(self, mine)
        for type_ in ("build.started", "build.finished"):
            got = sorted(e["data"]["buildid"] for e in mine if e["type"] == type_)
            self.assertEqual(got, sorted(buildids), type_)
        self.assertEqual(outbox.stats["dropped"], 0)
        self.assertGreater(duplicates, 0, "answers were lost, so stored batches were resent and dropped")
