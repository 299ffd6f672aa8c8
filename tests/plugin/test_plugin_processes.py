"""End to end with real processes: ``buildbot`` and ``buildbot-worker`` (the demo's setup) under
``twistd``, publishing to an ingest server over loopback."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from buildbot_plugin.demo.__main__ import create, start, stop
from firehose.schema import validate_event

from .plugin_testlib import StubIngest, wait_for


@pytest.mark.slow
class RealProcessesTest(unittest.TestCase):
    """The demo master and worker run as processes; their builds reach the server complete."""

    timeout = 120

    @defer.inlineCallbacks
    def test_demo_master_and_worker_publish_builds(self) -> Any:
        """A build with branch/revision/properties arrives in order; SIGTERM sends master.stopped."""
        ingest = StubIngest()
        ingest.start()
        self.addCleanup(ingest.stop)
        basedir = tempfile.mkdtemp(prefix="firehose-demo-")
        master_dir, worker_dir = create(basedir, ingest.url, ingest.token, "proc-master", interval=2)
        children = [start(master_dir)]
        self.addCleanup(stop, children)
        yield wait_for(lambda: ingest.of_type("master.started"), timeout=60, what="master.started")
        children.append(start(worker_dir))
        yield wait_for(lambda: ingest.of_type("build.finished"), timeout=90, what="a finished build")
        # SIGTERM without blocking (this reactor also runs the server), the master before the
        # worker (see buildbot_plugin.demo.__main__.stop).
        children[0].terminate()
        yield wait_for(lambda: ingest.of_type("master.stopped"), timeout=30, what="master.stopped")
        yield wait_for(lambda: children[0].poll() is not None, timeout=30, what="master exits")
        children[1].terminate()
        yield wait_for(lambda: children[1].poll() is not None, timeout=30, what="worker exits")

        seqs = [e["seq"] for e in ingest.events]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        for e in ingest.events:
            validate_event(e)
            self.assertEqual(e["master"], "proc-master")
        fin = ingest.of_type("build.finished")[0]["data"]
        self.assertIn(fin["builder"], ("linux-build", "flaky-tests", "try-linux"))
        self.assertIn(fin["branch"], ("main", "try"))
        self.assertEqual(len(fin["revision"]), 40)
        self.assertEqual(fin["worker"], "demo-worker")
        self.assertTrue(fin["properties"]["binary_url"].startswith("https://artifacts.example.invalid/"))
        self.assertTrue(ingest.of_type("change.new"))
        self.assertTrue(ingest.of_type("worker.connected"))
        lines = [ln for e in ingest.of_type("log.lines") for ln in e["data"]["lines"]]
        self.assertIn("test_0 ... ok", lines)
        self.assertFalse([ln for ln in lines if ln.startswith("  PATH=")])


def test_demo_stop_terminates_master_before_worker() -> None:
    """``stop`` SIGTERMs the children one at a time, in order, waiting for each: the worker
    stays until the master has shut down (a worker leaving mid-build-start can hang it)."""
    calls: list[tuple[str, str]] = []

    class Child:
        def __init__(self, name: str) -> None:
            self.name = name
            self.returncode: int | None = None

        def poll(self) -> int | None:
            return self.returncode

        def terminate(self) -> None:
            calls.append((self.name, "terminate"))

        def wait(self, timeout: float) -> int:
            calls.append((self.name, "wait"))
            self.returncode = 0
            return 0

        def kill(self) -> None:
            calls.append((self.name, "kill"))

    stop([Child("master"), Child("worker")])  # type: ignore[list-item]
    assert calls == [("master", "terminate"), ("master", "wait"), ("worker", "terminate"), ("worker", "wait")]
