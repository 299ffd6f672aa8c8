"""The build state's checkpoint and its warm-up (firehose.checkpoint): a checkpoint and the
events after it make exactly the state a rebuild makes; a checkpoint that cannot continue the
journal is ignored with a log line; while the state warms up, live events are applied exactly
once, in order, and ``/api`` answers 503 ``warming_up`` until the state is complete."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import pickle
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger

import firehose.state
from firehose import checkpoint
from firehose.checkpoint import Checkpointer, CheckpointRejected, StateFeed
from firehose.hub import Hub
from firehose.ingest import MasterTokens
from firehose.journal import MemoryJournal
from firehose.state import BuildState
from firehose.web import build_site
from tests.unit.helpers import HeldReads, Scenario

T0 = 1_700_000_000.0

# -- generated histories ------------------------------------------------------------------------

BUILDERS = ("linux", "mac", "win")
REVISIONS = ("r1", "r2", "r3")
BRANCHES = ("main", "release")
RESULTS = (None, "success", "warnings", "failure", "exception", "retry", "cancelled", "skipped")
ids = st.integers(min_value=1, max_value=6)

operation = st.one_of(
    st.tuples(st.just("request"), st.sampled_from(["submitted", "claimed", "completed", "cancelled"]), ids,
              st.sampled_from(BUILDERS), st.sampled_from(REVISIONS), st.sampled_from(BRANCHES)),
    st.tuples(st.just("build"), st.sampled_from(["started", "updated", "finished"]), ids,
              st.sampled_from(BUILDERS), st.sampled_from(REVISIONS), st.sampled_from(BRANCHES),
              st.sampled_from(RESULTS)),
    st.tuples(st.just("step"), st.sampled_from(["started", "finished"]), ids, ids, st.sampled_from(BUILDERS),
              st.sampled_from(["compile", "test"]), st.sampled_from(RESULTS)),
    st.tuples(st.just("log"), ids, ids, st.lists(st.sampled_from(["ok", "error: x", ""]), min_size=1, max_size=3)),
    st.tuples(st.just("change"), st.sampled_from(REVISIONS), st.sampled_from(BRANCHES)),
    st.tuples(st.just("buildset"), st.lists(st.sampled_from(BUILDERS), max_size=3), st.sampled_from(REVISIONS)),
    st.tuples(st.just("worker"), st.sampled_from(["connected", "disconnected"]), st.sampled_from(["w1", "w2"])),
    st.tuples(st.just("master"), st.sampled_from(["started", "stopped", "heartbeat"]),
              st.lists(ids, max_size=3), st.lists(ids, max_size=3)),
)
#: A history: operations, each by one of two masters, turned into events in this order.
histories = st.lists(st.tuples(st.sampled_from(["m1", "m2"]), operation), max_size=40)


def events_of(history: list[tuple[str, tuple[Any, ...]]]) -> list[dict[str, Any]]:
    """Plugin-shaped events for a generated history (times move forward a second an event)."""
    masters = {name: Scenario(name, start=T0) for name in ("m1", "m2")}
    out = []
    for n, (master, op) in enumerate(history):
        s = masters[master]
        at = T0 + n
        kind = op[0]
        if kind == "request":
            _, verb, brid, builder, rev, branch = op
            s.request(verb, brid, builder, rev, branch, at=at)
        elif kind == "build":
            _, verb, buildid, builder, rev, branch, result = op
            s.build(verb, buildid, builder, rev, branch, result=result if verb == "finished" else None, at=at,
                    started_at=T0 + buildid)
        elif kind == "step":
            _, verb, stepid, buildid, builder, name, result = op
            s.step(verb, stepid, buildid, builder, name, started_at=at - 1,
                   complete_at=at if verb == "finished" else None,
                   result=result if verb == "finished" else None)
        elif kind == "log":
            _, stepid, buildid, lines = op
            s.emit("log.lines", {"logid": stepid, "stepid": stepid, "buildid": buildid, "name": "stdio",
                                 "lines": lines, "first_line": 0}, at)
        elif kind == "change":
            _, rev, branch = op
            s.emit("change.new", {"changeid": n, "revision": rev, "branch": branch, "author": "a"}, at)
        elif kind == "buildset":
            _, builders, rev = op
            s.emit("buildset.submitted", {"buildsetid": n, "builders": builders, "revision": rev,
                                          "branch": "main"}, at)
        elif kind == "worker":
            _, verb, worker = op
            s.emit(f"worker.{verb}", {"worker": worker}, at)
        else:
            _, verb, running, queued = op
            data: dict[str, Any] = {"last_seq": s.seq}
            if verb == "started":
                data.update(running=[{"buildid": b} for b in running],
                            queued=[{"buildrequestid": r} for r in queued])
            s.emit(f"master.{verb}", data, at)
        out.extend(s.take())
    return out


def canonical(value: Any) -> Any:
    """A state (or any part of one) as plain lists, keeping every order that matters: equal
    canonical forms mean equal states, and equal answers from every endpoint."""
    if isinstance(value, BuildState):
        return canonical({k: v for k, v in vars(value).items() if k != "apply"})  # not a test's spy
    if isinstance(value, dict):
        return ("dict", [(canonical(k), canonical(v)) for k, v in value.items()])
    if isinstance(value, deque):
        return ("deque", value.maxlen, [canonical(v) for v in value])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [canonical(v) for v in value])
    if isinstance(value, (set, frozenset)):
        return ("set", sorted(repr(v) for v in value))
    return value


def result(d: defer.Deferred[Any]) -> Any:
    """The result of a Deferred that has fired (everything here is synchronous)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Exception) or hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def append(journal: MemoryJournal, events: list[dict[str, Any]]) -> None:
    """Append events, a batch per run of one master (as masters send them)."""
    run: list[dict[str, Any]] = []
    for event in events:
        if run and run[-1]["master"] != event["master"]:
            result(journal.append(run))
            run = []
        run.append(event)
    if run:
        result(journal.append(run))


