"""``wait``: follow every build of one revision until all have finished (what ``firehose wait``
runs), and :class:`RevisionTracker`, which decides what belongs to the revision and when it is
done.

"Done" and "how did it go" are :func:`firehose.pushes.revision_status`, the definition the
server's pushlog uses (``/api/revisions``, docs/api.md#is-my-push-done): the tracker keeps, per
builder, the same cell the pushlog keeps (its newest build of the revision, or before one
started its newest request), from the same events, so ``wait`` and the pushlog agree.

Built on the blocking :class:`~firehose.client.blocking.Stream`: no Twisted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from firehose.client.blocking import Stream
from firehose.client.common import is_event
from firehose.filters import GlobSet
from firehose.pushes import (
    GREEN,
    SUPERSEDED,
    Cell,
    build_cell,
    pending_cell,
    place,
    request_cell,
    request_status,
    revision_status,
    visible,
)

#: Results of one build that are no failure (a revision passes when it is green:
#: :data:`firehose.pushes.GREEN`).
OK_RESULTS = frozenset({*GREEN, "skipped"})
_WAIT_TYPES = ["buildset.submitted", "buildset.completed", "request.*", "build.started", "build.finished",
               "master.started"]

_Key = tuple[Any, int]


def _glob(pattern: str) -> GlobSet:
    """The server's own glob matcher (linear, never a backtracking regex) for ``a*,b*``."""
    return GlobSet(pattern.split(","))


@dataclass
class _Item:
    kind: str  # "buildset" | "request" | "build" | "builder" (named by a buildset, nothing seen yet)
    ident: int
    builder: str | None = None
    number: int | None = None
    result: str | None = None
    done: bool = False
    url: str | None = None
    brid: int | None = None
    master: str | None = None
    started_at: float | None = None
    status: str | None = None  # a request's: pending, claimed, completed, cancelled
    lost: bool = False  # a build its master no longer ran when it restarted

    @property
    def outcome(self) -> str:
        """The result to show: a request cancelled, or completed without a result (collapsed),
        says so."""
        if self.kind == "request" and self.status == "cancelled":
            return "cancelled"
        if self.kind == "request" and self.status == "completed":
            return self.result or "skipped"
        if self.lost and self.result is None:
            return "lost (exception)"
        return self.result or "unknown"

    @property
    def ok(self) -> bool:
        return self.outcome in OK_RESULTS

    def label(self) -> str:
        if self.kind == "build":
            return f"{self.builder} #{self.number}"
        if self.kind == "request":
            return f"{self.builder} (request {self.ident})"
        if self.kind == "builder":
            return f"{self.builder} (queued)"
        return f"buildset {self.ident}"


@dataclass
class WaitResult:
    """What :func:`wait` found.

    :ivar state: the revision's state (``pending``, ``running``, ``done``) and :ivar result:
        its overall result once done, as :func:`firehose.pushes.revision_status` defines them
        (the pushlog's ``state`` and ``result``).
    :ivar builds: finished builds (``builder``, ``number``, ``result``, ``url``), in the order
        they finished, retried and rebuilt ones included.
    :ivar counted: what decides, one per builder (its newest build or request); :ivar failed:
        those that finished and did not succeed.
    :ivar timed_out: the timeout passed first (``pending`` says what was still running).
    """

    revision: str
    builds: list[_Item] = field(default_factory=list)
    unbuilt: list[_Item] = field(default_factory=list)
    pending: list[_Item] = field(default_factory=list)
    timed_out: bool = False
    submitted: bool = False
    error: str | None = None
    state: str = "pending"
    result: str | None = None
    counted: list[_Item] = field(default_factory=list)
    failed: list[_Item] = field(default_factory=list)
    cells: dict[str, Cell] = field(default_factory=dict)

    @property
    def green(self) -> bool:
        """Done with success or warnings: what the pushlog calls green."""
        return self.state == "done" and self.result in GREEN

    @property
    def ok(self) -> bool:
        """Every build finished and the revision is green."""
        return self.exit_code == 0

    @property
    def exit_code(self) -> int:
        """0: done and green; 1: done and not green (some build failed); 2: not done (timeout)
        or error."""
        if self.error is not None or self.timed_out or not self.submitted or self.state != "done":
            return 2
        return 0 if self.green else 1

    def summary(self) -> str:
        """A few human lines: one per build, then the verdict."""
        deciding = {id(i) for i in self.counted}
        lines = [f"  {b.label():<40} {b.outcome}" + ("" if id(b) in deciding else " (superseded)")
                 + (f"  {b.url}" if b.url else "") for b in self.builds]
        lines += [f"  {r.label():<40} {r.outcome} (no build)" for r in self.unbuilt]
        if self.error is not None:
            verdict = f"error: {self.error}"
        elif not self.submitted:
            verdict = f"no build was submitted for revision {self.revision} before the timeout"
        elif self.timed_out or self.state != "done":
            running = ", ".join(p.label() for p in self.pending) or "nothing visible"
            verdict = f"timed out; still waiting for: {running}"
        elif not self.counted:
            verdict = f"nothing was built: its requests were cancelled or collapsed into newer ones ({self.result})"
        elif self.failed:
            verdict = f"{len(self.failed)} of {len(self.counted)} failed ({self.result})"
        else:
            verdict = f"all {len(self.counted)} succeeded"
        return "\n".join([f"revision {self.revision}: {verdict}", *lines])


