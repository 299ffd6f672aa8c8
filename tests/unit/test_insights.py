"""The data of the insights (issue 14), from generated histories where it makes sense:
``/api/trend`` and ``/api/waits`` buckets against a direct recomputation from the events, log
tails within their bounds, failure summaries, ``duration_p50``, the pushlog's ``failures`` and
``?revision=``, and ``firehose wait``'s tracker agreeing with the server's pushlog on what a
revision's state is."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock

from firehose.api import ApiResource
from firehose.client.waiting import RevisionTracker
from firehose.hub import Hub
from firehose.journal import MemoryJournal
from firehose.pushes import failures, revision_status, visible
from firehose.state import TAIL_BYTES, TAIL_LINES, BuildState
from tests.unit.helpers import Scenario

T0 = 1_700_000_000.0
NOW = T0 + 1_000_000
RESULTS = ["success", "warnings", "failure", "skipped", "exception", "retry", "cancelled"]


class Api:
    """A state fed through a journal, and its ``/api`` answered in memory."""

    def __init__(self, **state_args: Any) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.journal = MemoryJournal(epoch="e1")
        self.state = BuildState(**state_args)
        self.state.rebuild(self.journal)
        self.client = StubTreq(ApiResource(self.state, Hub(self.journal), self.clock))
        self.m = Scenario("m1")

    def feed(self) -> None:
        events = self.m.take()
        if events:
            self.journal.append(events)

    def get(self, path: str) -> tuple[int, Any]:
        d = self.client.request("GET", "http://firehose.test/" + path)
        self.client.flush()
        response = d.result
        content = response.content()
        self.client.flush()
        return response.code, json.loads(content.result)

    def ok(self, path: str) -> Any:
        code, body = self.get(path)
        assert code == 200, body
        return body


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered))) - 1]


def expected_buckets(samples: Sequence[tuple[float, float, str | None]], bucket: float, since: float,
                     results: bool) -> list[dict[str, Any]]:
    """The buckets, recomputed from the samples directly."""
    groups: dict[int, list[tuple[float, str | None]]] = {}
    for start, value, result in samples:
        if start >= since:
            groups.setdefault(math.floor(start / bucket), []).append((value, result))
    out = []
    for index in sorted(groups):
        values = [v for v, _ in groups[index]]
        entry: dict[str, Any] = {"start": index * bucket, "count": len(values), "mean": sum(values) / len(values),
                                 "p50": nearest_rank(values, 0.5), "p95": nearest_rank(values, 0.95),
                                 "max": max(values)}
        if results:
            failed = sum(1 for _, r in groups[index] if r in ("failure", "exception"))
            entry.update(failed=failed, failure_rate=failed / len(values))
        out.append(entry)
    return out


builds_strategy = st.lists(
    st.tuples(st.sampled_from(["linux", "mac", "win"]), st.integers(0, 300_000), st.integers(0, 5_000),
              st.sampled_from(RESULTS)),
    max_size=40,
)


@given(builds=builds_strategy, bucket=st.integers(60, 86_400), window=st.integers(60, 1_000_000),
       glob=st.sampled_from(["*", "linux", "mac,win", "nope"]))
def test_trend_buckets_are_the_builds_bucketed_by_start(builds: list[tuple[str, int, int, str]], bucket: int,
                                                        window: int, glob: str) -> None:
    """Per builder and for every matched builder together (``all``), each bucket is the
    finished builds that started in it: count, mean, p50, p95, max of their durations, and
    how many failed (failure or exception) of them."""
    api = Api()
    start0 = NOW - 300_000
    for i, (builder, start, duration, result) in enumerate(builds):
        api.m.build("finished", i + 1, builder, result=result, started_at=start0 + start,
                    at=start0 + start + duration, duration=duration)
    api.feed()
    body = api.ok(f"trend?bucket={bucket}&window={window}&builder={glob}")
    since = NOW - window
    names = {"*": {"linux", "mac", "win"}, "linux": {"linux"}, "mac,win": {"mac", "win"}, "nope": set()}[glob]
    samples = {b: [(start0 + s, float(d), r) for bb, s, d, r in builds if bb == b] for b in names}
    expected = [{"builder": b, "buckets": expected_buckets(samples[b], bucket, since, True)}
                for b in sorted(names) if samples[b]]
    assert body["builders"] == expected
    together = [s for b in names for s in samples[b]]
    assert body["all"] == {"buckets": expected_buckets(together, bucket, since, True)}
    # series=all: the same ``all``, each builder by name only; series=each: no ``all``.
    only_all = api.ok(f"trend?bucket={bucket}&window={window}&builder={glob}&series=all")
    assert only_all["all"] == body["all"]
    assert only_all["builders"] == [{"builder": b["builder"]} for b in expected]
    only_each = api.ok(f"trend?bucket={bucket}&window={window}&builder={glob}&series=each")
    assert only_each["builders"] == expected and "all" not in only_each


requests_strategy = st.lists(
    st.tuples(st.sampled_from(["linux", "mac"]), st.integers(0, 200_000),
              st.one_of(st.none(), st.integers(0, 3_000)),  # claimed this long after submission
              st.one_of(st.none(), st.integers(0, 3_000)),  # the build started this long after
              st.integers(1, 2)),  # builds of the request (a retry makes two)
    max_size=30,
)


@given(requests=requests_strategy, bucket=st.integers(60, 86_400), window=st.integers(60, 500_000))
def test_waits_are_the_requests_waits_bucketed_by_submission(requests: list[tuple[str, int, int | None, int | None, int]],
                                                              bucket: int, window: int) -> None:
    """A request that got a build waited from its submission to its claim (or, without one,
    to its build's start), counted once whatever the number of its builds; one without a build
    (only claimed: collapsed) is not counted."""
    api = Api()
    start0 = NOW - 200_000
    buildid = itertools.count(1)
    samples: dict[str, list[tuple[float, float, None]]] = {}
    for brid, (builder, submitted, claimed, started, attempts) in enumerate(requests, 1):
        at = start0 + submitted
        api.m.request("submitted", brid, builder, at=at)
        if claimed is not None:
            api.m.request("claimed", brid, builder, at=at + claimed, claimed_at=at + claimed)
        if started is None:
            continue
        for _ in range(attempts):
            bid = next(buildid)
            api.m.build("started", bid, builder, started_at=at + started, at=at + started, buildrequestid=brid)
            api.m.build("finished", bid, builder, result="success", started_at=at + started,
                        at=at + started + 10, buildrequestid=brid)
        end = at + claimed if claimed is not None else at + started
        samples.setdefault(builder, []).append((at, end - at, None))
    api.feed()
    body = api.ok(f"waits?bucket={bucket}&window={window}")
    since = NOW - window
    expected = [{"builder": b, "buckets": expected_buckets(samples[b], bucket, since, False)} for b in sorted(samples)]
    assert body["builders"] == expected
    together = [s for b in samples for s in samples[b]]
    assert body["all"] == {"buckets": expected_buckets(together, bucket, since, False)}


def test_trend_and_waits_refuse_hostile_arguments() -> None:
    """Out-of-range or repeated bucket and window, and filter fields a builder has not, are 400s
    with a message."""
    api = Api()
    for path in ("trend?bucket=1", "waits?bucket=1e12", "waits?window=nan", "waits?bucket=60&bucket=120",
                 "waits?result=failure", "trend?window=-5", "trend?series=some", "waits?series=all&series=each"):
        code, body = api.get(path)
        assert code == 400 and body["error"] in ("bad_request", "bad_filter") and body["message"], (path, body)


# -- Log tails -------------------------------------------------------------------------------

#: Log lines: short ones, and long ones (near or past 4 KiB, in characters of 1 to 4 bytes).
line_text = st.one_of(st.text(max_size=80), st.text(max_size=80), st.builds(
    lambda char, n, end: char * n + end, st.sampled_from(["x", "é", "€", "😀"]), st.integers(500, 5000),
    st.text(max_size=3)))


def log_lines(api: Api, stepid: int, buildid: int, first: int, lines: list[str], name: str = "stdio") -> None:
    api.m.emit("log.lines", {"logid": stepid * 10 + len(name), "stepid": stepid, "buildid": buildid,
                             "builder": "linux", "name": name, "first_line": first, "lines": lines})


@given(chunks=st.lists(st.lists(line_text, min_size=1, max_size=60), min_size=1, max_size=6),
       result=st.sampled_from(RESULTS))
def test_a_log_tail_is_the_longest_suffix_within_its_bounds(chunks: list[list[str]], result: str) -> None:
    """The tail of a running step's log is the longest suffix of its lines (each cut to 4 KiB)
    within 40 lines and 4 KiB; ``truncated`` says whether anything of the log is missing.
    When the step succeeds the tail goes; when it does not, it is kept and shown in the build's
    failure summary."""
    api = Api()
    api.m.build("started", 1, "linux", started_at=T0, at=T0, url="http://bb/#/builders/1/builds/1")
    api.m.step("started", 5, 1, "linux", "test", started_at=T0)
    first = 0
    for chunk in chunks:
        log_lines(api, 5, 1, first, chunk)
        first += len(chunk)
    api.feed()
    cut = [line.encode()[:TAIL_BYTES].decode("utf-8", "ignore") for chunk in chunks for line in chunk]
    keep = 0
    while keep < len(cut) and keep < TAIL_LINES and sum(len(x.encode()) for x in cut[len(cut) - keep - 1:]) <= TAIL_BYTES:
        keep += 1
    tail = api.state.log_tail("m1", 5)
    assert tail is not None
    assert tail["lines"] == cut[len(cut) - keep:]
    assert len(tail["lines"]) <= TAIL_LINES and sum(len(x.encode()) for x in tail["lines"]) <= TAIL_BYTES
    was_cut = any(len(line.encode()) > TAIL_BYTES for chunk in chunks for line in chunk[-TAIL_LINES:])
    assert tail["truncated"] == (keep < len(cut) or was_cut)
    api.m.step("finished", 5, 1, "linux", "test", started_at=T0, complete_at=T0 + 9, result=result,
               state="test " + result)
    api.m.build("finished", 1, "linux", result="failure", started_at=T0, at=T0 + 10)
    api.feed()
    summary = api.ok("builds/m1/1")["build"]["failure"]
    succeeded = result in ("success", "warnings", "skipped")
    assert api.state.live_tails == {}
    assert (api.state.log_tail("m1", 5) is None) == succeeded
    if not succeeded:
        (step,) = summary["steps"]
        assert (step["name"], step["result"], step["state_string"], step["duration"]) == ("test", result,
                                                                                            "test " + result, 9)
        assert step["log_tail"] == {"log": "stdio", "lines": tail["lines"], "truncated": tail["truncated"]}
    assert summary["url"] == "http://bb/#/builders/1/builds/1"


def test_log_tails_are_bounded_in_number_and_prefer_stdio() -> None:
    """Only the newest failed steps' tails are kept (``max_failed_tails``), running steps' too
    (``max_live_tails``); a step's tail follows its stdio log when it has one; lines of a
    step that already succeeded are not kept; a gap in the lines marks the tail truncated."""
    api = Api(max_failed_tails=3, max_live_tails=4)
    for i in range(1, 11):
        api.m.step("started", i, 1, "linux", f"s{i}", started_at=T0)
        log_lines(api, i, 1, 0, [f"step {i}"])
        api.m.step("finished", i, 1, "linux", f"s{i}", started_at=T0, complete_at=T0 + 1, result="failure")
    for i in range(11, 20):
        api.m.step("started", i, 1, "linux", f"s{i}", started_at=T0)
        log_lines(api, i, 1, 0, [f"step {i}"])
    api.feed()
    assert sorted(k[1] for k in api.state.failed_tails) == [8, 9, 10]
    assert sorted(k[1] for k in api.state.live_tails) == [16, 17, 18, 19]
    api.m.step("started", 30, 2, "linux", "compile", started_at=T0)
    log_lines(api, 30, 2, 0, ["warning summary"], name="warnings")
    log_lines(api, 30, 2, 0, ["cc -c a.c"], name="stdio")
    log_lines(api, 30, 2, 1, ["ignored"], name="warnings")
    log_lines(api, 30, 2, 5, ["error: a.c:3"], name="stdio")  # lines 1-4 never arrived
    api.m.step("finished", 31, 2, "linux", "ok", started_at=T0, complete_at=T0 + 1, result="success")
    log_lines(api, 31, 2, 0, ["late line of a step that succeeded"])
    api.feed()
    tail = api.state.log_tail("m1", 30)
    assert tail is not None
    assert (tail["log"], tail["lines"], tail["truncated"]) == ("stdio", ["cc -c a.c", "error: a.c:3"], True)
    assert api.state.log_tail("m1", 31) is None


def test_failure_summary_lists_the_failed_steps_or_else_those_that_did_not_succeed() -> None:
    """A failed build's summary lists its failure/exception steps (not the skipped or warning
    ones); a cancelled build with none lists the steps that did not succeed; a green or a
    running build has no summary; every step carries its ``state_string``."""
    api = Api()
    api.m.build("started", 1, "linux", started_at=T0, at=T0)
    for i, (name, result) in enumerate([("checkout", "success"), ("compile", "warnings"), ("test", "failure"),
                                        ("lint", "exception"), ("upload", "skipped")], 1):
        api.m.step("finished", i, 1, "linux", name, started_at=T0 + i, complete_at=T0 + 2 * i, result=result,
                   state=f"{name} {result}")
    api.m.build("finished", 1, "linux", result="failure", started_at=T0, at=T0 + 20)
    api.m.build("finished", 2, "linux", result="cancelled", started_at=T0, at=T0 + 20)
    api.m.step("finished", 20, 2, "linux", "test", started_at=T0, complete_at=T0 + 3, result="cancelled")
    api.m.build("finished", 3, "linux", result="warnings", started_at=T0, at=T0 + 20)
    api.m.build("started", 4, "linux", started_at=T0, at=T0)
    api.feed()
    one = api.ok("builds/m1/1")["build"]
    assert [s["state_string"] for s in one["steps"]] == ["checkout success", "compile warnings", "test failure",
                                                        "lint exception", "upload skipped"]
    assert [(s["name"], s["duration"], s["log_tail"]) for s in one["failure"]["steps"]] == [
        ("test", 3, None), ("lint", 4, None)]
    assert one["failure"]["url"] is None
    assert [s["name"] for s in api.ok("builds/m1/2")["build"]["failure"]["steps"]] == ["test"]
    assert "failure" not in api.ok("builds/m1/3")["build"] and "failure" not in api.ok("builds/m1/4")["build"]


def test_builders_carry_the_median_duration_of_recent_builds() -> None:
    """``duration_p50`` is the median duration of the builder's newest 100 finished builds;
    ``null`` before one finished."""
    api = Api()
    for i, duration in enumerate([10, 20, 30, 1000], 1):
        api.m.build("finished", i, "linux", result="success", started_at=T0 + i, at=T0 + i + duration,
                    duration=duration)
    for i in range(200):
        api.m.build("finished", 100 + i, "mac", result="success", started_at=T0 + i, at=T0 + i + 1,
                    duration=5 if i < 100 else 7)
    api.m.build("started", 999, "win", started_at=T0, at=T0)
    api.feed()
    got = {b["builder"]: b["duration_p50"] for b in api.ok("builders")["builders"]}
    assert got == {"linux": 20, "mac": 7, "win": None}


def test_revision_rows_carry_failures_and_can_be_asked_for_one_revision() -> None:
    """A row's ``failures`` are its counted cells that failed (a superseded failure is not one,
    ``builder=`` narrows them); ``?revision=R`` answers R's rows in every branch, or in
    ``branch``; a hostile ``revision`` is a 400."""
    api = Api()
    api.m.build("finished", 1, "linux", "r1", result="failure", started_at=T0, at=T0 + 5)
    api.m.build("finished", 2, "linux", "r1", result="success", started_at=T0 + 10, at=T0 + 15)  # rebuilt
    api.m.build("finished", 3, "mac", "r1", result="exception", started_at=T0, at=T0 + 5)
    api.m.build("finished", 4, "win", "r1", result="cancelled", started_at=T0, at=T0 + 5)
    api.m.build("started", 5, "linux", "r1", branch="release", started_at=T0, at=T0 + 20)
    api.feed()
    (main,) = api.ok("revisions?branch=main")["revisions"]
    assert main["failures"] == [{"builder": "mac", "master": "m1", "buildid": 3, "result": "exception"}]
    assert (main["state"], main["result"]) == ("done", "cancelled")
    assert api.ok("revisions?branch=main&builder=linux")["revisions"][0]["failures"] == []
    body = api.ok("revisions?revision=r1")
    assert [(r["branch"], r["state"]) for r in body["revisions"]] == [("release", "running"), ("main", "done")]
    assert body["revision"] == "r1"
    assert [r["branch"] for r in api.ok("revisions?revision=r1&branch=main")["revisions"]] == ["main"]
    assert api.ok("revisions?revision=nope")["revisions"] == []
    green = api.ok("lastgreen?branch=main&builder=linux")["revision"]
    assert (green["revision"], green["failures"]) == ("r1", [])
    for path in ("revisions?revision=", "revisions?revision=" + "x" * 300, "revisions?revision=a&revision=b"):
        code, error = api.get(path)
        assert code == 400 and error["error"] == "bad_request", (path, error)


# -- One definition of done: firehose wait's tracker and the pushlog agree ------------------

BUILDERS = ["a1", "a2", "b1"]


@st.composite
def revision_history(draw: Any) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """Events of one revision on a few builders: requests queued, claimed, cancelled, collapsed,
    failed before starting, or built (several attempts: retries, rebuilds), some builds still
    running; a buildset naming builders; in their natural order or shuffled."""
    brids = itertools.count(1)
    bids = itertools.count(1)
    events: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    if draw(st.booleans()):
        named = draw(st.lists(st.sampled_from(BUILDERS), max_size=3, unique=True))
        events.append(("buildset", (), {"builders": named}))
    for builder in draw(st.lists(st.sampled_from(BUILDERS), max_size=7)):
        brid = next(brids)
        events.append(("request", ("submitted", brid, builder), {}))
        fate = draw(st.sampled_from(["queued", "claimed", "cancelled", "collapsed", "failed", "built"]))
        if fate == "claimed":
            events.append(("request", ("claimed", brid, builder), {}))
        elif fate == "cancelled":
            events.append(("request", ("cancelled", brid, builder), {}))
        elif fate == "collapsed":
            events.append(("request", ("completed", brid, builder), {"result": "skipped"}))
        elif fate == "failed":
            events.append(("request", ("completed", brid, builder), {"result": "exception"}))
        elif fate == "built":
            events.append(("request", ("claimed", brid, builder), {}))
            result = None
            for _ in range(draw(st.integers(1, 3))):
                bid = next(bids)
                started = T0 + draw(st.integers(0, 50))
                events.append(("build", ("started", bid, builder), {"started_at": started, "buildrequestid": brid}))
                result = draw(st.one_of(st.none(), st.sampled_from(RESULTS)))
                if result is None:
                    break
                events.append(("build", ("finished", bid, builder),
                               {"started_at": started, "buildrequestid": brid, "result": result}))
                if result != "retry":
                    break
            if result is not None and result != "retry":
                events.append(("request", ("completed", brid, builder), {"result": result}))
    if draw(st.booleans()):
        events = draw(st.permutations(events))
    if draw(st.booleans()):
        # The master restarts: its snapshot names some of the builds and requests as still there.
        bid_max, brid_max = next(bids), next(brids)
        snapshot = {"running": [{"buildid": b} for b in draw(st.sets(st.integers(1, bid_max)))],
                    "queued": [{"buildrequestid": r} for r in draw(st.sets(st.integers(1, brid_max)))]}
        events.insert(draw(st.integers(0, len(events))), ("master", (), snapshot))
    return events


def emit(scenario: Scenario, kind: str, args: tuple[Any, ...], extra: dict[str, Any]) -> None:
    if kind == "buildset":
        scenario.emit("buildset.submitted", {"buildsetid": 1, "branch": "main", "revision": "rev", **extra})
        return
    if kind == "master":
        scenario.emit("master.started", extra)
        return
    verb, ident, builder = args
    if kind == "request":
        scenario.request(verb, ident, builder, "rev", at=T0, **extra)
    else:
        result = extra.pop("result", None)
        scenario.build(verb, ident, builder, "rev", result=result, at=T0 + 100, **extra)


@given(history=revision_history(), glob=st.sampled_from([None, "a*", "b1"]), replay=st.integers(0, 40))
def test_wait_and_the_pushlog_agree_on_every_history_of_a_revision(
        history: list[tuple[str, tuple[Any, ...], dict[str, Any]]], glob: str | None, replay: int) -> None:
    """For any history of one revision (in any order, a master restart included), ``firehose
    wait``'s tracker keeps the same cells as the server's pushlog and so finds the same state,
    result and failures; without a restart, taking events again from any point changes
    nothing."""
    api = Api()
    for kind, args, extra in history:
        emit(api.m, kind, args, dict(extra))
    events = api.m.take()
    if events:
        api.journal.append(events)
    tracker = RevisionTracker("rev", builder=glob)
    delivered = [dict(e, id=f"e1:{i}") for i, e in enumerate(events, 1)]
    restarted = any(e["type"] == "master.started" for e in delivered)
    for event in delivered + ([] if restarted else delivered[min(replay, len(delivered)):]):
        tracker.feed(event)

    def counted(name: str) -> bool:
        return glob is None or (name.startswith("a") if glob == "a*" else name == glob)

    rows = api.state.branch_revisions("main")
    row = rows[0] if rows else {"builders": {}}
    assert tracker.status == revision_status(row, counted)
    assert {n: visible(c) for n, c in tracker.cells.items()} == {
        n: visible(c) for n, c in row["builders"].items() if counted(n)}
    assert failures({"builders": tracker.cells}) == failures(row, counted)
    code, body = api.get("revisions?revision=rev" + (f"&builder={glob}" if glob else ""))
    result = tracker.result()
    if rows:
        (shown,) = body["revisions"]
        assert (shown["state"], shown["result"]) == (result.state, result.result)
        assert (result.exit_code == 0) == shown["green"] or result.state != "done"
    if result.state == "done":
        assert result.exit_code == (0 if result.result in ("success", "warnings") else 1)
    else:
        assert result.exit_code == 2


def test_a_queued_rebuild_keeps_a_revision_from_being_done_and_a_cancelled_one_does_not() -> None:
    """A request newer than a builder's build and still queued (someone asked for a rebuild)
    is its cell: the revision is running again; when that request is cancelled, the build
    decides again; once the rebuild's build started, it is the cell."""
    api = Api()
    api.m.request("submitted", 1, "linux", at=T0)
    api.m.build("finished", 1, "linux", result="failure", started_at=T0, at=T0 + 5, buildrequestid=1)
    api.m.request("completed", 1, "linux", at=T0 + 5, result="failure")
    api.feed()

    def status() -> tuple[str, Any]:
        row = api.ok("revisions?revision=r1")["revisions"][0]
        return row["state"], row["result"]

    assert status() == ("done", "failure")
    api.m.request("submitted", 2, "linux", at=T0 + 10)
    api.feed()
    assert status() == ("pending", None)
    api.m.request("cancelled", 2, "linux", at=T0 + 11)
    api.feed()
    assert status() == ("done", "failure")
    api.m.request("submitted", 3, "linux", at=T0 + 12)
    api.m.build("started", 3, "linux", started_at=T0 + 13, at=T0 + 13, buildrequestid=3)
    api.m.request("completed", 1, "linux", at=T0 + 14, result="failure")  # a late duplicate
    api.feed()
    assert status() == ("running", None)
    api.m.build("finished", 3, "linux", result="success", started_at=T0 + 13, at=T0 + 20, buildrequestid=3)
    api.feed()
    assert status() == ("done", "success")