def rebuilt(journal: MemoryJournal) -> BuildState:
    """The state a rebuild from the journal makes (what a start without a checkpoint gave)."""
    state = BuildState()
    result(state.rebuild(journal))
    return state


def rebuilt_of(events: list[dict[str, Any]]) -> BuildState:
    """The state a rebuild makes of a journal of ``events`` (for a journal whose reads a test
    holds)."""
    journal = MemoryJournal(epoch="e1")
    append(journal, events)
    return rebuilt(journal)


def run_all(clock: Clock) -> None:
    clock.advance(0)


def run_one(clock: Clock) -> bool:
    """Run the earliest due call alone (one slice of the warm-up); False when none is due."""
    due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
    if not due:
        return False
    call = min(due, key=lambda c: c.getTime())
    func, args, kw = call.func, call.args, call.kw
    call.cancel()
    func(*args, **kw)
    return True


def warm(feed: StateFeed, clock: Clock, held: HeldReads | None = None) -> None:
    """Let the feed run until it is ready (bounded)."""
    d = feed.start() if feed.started_at is None else feed.when_ready()
    for _ in range(10_000):
        if feed.ready:
            break
        if held is not None and held.release():
            continue
        run_all(clock)
    assert feed.ready, feed.progress()
    result(d)


class Recorder:
    """Checkpoint log lines, captured (the module's logger, replaced for the test)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[dict[str, Any]] = []
        monkeypatch.setattr(checkpoint, "log", Logger(namespace="firehose.checkpoint", observer=self.events.append))

    def text(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(formatEvent(e) for e in self.events)


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    return Recorder(monkeypatch)


def saved(tmp_path: Path, journal: MemoryJournal, upto: int | None = None, name: str = "j.state") -> str:
    """Warm a state from ``journal`` and write its checkpoint; the path."""
    clock = Clock()
    feed = StateFeed(BuildState(), journal, clock, start_after=0, source="journal")
    warm(feed, clock)
    path = str(tmp_path / name)
    checkpoint.write(path, feed.state, journal.epoch, feed.last)
    return path


# -- a checkpoint and its tail give the state a rebuild gives ------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories, split=st.floats(min_value=0, max_value=1), page=st.sampled_from([1, 3, 2000]))
def test_checkpoint_and_tail_replay_make_the_state_a_rebuild_makes(tmp_path: Path, history: Any, split: float,
                                                                   page: int) -> None:
    """Whatever the history and wherever the checkpoint is taken: a server that stops there
    (checkpoint), and starts again after more events were journaled, replays only the events
    after the checkpoint and reaches exactly the state a rebuild of the whole journal makes,
    which is the state of a server that never stopped."""
    events = events_of(history)
    k = int(split * len(events))
    journal = MemoryJournal(epoch="e1")
    append(journal, events[:k])
    path = saved(tmp_path, journal)
    append(journal, events[k:])

    found, why = result(checkpoint.restore(path, journal))
    assert found is not None, why
    assert found.offset == journal.head - (len(events) - k)
    clock = Clock()
    applied: list[int] = []
    feed = StateFeed(found.state, journal, clock, start_after=found.offset, source="checkpoint", page=page)
    spy_applied(feed.state, applied)
    warm(feed, clock)
    assert applied == list(range(found.offset + 1, journal.head + 1))
    assert canonical(feed.state) == canonical(rebuilt(journal))
    continuous = BuildState()
    append_all = MemoryJournal(epoch="e2")
    append(append_all, events)
    result(continuous.rebuild(append_all))
    assert canonical(feed.state) == canonical(continuous)


def spy_applied(state: BuildState, applied: list[int]) -> None:
    """Record the offset of every event the state actually applies (not the ones it drops as
    already applied), by passing it events one at a time."""
    real = state.apply

    def apply(events: list[Any]) -> None:
        for event in events:
            before = state.offset
            real([event])
            if state.offset != before:
                applied.append(event.offset)

    state.apply = apply  # type: ignore[method-assign]


@settings(max_examples=150, deadline=None)
@given(
    history=histories,
    before=st.floats(min_value=0, max_value=1),
    steps=st.lists(st.sampled_from(["release", "slice", "live"]), max_size=60),
    page=st.sampled_from([1, 2, 5, 2000]),
    max_buffer=st.sampled_from([1, 3, 50_000]),
    from_checkpoint=st.booleans(),
)
def test_live_events_during_warm_up_are_applied_exactly_once_in_order(
    history: Any, before: float, steps: list[str], page: int, max_buffer: int, from_checkpoint: bool
) -> None:
    """The state warms up from the journal (reads held until released, slices run one at a
    time) while live events keep arriving in any interleaving, some of them before a page that
    already holds them is read, some overflowing the buffer: every event is applied exactly
    once, in offset order, none skipped, and the state is the one a rebuild makes."""
    events = events_of(history)
    k = int(before * len(events))
    journal = MemoryJournal(epoch="e1")
    append(journal, events[:k])
    clock = Clock()
    state = BuildState()
    start_after = 0
    if from_checkpoint and k:
        # A checkpoint part of the way: its state has applied the first events already.
        start_after = k // 2
        state.apply(result(journal.read(0, start_after)))
    held = HeldReads(journal)
    applied: list[int] = []
    spy_applied(state, applied)
    feed = StateFeed(state, journal, clock, start_after=start_after, source="journal", page=page,
                     max_buffer=max_buffer, timer=iter(range(10**9)).__next__, slice_seconds=0.5)
    feed.start()
    live = list(events[k:])
    for step in steps:
        if step == "release":
            held.release()
        elif step == "slice":
            run_one(clock)
        elif live:
            append(journal, [live.pop(0)])
    append(journal, live)
    warm(feed, clock, held)
    assert applied == list(range(start_after + 1, journal.head + 1))
    assert canonical(state) == canonical(rebuilt_of(events))
    # Once ready, it follows the journal live.
    more = events_of([("m1", ("worker", "connected", "w9"))])
    more[0]["seq"] = 10_000
    result(journal.append(more))
    assert state.offset == journal.head and applied[-1] == journal.head


def test_the_window_is_the_rebuilds() -> None:
    """Without a checkpoint the feed replays as many events as ``BuildState.rebuild`` does."""
    window = inspect.signature(BuildState.rebuild).parameters["window"].default
    assert checkpoint.STATE_WINDOW == window


def test_warm_up_starts_at_the_window_and_reflects_the_head_when_nothing_is_retained(tmp_path: Path) -> None:
    """With nothing retained (all removed by retention) the warmed state still reflects the
    head, as a rebuild's does, so a snapshot's cursor never looks expired."""
    journal = MemoryJournal(epoch="e1")
    append(journal, events_of([("m1", ("worker", "connected", "w1"))] * 5))
    journal._retention = type(journal._retention)(max_age=None, max_events=0)
    result(journal.trim())
    clock = Clock()
    feed = StateFeed(BuildState(), journal, clock, start_after=journal.earliest - 1, source="journal")
    warm(feed, clock)
    assert feed.state.offset == journal.head == 5


def test_an_event_the_state_cannot_apply_is_skipped_alone(logged: Recorder) -> None:
    """An event that makes the state raise (a bug) is logged and skipped; the events after it
    in the same page are applied."""
    journal = MemoryJournal(epoch="e1")
    append(journal, events_of([("m1", ("worker", "connected", "w1"))] * 3))
    state = BuildState()
    real = state.apply

    def apply(events: list[Any]) -> None:
        for e in events:
            if e.offset == 2 and state.offset < 2:
                state.offset = 2
                raise RuntimeError("boom")
            real([e])

    state.apply = apply  # type: ignore[method-assign]
    clock = Clock()
    feed = StateFeed(state, journal, clock, start_after=0, source="journal")
    warm(feed, clock)
    assert state.offset == 3
    assert "offset 2 failed" in logged.text()


# -- checkpoints that are ignored -------------------------------------------------------------------


def journal_of(n: int, epoch: str = "e1", master: str = "m1") -> MemoryJournal:
    journal = MemoryJournal(epoch=epoch)
    ops = [("request", "submitted", i % 6 + 1, "linux", "r1", "main") for i in range(n)]
    append(journal, events_of([(master, op) for op in ops]))
    return journal


def rewrite(path: str, edit: Any) -> None:
    """Change a checkpoint's header (``edit(header) -> header``) or, given bytes, its payload."""
    raw = Path(path).read_bytes()
    magic, rest = raw[: len(checkpoint.MAGIC)], raw[len(checkpoint.MAGIC):]
    line, _, payload = rest.partition(b"\n")
    header = json.loads(line)
    if callable(edit):
        header = edit(header)
    else:
        payload = edit
        header["length"] = len(payload)
        header["sha256"] = hashlib.sha256(payload).hexdigest()
    Path(path).write_bytes(magic + json.dumps(header).encode() + b"\n" + payload)


