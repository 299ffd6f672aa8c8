"""Materialized state and the query API, from synthetic plugin-shaped event sequences."""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from firehose.hub import Hub
from firehose.ingest import MasterTokens
from firehose.journal import MemoryJournal
from firehose.state import BuildState
from firehose.web import build_site
from tests.unit.helpers import RecordingSink, Scenario

T0 = 1_700_000_000.0


class StateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0 + 1000)
        self.journal = MemoryJournal(epoch="e1")
        self.hub = Hub(self.journal)
        self.state = BuildState()
        self.successResultOf(self.state.rebuild(self.journal))
        site = build_site(hub=self.hub, journal=self.journal, clock=self.clock,
                          tokens=MasterTokens({}), state=self.state)
        self.client = StubTreq(site.resource)
        self.m1 = Scenario("m1")
        self.m2 = Scenario("m2")

    def feed(self, *scenarios: Scenario) -> None:
        for s in scenarios:
            events = s.take()
            if events:
                self.successResultOf(self.journal.append(events))

    def get(self, path: str) -> tuple[int, Any]:
        d = self.client.get("http://firehose.test/api/" + path)
        self.client.flush()
        response = self.successResultOf(d)
        return response.code, self.successResultOf(response.json())

    def ok(self, path: str) -> Any:
        code, body = self.get(path)
        self.assertEqual(code, 200, body)
        return body

    # The queue and running builds.

    def test_queue_shows_waiting_requests_with_wait_time(self) -> None:
        """Submitted, unclaimed requests are the queue, with how long each has waited."""
        m = self.m1
        m.request("submitted", 1, "linux", at=T0 + 100)
        m.request("submitted", 2, "mac", at=T0 + 400)
        m.request("submitted", 3, "linux", at=T0 + 500)
        m.request("claimed", 3, "linux", at=T0 + 600)
        self.feed(m)
        body = self.ok("queue")
        self.assertEqual([r["buildrequestid"] for r in body["requests"]], [1, 2])
        self.assertEqual(body["requests"][0]["waited"], 900)
        self.assertEqual(body["by_builder"], {"linux": {"pending": 1, "oldest_waited": 900},
                                              "mac": {"pending": 1, "oldest_waited": 600}})
        self.assertEqual([r["builder"] for r in self.ok("queue?builder=mac")["requests"]], ["mac"])

    def test_running_builds_with_current_step_and_elapsed(self) -> None:
        """A started build is running, with its newest unfinished step and elapsed time."""
        m = self.m1
        m.build("started", 7, "linux", started_at=T0 + 100, at=T0 + 100)
        m.step("started", 1, 7, "linux", "checkout", started_at=T0 + 100)
        m.step("finished", 1, 7, "linux", "checkout", started_at=T0 + 100, complete_at=T0 + 110)
        m.step("started", 2, 7, "linux", "test", started_at=T0 + 110)
        self.feed(m)
        (build,) = self.ok("running")["builds"]
        self.assertEqual((build["buildid"], build["elapsed"], build["current_step"]["name"]), (7, 900, "test"))

    def test_out_of_order_step_before_build_and_update_after_finish(self) -> None:
        """A step before its build creates the build; an update after the finish does not
        reopen it."""
        m = self.m1
        m.step("started", 1, 9, "linux", "compile", started_at=T0)
        m.build("started", 9, "linux", started_at=T0, at=T0)
        m.build("finished", 9, "linux", result="failure", started_at=T0, at=T0 + 50)
        m.build("updated", 9, "linux", started_at=T0, at=T0 + 51)
        self.feed(m)
        self.assertEqual(self.ok("running")["builds"], [])
        (build,) = self.ok("builds")["builds"]
        self.assertEqual((build["buildid"], build["result"], build["finished"]), (9, "failure", True))
        one = self.ok("builds/m1/9")["build"]
        self.assertEqual([s["name"] for s in one["steps"]], ["compile"])

    def test_several_masters_keep_their_own_ids(self) -> None:
        """Build ids of different masters never collide; filters by master work."""
        self.m1.build("finished", 1, "linux", result="success", started_at=T0, at=T0 + 10)
        self.m2.build("finished", 1, "linux", result="failure", started_at=T0, at=T0 + 20)
        self.feed(self.m1, self.m2)
        self.assertEqual(len(self.ok("builds")["builds"]), 2)
        (only,) = self.ok("builds?master=m2")["builds"]
        self.assertEqual(only["result"], "failure")
        self.assertEqual(self.ok("builds/m1/1")["build"]["result"], "success")

    def test_builds_paging_and_filters(self) -> None:
        """Finished builds come newest first, filtered like the stream, in pages."""
        for i in range(1, 8):
            self.m1.build("finished", i, "linux" if i % 2 else "mac", result="success" if i < 6 else "failure",
                          started_at=T0 + i, at=T0 + i + 1)
        self.feed(self.m1)
        page = self.ok("builds?limit=3")
        self.assertEqual([b["buildid"] for b in page["builds"]], [7, 6, 5])
        self.assertEqual(page["next_offset"], 3)
        self.assertEqual([b["buildid"] for b in self.ok("builds?limit=3&offset=6")["builds"]], [1])
        self.assertEqual([b["buildid"] for b in self.ok("builds?builder=linux&result=failure")["builds"]], [7])

    # The pushlog and last green.

    def pushlog_history(self) -> None:
        m = self.m1
        # r1: both green. r2: mac failed. r3: linux retried then green, mac green. r4: linux running.
        for rev, t in (("r1", 0), ("r2", 100), ("r3", 200), ("r4", 300)):
            m.emit("change.new", {"changeid": t, "branch": "main", "revision": rev, "author": "a",
                                  "comments": f"commit {rev}"}, at=T0 + t)
        m.build("finished", 1, "linux", "r1", result="success", started_at=T0, at=T0 + 10)
        m.build("finished", 2, "mac", "r1", result="warnings", started_at=T0, at=T0 + 10)
        m.build("finished", 3, "linux", "r2", result="success", started_at=T0 + 100, at=T0 + 110)
        m.build("finished", 4, "mac", "r2", result="failure", started_at=T0 + 100, at=T0 + 110)
        m.build("finished", 5, "linux", "r3", result="retry", started_at=T0 + 200, at=T0 + 210)
        m.build("finished", 6, "mac", "r3", result="success", started_at=T0 + 200, at=T0 + 210)
        m.build("finished", 7, "linux", "r3", result="success", started_at=T0 + 211, at=T0 + 220)
        m.build("started", 8, "linux", "r4", started_at=T0 + 300, at=T0 + 300)
        m.request("submitted", 9, "mac", "r4", at=T0 + 300)
        self.feed(m)

    def test_pushlog_newest_first_with_each_builders_latest_result(self) -> None:
        """Revisions of a branch come newest first; each cell is the builder's newest build."""
        self.pushlog_history()
        body = self.ok("revisions?branch=main")
        self.assertEqual([r["revision"] for r in body["revisions"]], ["r4", "r3", "r2", "r1"])
        r4, r3 = body["revisions"][0], body["revisions"][1]
        self.assertEqual((r4["builders"]["linux"]["state"], r4["builders"]["mac"]["state"]), ("running", "pending"))
        self.assertEqual((r3["builders"]["linux"]["result"], r3["builders"]["linux"]["buildid"]), ("success", 7))
        self.assertEqual(r3["comments"], "commit r3")
        self.assertEqual([r["green"] for r in body["revisions"]], [False, True, False, True])

    def test_last_green_skips_running_pending_and_failed(self) -> None:
        """Last green is the newest revision whose builders all finished with success/warnings."""
        self.pushlog_history()
        self.assertEqual(self.ok("lastgreen?branch=main")["revision"]["revision"], "r3")
        self.assertEqual(self.ok("lastgreen?branch=nope")["revision"], None)

    def test_last_green_narrowed_to_some_builders(self) -> None:
        """With ``builder=``, only those builders count."""
        self.pushlog_history()
        self.m1.build("finished", 8, "linux", "r4", result="success", started_at=T0 + 300, at=T0 + 400)
        self.feed(self.m1)
        self.assertEqual(self.ok("lastgreen?branch=main&builder=linux")["revision"]["revision"], "r4")
        self.assertEqual(self.ok("lastgreen?branch=main")["revision"]["revision"], "r3")

    def test_cancelled_and_collapsed_requests_do_not_block_green(self) -> None:
        """A request cancelled or collapsed before it got a build does not count against green."""
        m = self.m1
        m.build("finished", 1, "linux", "r5", result="success", started_at=T0, at=T0 + 10)
        m.request("submitted", 2, "mac", "r5", at=T0)
        m.request("cancelled", 2, "mac", "r5", at=T0 + 5)
        m.request("submitted", 3, "win", "r5", at=T0)
        m.request("completed", 3, "win", "r5", at=T0 + 6, result="skipped", results=3)
        self.feed(m)
        self.assertEqual(self.ok("lastgreen?branch=main")["revision"]["revision"], "r5")

    def test_each_revision_has_a_state_and_an_overall_result(self) -> None:
        """``/api/revisions`` says of each revision whether it is ``pending`` (requested, nothing
        started), ``running`` (a build running or queued) or ``done``, with the worst result of
        its builds once done (``null`` before); a build that ended in ``retry`` counts as
        queued; ``builder=`` narrows what counts, as for green."""
        self.pushlog_history()
        m = self.m1
        m.request("submitted", 20, "linux", "r5", at=T0 + 400)
        m.request("submitted", 21, "mac", "r5", at=T0 + 400)
        m.build("finished", 22, "linux", "r6", result="retry", started_at=T0 + 500, at=T0 + 510)
        m.request("submitted", 23, "linux", "r6", at=T0 + 500)
        m.build("finished", 24, "linux", "r7", result="success", started_at=T0 + 600, at=T0 + 610)
        m.build("finished", 25, "mac", "r7", result="exception", started_at=T0 + 600, at=T0 + 610)
        self.feed(m)
        body = self.ok("revisions?branch=main")
        got = {r["revision"]: (r["state"], r["result"], r["green"]) for r in body["revisions"]}
        self.assertEqual(got, {
            "r1": ("done", "warnings", True), "r2": ("done", "failure", False), "r3": ("done", "success", True),
            "r4": ("running", None, False), "r5": ("pending", None, False), "r6": ("pending", None, False),
            "r7": ("done", "exception", False),
        })
        narrowed = {r["revision"]: r["state"] for r in self.ok("revisions?branch=main&builder=mac")["revisions"]}
        self.assertEqual((narrowed["r4"], narrowed["r7"]), ("pending", "done"))

    def test_last_green_carries_state_and_result(self) -> None:
        """The revision ``/api/lastgreen`` names is ``done`` with its overall result."""
        self.pushlog_history()
        revision = self.ok("lastgreen?branch=main")["revision"]
        self.assertEqual((revision["revision"], revision["state"], revision["result"]), ("r3", "done", "success"))

    def test_superseded_requests_only_make_a_done_revision_that_is_not_green(self) -> None:
        """A revision whose only requests were cancelled or collapsed is ``done`` (nothing is
        left to run) with that result, and not green."""
        m = self.m1
        m.request("submitted", 2, "mac", "r8", at=T0)
        m.request("cancelled", 2, "mac", "r8", at=T0 + 5)
        self.feed(m)
        row = self.ok("revisions?branch=main")["revisions"][0]
        self.assertEqual((row["state"], row["result"], row["green"]), ("done", "cancelled", False))

    def test_builds_of_a_revision_include_queued_and_running(self) -> None:
        """``/api/builds?revision=R`` lists every build of R: queued requests, running builds and
        finished builds, each with its ``status``; without ``revision`` it stays the finished
        builds only."""
        self.pushlog_history()
        r4 = self.ok("builds?revision=r4")["builds"]
        self.assertEqual([(b["status"], b.get("buildid"), b.get("buildrequestid")) for b in r4],
                         [("pending", None, 9), ("running", 8, 8)])
        self.m1.build("finished", 8, "linux", "r4", result="success", started_at=T0 + 300, at=T0 + 400)
        self.feed(self.m1)
        r4 = self.ok("builds?revision=r4")["builds"]
        self.assertEqual([(b["status"], b.get("buildid") or b.get("buildrequestid")) for b in r4],
                         [("pending", 9), ("finished", 8)])
        self.assertEqual([b["buildid"] for b in self.ok("builds?revision=r3")["builds"]], [7, 6, 5])
        self.assertNotIn("status", self.ok("builds")["builds"][0])
        self.assertEqual(len(self.ok("builds")["builds"]), 8)

    def test_builds_of_a_head_build_are_found_by_the_requested_revision(self) -> None:
        """A build asked for revision R that checked out another ``got_revision`` is found by
        ``revision=R`` too (the pushlog files it under R)."""
        self.m1.build("started", 1, "linux", "abc", started_at=T0, at=T0,
                      sourcestamps=[{"revision": "r9", "branch": "main"}])
        self.feed(self.m1)
        self.assertEqual([b["buildid"] for b in self.ok("builds?revision=r9")["builds"]], [1])

    def test_lastgreen_needs_branch(self) -> None:
        """A missing ``branch`` is a 400 that says so."""
        code, body = self.get("lastgreen")
        self.assertEqual((code, body["error"]), (400, "bad_request"))

    # Timings.

    def test_step_timings_per_builder_over_window(self) -> None:
        """Step durations are summarised per builder and step, largest total first, within
        the window only."""
        m = self.m1
        for i, (name, d) in enumerate([("test", 100), ("test", 300), ("compile", 50), ("test", 200)]):
            m.step("finished", i + 1, 1, "linux", name, started_at=T0 + 500, complete_at=T0 + 500 + d)
        m.step("finished", 10, 1, "linux", "test", started_at=T0 - 90_000, complete_at=T0 - 89_000)
        self.feed(m)
        rows = self.ok("steps?window=2000")["steps"]
        self.assertEqual([(r["step"], r["count"]) for r in rows], [("test", 3), ("compile", 1)])
        test = rows[0]
        self.assertEqual((test["mean"], test["p50"], test["p95"], test["max"]), (200, 200, 300, 300))

    def test_build_time_trend_bucketed(self) -> None:
        """Build durations are bucketed by start time."""
        m = self.m1
        for i, (start, dur) in enumerate([(0, 100), (100, 300), (4000, 50)]):
            m.build("finished", i + 1, "linux", result="success", started_at=T0 + start, at=T0 + start + dur,
                    duration=dur)
        self.feed(m)
        (series,) = self.ok("trend?bucket=3600&window=100000")["builders"]
        self.assertEqual([(b["count"], b["mean"]) for b in series["buckets"]], [(2, 200), (1, 50)])

    # Consistency.

    def test_every_answer_carries_the_cursor_and_snapshot_then_subscribe_has_no_seam(self) -> None:
        """An answer's cursor, used as ``since``, yields exactly the events after the snapshot."""
        self.m1.build("started", 1, "linux", started_at=T0, at=T0)
        self.feed(self.m1)
        snapshot = self.ok("running")
        self.assertEqual(snapshot["cursor"], "e1:1")
        self.m1.build("finished", 1, "linux", result="success", started_at=T0, at=T0 + 5)
        self.feed(self.m1)
        sink = RecordingSink()
        from firehose.filters import Filter

        self.hub.subscribe(sink, Filter.everything(), snapshot["cursor"], "test").start()
        self.assertEqual([e.type for e in sink.events], ["build.finished"])

    def test_state_rebuilds_from_the_journal(self) -> None:
        """A new state fed from the journal answers the same as the live one."""
        self.pushlog_history()
        again = BuildState()
        self.successResultOf(again.rebuild(self.journal))
        self.assertEqual(again.offset, self.state.offset)
        self.assertEqual([r["revision"] for r in again.branch_revisions("main")], ["r4", "r3", "r2", "r1"])

    def test_master_restart_reconciles_running_and_queued(self) -> None:
        """``master.started`` with a snapshot ends builds and requests the master no longer has."""
        m = self.m1
        m.build("started", 1, "linux", started_at=T0, at=T0)
        m.build("started", 2, "linux", started_at=T0, at=T0)
        m.request("submitted", 5, "mac", at=T0)
        m.emit("master.started", {"running": [{"buildid": 2}], "queued": []}, at=T0 + 50)
        self.feed(m)
        self.assertEqual([b["buildid"] for b in self.ok("running")["builds"]], [2])
        self.assertEqual(self.ok("queue")["requests"], [])
        self.assertTrue(self.ok("builds/m1/1")["build"]["lost"])

    def test_bad_queries(self) -> None:
        """Bad filters, paging and unknown builds get clear 4xx answers."""
        for path, code, error in [("builds?nope=1", 400, "bad_filter"), ("builds?limit=0", 400, "bad_request"),
                                  ("builds/m1/99", 404, "not_found"), ("builds/m1", 404, "not_found"),
                                  ("steps?sort=bogus", 400, "bad_request")]:
            got, body = self.get(path)
            self.assertEqual((got, body["error"]), (code, error), path)

    def test_memory_is_bounded(self) -> None:
        """Old finished builds are forgotten past ``max_builds``; running ones are kept."""
        self.state.max_builds = 5
        self.m1.build("started", 100, "linux", started_at=T0, at=T0)
        for i in range(1, 12):
            self.m1.build("finished", i, "linux", result="success", started_at=T0 + i, at=T0 + i)
        self.feed(self.m1)
        self.assertLessEqual(len(self.state.builds), 6)
        self.assertIn(("m1", 100), self.state.builds)