def test_lines_the_plugin_removed_do_not_truncate_a_tail() -> None:
    """A ``log.lines`` chunk covers ``num_lines`` lines of the log, the environment dump the
    plugin removed included: the next chunk starting after them is no gap; one starting later
    (lines the rate limit skipped) is."""
    api = Api()
    api.m.step("started", 1, 1, "linux", "test", started_at=T0)
    api.m.emit("log.lines", {"logid": 1, "stepid": 1, "buildid": 1, "builder": "linux", "name": "stdio",
                             "first_line": 0, "num_lines": 42, "lines": ["argv: make test", "using PATH"]})
    api.m.emit("log.lines", {"logid": 1, "stepid": 1, "buildid": 1, "builder": "linux", "name": "stdio",
                             "first_line": 42, "num_lines": 1, "lines": ["ok"]})
    api.feed()
    tail = api.state.log_tail("m1", 1)
    assert tail is not None and (tail["lines"], tail["truncated"]) == (["argv: make test", "using PATH", "ok"], False)
    api.m.emit("log.lines", {"logid": 1, "stepid": 1, "buildid": 1, "builder": "linux", "name": "stdio",
                             "first_line": 900, "num_lines": 1, "lines": ["FAIL"]})
    api.feed()
    assert tail["truncated"] and tail["lines"][-1] == "FAIL"