class Evil:
    def __reduce__(self) -> Any:
        return (os.system, ("echo pwned > /dev/null",))


def _garbage(path: str) -> None:
    Path(path).write_bytes(b"\x00\xffnot a checkpoint at all")


def _empty(path: str) -> None:
    Path(path).write_bytes(b"")


def _truncated(path: str) -> None:
    raw = Path(path).read_bytes()
    Path(path).write_bytes(raw[: len(raw) - 100])


def _header_cut(path: str) -> None:
    Path(path).write_bytes(Path(path).read_bytes()[: len(checkpoint.MAGIC) + 10])


def _flipped(path: str) -> None:
    raw = bytearray(Path(path).read_bytes())
    raw[-50] ^= 0xFF
    Path(path).write_bytes(bytes(raw))


def _old_version(path: str) -> None:
    rewrite(path, lambda h: {**h, "key": checkpoint.state_key(b"an older firehose/state.py")})


def _huge_length(path: str) -> None:
    rewrite(path, lambda h: {**h, "length": 10**15})


def _other_format(path: str) -> None:
    rewrite(path, lambda h: {**h, "format": 0})


def _bad_header(path: str) -> None:
    rewrite(path, lambda h: {**h, "offset": "12"})


def _foreign_pickle(path: str) -> None:
    rewrite(path, pickle.dumps(Evil()))