class RevisionTracker:
    """Follows the builds of one revision through request, buildset and build events.

    A revision is matched on a request's or buildset's source stamps and on a build's
    ``revision``/``got_revision``; a build also belongs when its request does, and a request
    when its buildset does.  Each builder's **cell** is kept as the server's pushlog keeps it
    (:func:`firehose.pushes.place`), and :attr:`status` is
    :func:`firehose.pushes.revision_status` of the cells: the revision is *done* when every
    counted build finished (a build that ends in ``retry`` counts as queued; a request cancelled
    or collapsed before it got a build does not count; a build a restarted master no longer
    runs is over, as on the server).  Feed it events in the journal's order, as :func:`wait`
    does, and it holds exactly the server's cells.

    :param revision: the revision; ``*`` is a wildcard (``4d2c*`` for a short hash).
    :param builder: only builds of builders matching this glob.
    """

    def __init__(self, revision: str, branch: str | None = None, builder: str | None = None) -> None:
        self.revision = revision
        self._rev = _glob(revision)
        self._branch = _glob(branch) if branch else None
        self._builder = _glob(builder) if builder else None
        self.buildsets: dict[_Key, _Item] = {}
        self.requests: dict[_Key, _Item] = {}
        self.builds: dict[_Key, _Item] = {}
        self.finished: list[_Item] = []
        #: builder -> its cell, as in a pushlog row's ``builders``.
        self.cells: dict[str, Cell] = {}

    def _revisions(self, data: Mapping[str, Any]) -> Iterable[str]:
        yield str(data.get("revision") or "")
        for ss in data.get("sourcestamps") or ():
            if isinstance(ss, Mapping):
                yield str(ss.get("revision") or "")
        props = data.get("properties")
        if isinstance(props, Mapping):
            got = props.get("got_revision")
            if isinstance(got, Mapping):
                yield from (str(v) for v in got.values())
            elif got:
                yield str(got)

    def _matches(self, data: Mapping[str, Any], builder: bool = True) -> bool:
        if not any(r and self._rev.match(r) for r in self._revisions(data)):
            return False
        if self._branch is not None:
            branches = [data.get("branch")] + [
                ss.get("branch") for ss in data.get("sourcestamps") or () if isinstance(ss, Mapping)
            ]
            if not any(isinstance(b, str) and self._branch.match(b) for b in branches):
                return False
        return not builder or self._builder_ok(data.get("builder"))

    def _builder_ok(self, name: Any) -> bool:
        return self._builder is None or bool(self._builder.match(str(name or "")))

    def feed(self, event: Mapping[str, Any]) -> str | None:
        """Take one event into account; return a progress line when something finished.
        Taking an event twice, or an older one late, changes nothing."""
        entity, _, verb = str(event.get("type", "")).partition(".")
        data = event.get("data") or {}
        master = event.get("master")
        if entity == "buildset":
            return self._buildset(verb, master, data)
        if entity == "request":
            return self._request(verb, master, data)
        if entity == "build":
            return self._build(verb, master, data)
        if entity == "master" and verb == "started":
            return self._restarted(master, data)
        return None

    def _restarted(self, master: Any, snapshot: Mapping[str, Any]) -> str | None:
        """A master restarted (its ``master.started`` snapshot): its builds it no longer runs
        are over without a result, its requests it no longer queues cancelled, as the server's
        state reconciles them."""
        lines = []
        running = snapshot.get("running")
        if isinstance(running, list):
            alive = {b.get("buildid") for b in running if isinstance(b, Mapping)}
            for (where, buildid), item in self.builds.items():
                if where == master and not item.done and buildid not in alive:
                    item.done = item.lost = True
                    self.finished.append(item)
                    assert item.builder is not None
                    place(self.cells, item.builder,
                          build_cell(master, buildid, item.number, True, item.result, item.started_at, item.brid))
                    lines.append(f"{item.label()}: lost when its master restarted")
        queued = snapshot.get("queued")
        if isinstance(queued, list):
            waiting = {r.get("buildrequestid") for r in queued if isinstance(r, Mapping)}
            for (where, brid), item in self.requests.items():
                if where == master and item.status == "pending" and brid not in waiting:
                    item.status, item.done = "cancelled", True
                    assert item.builder is not None
                    place(self.cells, item.builder, request_cell(master, brid, item.status, item.result))
        return "\n".join(lines) or None

    def _buildset(self, verb: str, master: Any, data: Mapping[str, Any]) -> str | None:
        bsid = data.get("buildsetid")
        if not isinstance(bsid, int):
            return None
        item = self.buildsets.get((master, bsid))
        if item is None:
            if not self._matches(data, builder=False):
                return None
            item = self.buildsets[(master, bsid)] = _Item("buildset", bsid, master=master)
        if verb == "submitted":
            for name in data.get("builders") or ():
                if isinstance(name, str) and self._builder_ok(name):
                    place(self.cells, name, pending_cell())
        if verb == "completed" and not item.done:
            item.done, item.result = True, data.get("result")
        return None

    def _request(self, verb: str, master: Any, data: Mapping[str, Any]) -> str | None:
        brid = data.get("buildrequestid")
        if not isinstance(brid, int) or not isinstance(data.get("builder"), str):
            return None
        item = self.requests.get((master, brid))
        if item is None:
            bsid = data.get("buildsetid")
            known_set = isinstance(bsid, int) and (master, bsid) in self.buildsets
            if not (self._matches(data) or (known_set and self._builder_ok(data.get("builder")))):
                return None
            item = self.requests[(master, brid)] = _Item("request", brid, builder=data["builder"], master=master)
        was_done = item.done
        item.status = request_status(item.status, verb)
        if data.get("result") is not None:
            item.result = data["result"]
        item.done = item.status in ("completed", "cancelled")
        assert item.builder is not None
        place(self.cells, item.builder, request_cell(master, brid, item.status, item.result))
        if item.done and not was_done and not any(b.brid == brid and b.master == master for b in self.builds.values()):
            return f"{item.label()}: {item.outcome} (no build)"
        return None

    def _build(self, verb: str, master: Any, data: Mapping[str, Any]) -> str | None:
        buildid = data.get("buildid")
        if not isinstance(buildid, int) or not isinstance(data.get("builder"), str):
            return None
        brid = data.get("buildrequestid")
        brid = brid if isinstance(brid, int) else None
        item = self.builds.get((master, buildid))
        if item is None:
            if not ((brid is not None and (master, brid) in self.requests) or self._matches(data)):
                return None
            item = self.builds[(master, buildid)] = _Item("build", buildid, builder=data["builder"], master=master)
        item.url = data.get("url") or item.url
        if not item.done or verb == "finished":
            # As the server merges a build: a field an event carries replaces the one known (a
            # late update does not change a finished build).
            for name in ("number", "started_at", "result"):
                if data.get(name) is not None:
                    setattr(item, name, data[name])
            item.brid = brid if brid is not None else item.brid
        line = None
        if verb == "finished" and not item.done:
            item.done = True
            self.finished.append(item)
            line = f"{item.label()}: {item.outcome}" + (f"  {item.url}" if item.url else "")
        assert item.builder is not None
        place(self.cells, item.builder,
              build_cell(master, buildid, item.number, item.done, item.result, item.started_at, item.brid))
        return line

    @property
    def status(self) -> tuple[str, str | None]:
        """``(state, result)`` of the revision: :func:`firehose.pushes.revision_status` of
        the cells."""
        return revision_status({"builders": self.cells})

    @property
    def submitted(self) -> bool:
        """Something of the revision (a build, a request, a builder named by a buildset) was seen."""
        return bool(self.cells)

    def _item(self, name: str, cell: Cell) -> _Item:
        """The build or request a cell shows."""
        if "buildid" in cell:
            found = self.builds.get((cell.get("master"), cell["buildid"]))
        elif "buildrequestid" in cell:
            found = self.requests.get((cell.get("master"), cell["buildrequestid"]))
        else:
            found = None
        return found or _Item("builder", 0, builder=name)

    @property
    def pending(self) -> list[_Item]:
        """What the revision still waits for: each counted cell not finished (a build that ended
        in ``retry`` waits for its next attempt)."""
        return [self._item(name, cell) for name, cell in sorted(self.cells.items())
                if cell["state"] in ("pending", "running") or (cell["state"] == "finished" and cell["result"] == "retry")]

    @property
    def done(self) -> bool:
        return self.status[0] == "done"

    def result(self, timed_out: bool = False, error: str | None = None) -> WaitResult:
        state, overall = self.status
        counted = [(name, cell) for name, cell in sorted(self.cells.items()) if cell["state"] not in SUPERSEDED]
        failed = [self._item(name, cell) for name, cell in counted
                  if cell["state"] == "finished" and cell["result"] not in (*OK_RESULTS, "retry")]
        built = {(b.master, b.brid) for b in self.builds.values()}
        return WaitResult(
            revision=self.revision,
            builds=list(self.finished),
            unbuilt=[r for r in self.requests.values() if r.done and (r.master, r.ident) not in built],
            pending=self.pending,
            timed_out=timed_out,
            submitted=self.submitted,
            error=error,
            state=state,
            result=overall,
            counted=[self._item(name, cell) for name, cell in counted],
            failed=failed,
            cells={name: visible(cell) for name, cell in self.cells.items()},
        )