class PushlogRevisionTests(SynchronousTestCase):
    def test_build_is_filed_under_the_requested_revision_not_got_revision(self) -> None:
        """A build whose got_revision differs from its source stamp (a build of a branch head
        resolves it at checkout) stays in the row of the revision that was asked for."""
        journal = MemoryJournal(epoch="e1")
        state = BuildState()
        self.successResultOf(state.rebuild(journal))
        s = Scenario("m1")
        s.request("submitted", 1, "linux", "asked", at=T0)
        s.build("finished", 1, "linux", "resolved", result="success", started_at=T0, at=T0 + 9,
                sourcestamps=[{"branch": "main", "revision": "asked"}])
        self.successResultOf(journal.append(s.take()))
        (row,) = state.branch_revisions("main")
        self.assertEqual((row["revision"], row["builders"]["linux"]["state"]), ("asked", "finished"))


class BoundsTests(SynchronousTestCase):
    def test_unfinished_builds_are_bounded_too(self) -> None:
        """Builds whose end never arrives cannot grow the state past its bound."""
        journal = MemoryJournal(epoch="e1")
        state = BuildState(max_builds=50)
        self.successResultOf(state.rebuild(journal))
        s = Scenario("m1")
        for i in range(1, 400):
            s.build("started", i, "linux", started_at=T0 + i, at=T0 + i)
        self.successResultOf(journal.append(s.take()))
        self.assertLessEqual(len(state.builds), 51)
        self.assertIn(("m1", 399), state.builds)

    def test_snapshot_cursor_is_the_head_even_when_nothing_is_retained(self) -> None:
        """After retention removed every event, a rebuilt state still reflects the head."""
        from firehose.journal import Retention

        journal = MemoryJournal(epoch="e1", retention=Retention(max_age=None, max_events=0))
        self.successResultOf(journal.append(Scenario("m1").take() or [
            {"master": "m1", "incarnation": "i", "seq": 1, "type": "worker.connected", "time": T0,
             "data": {"worker": "w"}}]))
        self.successResultOf(journal.trim())
        state = BuildState()
        self.successResultOf(state.rebuild(journal))
        self.assertEqual(state.offset, journal.head)