def _not_a_state(path: str) -> None:
    rewrite(path, pickle.dumps({"offset": 3}))


def _not_json(path: str) -> None:
    raw = Path(path).read_bytes()
    Path(path).write_bytes(checkpoint.MAGIC + b"{not json\n" + raw.partition(b"\n")[2].partition(b"\n")[2])


@pytest.mark.parametrize("damage, says", [
    (_garbage, "not a firehose state checkpoint"),
    (_empty, "not a firehose state checkpoint"),
    (_header_cut, "truncated"),
    (_truncated, "truncated"),
    (_huge_length, "truncated or padded"),
    (_flipped, "SHA-256"),
    (_not_json, "not JSON"),
    (_bad_header, "'offset'"),
    (_old_version, "another version of the build state"),
    (_other_format, "format 0"),
    (_foreign_pickle, "refusing"),
    (_not_a_state, "not a BuildState"),
])
def test_a_damaged_foreign_or_old_checkpoint_is_ignored_with_a_log_line(
    tmp_path: Path, logged: Recorder, damage: Any, says: str
) -> None:
    """Nothing about the file can stop the start: a damaged, foreign or other-version
    checkpoint is ignored (the state is rebuilt) and the log says why; a foreign pickle is
    not run."""
    journal = journal_of(5)
    path = saved(tmp_path, journal)
    damage(path)
    found, why = result(checkpoint.restore(path, journal))
    assert found is None
    assert says in why
    text = logged.text()
    assert "ignoring the checkpoint" in text and says in text and path in text