def wait(
    url: str | Sequence[str],
    revision: str,
    *,
    branch: str | None = None,
    builder: str | None = None,
    timeout: float | None = None,
    since: str | None = "earliest",
    on_progress: Callable[[str], Any] | None = None,
    fail_fast: bool = True,
) -> WaitResult:
    """Wait until ``revision`` is done: every counted build of it (each builder's newest build,
    or its request still queued) has finished, as the pushlog decides
    (:func:`firehose.pushes.revision_status`, docs/api.md#is-my-push-done).

    First the server's history (from ``since``, default the oldest retained event) is searched
    for the revision, so builds that started - or finished - before the call count; then the
    live stream is followed.  When nothing has been submitted yet, it waits for the first
    submission, up to ``timeout``.

    :param timeout: seconds; ``None`` waits as long as it takes.
    :param on_progress: called with a line for each build that finishes.
    :returns: a :class:`WaitResult` (``.state``, ``.result``, ``.ok``, ``.exit_code``: 0 green,
        1 done and not green, 2 timeout; ``.summary()``).
    :raises RequestError: bad arguments; :raises Unavailable: the server is unreachable at
        the start (with ``fail_fast``).
    """
    tracker = RevisionTracker(revision, branch, builder)
    reported: set[str] = set()

    def report(line: str | None) -> None:
        if line and line not in reported:
            reported.add(line)
            (on_progress or (lambda _: None))(line)

    # History, filtered by the server on the revision: cheap even with a long journal.
    history = Stream(url, {"revision": [revision]}, since, stop_after=timeout, fail_fast=fail_fast,
                     poll_timeout=0.5, limit=1000)
    first: Mapping[str, Any] | None = None
    for _ in range(1_000_000):
        batch = history.fetch()
        for event in batch:
            if is_event(event):
                first = first or event
                report(tracker.feed(event))
        if not batch or history.timed_out:
            break
    if tracker.done or history.timed_out:
        return tracker.result(timed_out=history.timed_out and not tracker.done)
    # Live: every buildset, request, build and master restart, matched here, because a build's
    # revision may differ from the one submitted (got_revision) and still belong, and a
    # restarted master's snapshot ends builds it lost.  The history's filter hid such events,
    # and its cursor has moved past them: so take everything again from the first event the
    # history found, in the journal's order, in a new tracker (what the server's state does);
    # with none found, nothing earlier can belong.
    remaining = None if history.deadline is None else history.deadline - time.monotonic()
    tracker = RevisionTracker(revision, branch, builder)
    if first is not None:
        report(tracker.feed(first))
    live = Stream(url, {"type": _WAIT_TYPES}, first["id"] if first is not None else history.cursor,
                  stop_after=remaining, limit=1000)
    for event in live:
        if not is_event(event):
            continue
        report(tracker.feed(event))
        if tracker.done:
            return tracker.result()
    return tracker.result(timed_out=True)