def test_no_checkpoint_is_no_warning(tmp_path: Path, logged: Recorder) -> None:
    found, why = result(checkpoint.restore(str(tmp_path / "none.state"), journal_of(1)))
    assert (found, why, logged.events) == (None, "no checkpoint", [])


def test_a_checkpoint_that_cannot_continue_the_journal_is_ignored(tmp_path: Path, logged: Recorder) -> None:
    """Another epoch; an offset ahead of the head; events after it removed by retention; too
    far behind the head; a journal whose event at its offset is another (rewritten after a
    loss): each is ignored with the reason logged."""
    journal = journal_of(10)
    path = saved(tmp_path, journal)

    found, why = result(checkpoint.restore(path, journal_of(10, epoch="e2")))
    assert found is None and "epoch e1" in why
    found, why = result(checkpoint.restore(path, journal_of(4)))
    assert found is None and "ahead of the journal's head 4" in why
    found, why = result(checkpoint.restore(path, journal_of(10, master="m2")))
    assert found is None and "rewritten" in why

    longer = journal_of(30)
    path = saved(tmp_path, journal_of(10), name="older.state")
    found, why = result(checkpoint.restore(path, longer, window=10))
    assert found is None and "20 events behind" in why
    found, _ = result(checkpoint.restore(path, longer, window=20))
    assert found is not None and found.offset == 10
    longer._retention = type(longer._retention)(max_age=None, max_events=15)
    result(longer.trim())
    found, why = result(checkpoint.restore(path, longer))
    assert found is None and "retention removed events after it" in why
    assert logged.text().count("ignoring the checkpoint") == 5


def test_the_key_follows_the_state_code() -> None:
    """The key hashes the state's code (state.py and the firehose modules it imports from),
    the Python version and the format: any change to one gives another key."""
    assert checkpoint.state_key() == checkpoint.state_key(checkpoint._state_source())
    assert checkpoint.state_key(b"a") != checkpoint.state_key(b"b")
    names = [m.__name__ for m in checkpoint._state_modules()]
    assert "firehose.state" in names and "firehose.pushes" in names
    assert Path(firehose.state.__file__).read_bytes() in checkpoint._state_source()


def test_a_checkpoint_is_written_atomically_and_privately(tmp_path: Path) -> None:
    """The file is replaced whole (no temporary left), readable only by its owner, and reads
    back as the same state."""
    journal = journal_of(7)
    path = saved(tmp_path, journal)
    assert [p.name for p in tmp_path.iterdir()] == ["j.state"]
    assert os.stat(path).st_mode & 0o777 == 0o600
    back = checkpoint.read(path)
    assert (back.epoch, back.offset, back.last) == ("e1", 7, ("m1", "i1", 7))
    assert canonical(back.state) == canonical(rebuilt(journal))
    with pytest.raises(CheckpointRejected):
        checkpoint.read(path, key="another")


def test_leftover_temporary_files_are_removed(tmp_path: Path) -> None:
    path = str(tmp_path / "j.state")
    (tmp_path / "j.state.tmp-123").write_bytes(b"half")
    (tmp_path / "other.tmp-1").write_bytes(b"not ours")
    checkpoint.remove_leftovers(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.tmp-1"]


# -- writing checkpoints --------------------------------------------------------------------------


def test_periodic_checkpoints_only_when_ready_and_moved(tmp_path: Path, logged: Recorder) -> None:
    """Every interval the state is written if it is complete and moved since the last
    checkpoint; at stop it is written once more.  (fork=False: in this process.)"""
    journal = journal_of(3)
    clock = Clock()
    held = HeldReads(journal)
    feed = StateFeed(BuildState(), journal, clock, start_after=0, source="journal")
    path = str(tmp_path / "j.state")
    writer = Checkpointer(path, feed, journal, clock, interval=60, fork=False)
    feed.start()
    writer.start()
    clock.advance(60)
    assert not os.path.exists(path)  # warming: nothing complete to write
    warm(feed, clock, held)
    clock.advance(60)
    assert checkpoint.read(path).offset == 3 and writer.written == 1
    clock.advance(60)
    assert writer.written == 1  # nothing moved
    append(journal, [{"master": "m1", "incarnation": "i1", "seq": 100, "type": "worker.connected", "time": T0,
                      "data": {"worker": "w1"}}])
    clock.advance(60)
    assert checkpoint.read(path).offset == 4 and writer.written == 2
    writer.stop(save=True)
    assert writer.written == 3
    clock.advance(600)
    assert writer.written == 3


def test_a_checkpoint_that_cannot_be_written_is_logged_not_raised(tmp_path: Path, logged: Recorder) -> None:
    journal = journal_of(2)
    clock = Clock()
    feed = StateFeed(BuildState(), journal, clock, start_after=0, source="journal")
    warm(feed, clock)
    writer = Checkpointer(str(tmp_path / "missing" / "j.state"), feed, journal, clock, interval=0, fork=False)
    assert writer.save() is False
    assert "cannot write the checkpoint" in logged.text()


# -- serving while warming up ------------------------------------------------------------------------


def get(client: StubTreq, path: str, method: str = "GET") -> tuple[int, Any, Any]:
    d = client.request(method, "http://firehose.test" + path)
    client.flush()
    response = result(d)
    body = result(response.content())
    return response.code, (json.loads(body) if body else None), response.headers


def test_api_answers_warming_up_until_the_state_is_complete_and_ingest_goes_on(logged: Recorder) -> None:
    """Until the state has caught up, every /api question answers 503 ``warming_up`` with
    ``Retry-After`` and the progress, /health stays 200 and says ``warming_up``, and ingest is
    accepted; once caught up, the answers are those of a state that never stopped, events
    ingested during the warm-up included (once)."""
    journal = journal_of(6)
    clock = Clock()
    clock.advance(T0 + 100)
    held = HeldReads(journal)
    feed = StateFeed(BuildState(), journal, clock, start_after=0, source="journal", page=2)
    site = build_site(hub=Hub(journal), journal=journal, clock=clock, tokens=MasterTokens({"m2": "tok"}),
                      state=feed.state, warmup=feed)
    client = StubTreq(site.resource)
    feed.start()
    held.release()
    run_one(clock)  # the first page, partly

    for path in ("/api/queue", "/api/builders", "/api/builds/m1/1", "/api", "/api/", "/api/nope"):
        code, body, headers = get(client, path)
        assert (code, body["error"]) == (503, "warming_up"), path
        assert set(body["progress"]) == {"source", "replayed", "remaining", "percent", "elapsed"}
        assert body["progress"]["source"] == "journal"
        assert "warming up" in body["message"]
        assert 1 <= int(headers.getRawHeaders(b"retry-after")[0]) <= 30
        assert headers.getRawHeaders(b"access-control-allow-origin") == [b"*"]
    code, _, _ = get(client, "/api/queue", "OPTIONS")
    assert code != 503
    code, health, _ = get(client, "/health")
    assert code == 200 and health["status"] == "ok"
    assert health["state"]["status"] == "warming_up" and "progress" in health["state"]
    assert metric(client, "firehose_state_ready") == 0
    assert metric(client, "firehose_state_replay_remaining") == health["state"]["progress"]["remaining"] > 0

    live = [{"master": "m2", "incarnation": "i1", "seq": 1, "type": "request.submitted", "time": T0 + 50,
             "data": {"buildrequestid": 9, "builder": "mac", "buildsetid": 9, "branch": "main", "revision": "r9",
                      "submitted_at": T0 + 50}}]
    d = client.post("http://firehose.test/ingest", json=live, headers={"Authorization": "Bearer tok"})
    client.flush()
    assert result(d).code == 200
    warm(feed, clock, held)

    code, body, _ = get(client, "/api/queue")
    assert code == 200
    assert body["cursor"] == "e1:7"
    assert sorted((r["master"], r["buildrequestid"]) for r in body["requests"]) == sorted(
        [("m1", i) for i in range(1, 7)] + [("m2", 9)])
    code, health, _ = get(client, "/health")
    assert health["state"] == {"status": "ready", "cursor": "e1:7", "source": "journal"}
    assert (metric(client, "firehose_state_ready"), metric(client, "firehose_state_replay_remaining")) == (1, 0)


def metric(client: StubTreq, name: str) -> float:
    """One unlabelled sample of /metrics."""
    d = client.request("GET", "http://firehose.test/metrics")
    client.flush()
    text = result(result(d).content()).decode()
    (value,) = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


def test_a_site_without_a_feed_has_no_gate() -> None:
    """build_site without ``warmup`` (tests, embedders) serves /api at once, and /health has
    no ``state``."""
    journal = journal_of(2)
    state = rebuilt(journal)
    client = StubTreq(build_site(hub=Hub(journal), journal=journal, clock=Clock(), tokens=MasterTokens({}),
                                 state=state).resource)
    assert get(client, "/api/queue")[0] == 200
    assert "state" not in get(client, "/health")[1]


def test_the_server_feed_freezes_what_it_built_after_each_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``freeze_gc`` (the server's feeds), each full page applied is moved out of the
    cyclic collector's walks; without it (the default) the collector is left alone."""
    import gc

    frozen: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(1))
    journal = journal_of(5)
    clock = Clock()
    warm(StateFeed(BuildState(), journal, clock, start_after=0, source="journal", page=2), clock)
    assert frozen == []
    warm(StateFeed(BuildState(), journal, clock, start_after=0, source="journal", page=2, freeze_gc=True), clock)
    assert len(frozen) == 2  # pages of 2, 2 and 1 events: the short last one is not frozen


def test_webhooks_api_is_not_gated_while_warming() -> None:
    """/api/webhooks does not read the build state: it answers during the warm-up (here its
    403 for a request without the admin token), while the state's questions answer 503."""
    from firehose.config import WebhookConfig
    from firehose.webhooks.dispatcher import make_dispatcher

    journal = journal_of(4)
    clock = Clock()
    held = HeldReads(journal)
    hub = Hub(journal)
    feed = StateFeed(BuildState(), journal, clock, start_after=0, source="journal")
    dispatcher = make_dispatcher(hub, WebhookConfig(admin_token="admin-token-123"), ":memory:", clock)
    site = build_site(hub=hub, journal=journal, clock=clock, tokens=MasterTokens({}), state=feed.state,
                      warmup=feed, webhooks=dispatcher, webhook_admin_token="admin-token-123")
    client = StubTreq(site.resource)
    feed.start()
    assert get(client, "/api/queue")[0] == 503
    code, body, _ = get(client, "/api/webhooks")
    assert code in (401, 403) and body["error"] != "warming_up"
    warm(feed, clock, held)
    assert get(client, "/api/queue")[0] == 200


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories, pages=st.integers(min_value=0, max_value=5))
def test_a_stop_during_the_warm_up_checkpoints_what_was_replayed(tmp_path: Path, history: Any, pages: int) -> None:
    """Stopped part of the way through a warm-up, the server writes the state as far as it got
    (a state at its offset like any other); the next start continues from there and reaches
    the state a rebuild makes."""
    events = events_of(history)
    journal = MemoryJournal(epoch="e1")
    append(journal, events)
    clock = Clock()
    held = HeldReads(journal)
    feed = StateFeed(BuildState(), journal, clock, start_after=0, source="journal", page=3)
    feed.start()
    for _ in range(pages):
        held.release()
        run_all(clock)
    feed.stop()
    path = str(tmp_path / "partial.state")
    checkpoint.write(path, feed.state, journal.epoch, feed.last)
    held.release_all()

    restored = checkpoint.restore(path, journal)
    held.release_all()  # its look at the event at the checkpoint's offset
    found, why = result(restored)
    assert found is not None, why
    again = StateFeed(found.state, journal, clock, start_after=found.offset, source="checkpoint", page=3)
    warm(again, clock, held)
    assert canonical(again.state) == canonical(rebuilt_of(events))
