"""Materialized build state, kept from the event stream itself: the queue, running builds,
finished builds with their steps, the pushlog (builds per revision), step timings and build
times.

The state is a journal listener like the hub, so after every reactor turn it reflects exactly the
events up to :attr:`BuildState.offset`; every API answer carries that cursor, and a client that
subscribes from it misses nothing and sees nothing twice.  On start it rebuilds itself from the
journal, so it needs no storage of its own.

Events may come out of the natural order (a step before its build, an update after a finish, a
master's events interleaved with another's): every record is created by whichever event comes
first and merged field by field, and a finished build or request never becomes unfinished.
Everything is bounded: old finished builds, completed requests, revisions and timing samples
are forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from typing import Any

from twisted.internet import defer

from firehose.event import Event, field_values
from firehose.journal import IJournal

#: Results that make a build count as green: success and warnings (the build did its job).
GREEN = frozenset({"success", "warnings"})

#: Buildbot's results, worst first (as ``buildbot.process.results.worst_status`` orders them):
#: the overall result of a revision is the worst of its builds'.
WORST_FIRST = ("cancelled", "retry", "exception", "failure", "warnings", "success", "skipped")

#: A revision's states: ``pending`` (requested, no build started), ``running`` (some build
#: running or still queued), ``done`` (every counted build finished).
REVISION_STATES = ("pending", "running", "done")

Key = tuple[str, int]


#: A build or request as the API shows it: a plain dict, kept JSON-ready.
BuildRecord = dict[str, Any]
RequestRecord = dict[str, Any]


class RecordView:
    """Lets a filter judge a record as it would an event of that kind (``type`` is ``kind``)."""

    __slots__ = ("record", "kind")

    def __init__(self, record: dict[str, Any], kind: str) -> None:
        self.record = record
        self.kind = kind

    def values(self, field: str) -> tuple[str, ...]:
        values = field_values({"type": self.kind, "master": self.record.get("master")}, self.record, field)
        if field == "revision" and self.record.get("pushed_revision") not in (None, *values):
            # A build of a branch head is filed under the revision it was asked to build as
            # well as the one it checked out (``got_revision``), as the pushlog files it.
            values += (str(self.record["pushed_revision"]),)
        return values


def worst(results: Iterable[str | None]) -> str | None:
    """The worst of Buildbot results (:data:`WORST_FIRST`); a result Buildbot does not name
    ranks with ``exception``; ``None`` when there is none."""
    rank = {name: i for i, name in enumerate(WORST_FIRST)}
    known = [r for r in results if r is not None]
    return min(known, key=lambda r: rank.get(r, rank["exception"]), default=None)


def revision_status(row: dict[str, Any], builders: Any = None) -> tuple[str, str | None]:
    """``(state, result)`` of a pushlog row: the one definition of "is this push done, and how
    did it go", which ``/api/revisions``, ``/api/lastgreen`` and ``is_green`` share.

    The **counted** cells are each builder's newest build or request for the revision
    (``builders``, a predicate on names, narrows them), leaving out a request cancelled or
    collapsed (``skipped``) before it got a build: it was superseded.  A build that ended in
    ``retry`` counts as queued (Buildbot runs it again).  Then:

    * ``pending``: nothing counted has started (every counted cell is a queued request), or
      nothing has been requested yet; ``result`` is ``None``;
    * ``running``: some counted build is running or still queued while another has started or
      finished; ``result`` is ``None``;
    * ``done``: every counted build finished; ``result`` is the worst of their results.  When
      nothing counts but superseded requests, the revision is ``done`` with ``cancelled`` or
      ``skipped``.

    A revision is green when it is ``done`` with ``success`` or ``warnings``.
    """
    cells = [cell for name, cell in row["builders"].items() if builders is None or builders(name)]
    counted = [c for c in cells if c["state"] not in ("cancelled", "skipped")]
    if not counted:
        superseded = [c["state"] for c in cells]
        return ("done", worst(superseded)) if superseded else ("pending", None)
    waiting = [c for c in counted if c["state"] == "pending" or (c["state"] == "finished" and c["result"] == "retry")]
    finished = [c for c in counted if c["state"] == "finished" and c not in waiting]
    if len(waiting) == len(counted):
        return "pending", None
    if len(finished) < len(counted):
        return "running", None
    return "done", worst(c["result"] or "exception" for c in finished)


def _merge(record: dict[str, Any], data: dict[str, Any], keys: Iterable[str]) -> None:
    """Copy the given fields that the event actually carries (a ``None`` never erases a value)."""
    for key in keys:
        value = data.get(key)
        if value is not None or key not in record:
            record[key] = value


_BUILD_FIELDS = (
    "buildid", "number", "builder", "builderid", "tags", "buildrequestid", "buildsetid", "worker",
    "state", "started_at", "complete_at", "duration", "results", "result", "branch", "revision",
    "project", "repository", "sourcestamps", "url",
)
_STEP_FIELDS = (
    "stepid", "name", "number", "state", "hidden", "started_at", "complete_at", "duration",
    "results", "result", "urls",
)
_REQUEST_FIELDS = (
    "buildrequestid", "buildsetid", "builder", "builderid", "priority", "reason", "submitted_at",
    "claimed_at", "complete_at", "results", "result", "branch", "revision", "project",
    "repository", "sourcestamps",
)


def _requested_revision(data: dict[str, Any]) -> str | None:
    """The revision a build was asked to build (its source stamp), which is where the pushlog
    files it; ``revision`` prefers ``got_revision``, which a build of a branch's head only
    learns once it has checked out."""
    for stamp in data.get("sourcestamps") or ():
        if isinstance(stamp, dict) and stamp.get("revision"):
            return str(stamp["revision"])
    return None


#: How many of the oldest entries eviction looks at for a finished one.
_SCAN = 256

_REQUEST_STATUS = {"submitted": "pending", "claimed": "claimed", "completed": "completed",
                   "cancelled": "cancelled"}
_STATUS_ORDER = {"pending": 0, "claimed": 1, "completed": 2, "cancelled": 2}


class BuildState:
    """Everything the query API answers from.

    :param max_builds: finished builds remembered (the oldest are forgotten first).
    :param max_revisions: revisions remembered per branch.
    :param max_samples: step-timing and build-time samples kept per builder (and step).
    """

    def __init__(
        self,
        max_builds: int = 20_000,
        max_requests: int = 20_000,
        max_revisions: int = 500,
        max_branches: int = 200,
        max_samples: int = 2_000,
    ) -> None:
        self.max_builds = max_builds
        self.max_requests = max_requests
        self.max_revisions = max_revisions
        self.max_branches = max_branches
        self.max_samples = max_samples
        #: Offset of the last event applied: the cursor every answer reflects.
        self.offset = 0
        self.builds: OrderedDict[Key, BuildRecord] = OrderedDict()
        self.requests: OrderedDict[Key, RequestRecord] = OrderedDict()
        #: branch -> revision -> pushlog row (newest last), branches in order of last activity.
        self.revisions: OrderedDict[str, OrderedDict[str, dict[str, Any]]] = OrderedDict()
        #: builder name -> {masters, tags, last build}.
        self.builders: dict[str, dict[str, Any]] = {}
        #: (builder, step name) -> samples of (complete_at, duration).
        self.step_samples: dict[tuple[str, str], deque[tuple[float, float]]] = {}
        #: builder -> samples of (started_at, duration) of finished builds.
        self.build_samples: dict[str, deque[tuple[float, float]]] = {}
        self.masters: dict[str, dict[str, Any]] = {}
        self.workers: dict[str, dict[str, Any]] = {}

    # Feeding.

    @defer.inlineCallbacks
    def rebuild(self, journal: IJournal, window: int = 200_000, page: int = 2_000) -> Any:
        """Apply the newest ``window`` retained events, then follow the journal live.

        Called before the server listens, so no event can slip between the rebuild and live.
        """
        after = max(journal.earliest - 1, journal.head - window)
        while True:
            events = yield journal.read(after, page)
            self.apply(events)
            if len(events) < page:
                break
            after = events[-1].offset
        # Everything up to the head is applied (or was removed by retention): answers reflect
        # the head even when no event is retained, so a snapshot's cursor never looks expired.
        self.offset = max(self.offset, journal.head)
        journal.listen(self.apply)

    def apply(self, events: list[Event]) -> None:
        for event in events:
            if event.offset <= self.offset:
                continue
            self.offset = event.offset
            obj = event.obj
            entity, _, verb = event.type.partition(".")
            handler = getattr(self, f"_on_{entity}", None)
            if handler is not None:
                handler(verb, obj["master"], obj["data"], obj["time"])

    # Entities.

    def _build(self, master: str, data: dict[str, Any]) -> BuildRecord:
        key = (master, int(data["buildid"]))
        build = self.builds.get(key)
        if build is None:
            build = self.builds[key] = {
                "master": master, "buildid": key[1], "finished": False, "steps": {}, "properties": {},
            }
            self._forget_builds()
        return build

    def _on_build(self, verb: str, master: str, data: dict[str, Any], time: float) -> None:
        build = self._build(master, data)
        was_finished = build["finished"]
        if was_finished and verb != "finished":
            # A late update must not make a finished build look unfinished again.
            _merge(build, data, ("worker", "url", "tags", "sourcestamps"))
        else:
            _merge(build, data, _BUILD_FIELDS)
        if data.get("properties"):
            build["properties"].update(data["properties"])
        if verb == "finished":
            build["finished"] = True
            if build.get("complete_at") is None:
                build["complete_at"] = time
        builder = self.builders.setdefault(build["builder"], {"masters": set(), "tags": [], "last": None})
        builder["masters"].add(master)
        if data.get("tags"):
            builder["tags"] = list(data["tags"])
        if verb == "finished" and not was_finished:
            builder["last"] = (master, build["buildid"])
            started, duration = build.get("started_at"), build.get("duration")
            if duration is None and started is not None:
                duration = build["complete_at"] - started
            if started is not None and duration is not None:
                self._sample(self.build_samples, build["builder"], (started, float(duration)))
        requested = _requested_revision(data)
        if requested:
            build["pushed_revision"] = requested
        self._cell(build.get("branch"), build.get("pushed_revision") or build.get("revision"),
                   build["builder"], time, build=build)

    def _on_step(self, verb: str, master: str, data: dict[str, Any], time: float) -> None:
        build = self._build(master, data)
        for key, source in (("builder", "builder"), ("number", "build_number"), ("branch", "branch"),
                            ("revision", "revision"), ("worker", "worker")):
            if build.get(key) is None and data.get(source) is not None:
                build[key] = data[source]
        step = build["steps"].setdefault(int(data["stepid"]), {"stepid": int(data["stepid"])})
        finished_before = step.get("finished", False)
        _merge(step, data, _STEP_FIELDS)
        if verb == "finished":
            step["finished"] = True
            if not finished_before:
                duration = step.get("duration")
                if duration is None and step.get("started_at") is not None:
                    duration = (step.get("complete_at") or time) - step["started_at"]
                if duration is not None:
                    self._sample(
                        self.step_samples, (data["builder"], str(data["name"])),
                        (step.get("complete_at") or time, float(duration)),
                    )
        self._cell(build.get("branch"), build.get("pushed_revision") or build.get("revision"),
                   data["builder"], time, build=build)

    def _on_request(self, verb: str, master: str, data: dict[str, Any], time: float) -> None:
        key = (master, int(data["buildrequestid"]))
        request = self.requests.get(key)
        if request is None:
            request = self.requests[key] = {"master": master, "buildrequestid": key[1], "status": "pending"}
            self._forget_requests()
        _merge(request, data, _REQUEST_FIELDS)
        if request.get("submitted_at") is None:
            request["submitted_at"] = time
        new_status: str = _REQUEST_STATUS.get(verb) or request["status"]
        # Statuses only move forward: a late "claimed" does not reopen a completed request.
        if _STATUS_ORDER[new_status] >= _STATUS_ORDER[request["status"]]:
            request["status"] = new_status
        if request["status"] != "claimed":
            self._cell(request.get("branch"), request.get("revision"), data["builder"], time, request=request)

    def _on_buildset(self, verb: str, master: str, data: dict[str, Any], time: float) -> None:
        if verb == "submitted":
            for builder in data.get("builders") or ():
                self._cell(data.get("branch"), data.get("revision"), builder, time, pending=True)

    def _on_change(self, verb: str, master: str, data: dict[str, Any], time: float) -> None:
        row = self._revision(data.get("branch"), data.get("revision"), data.get("when") or time)
        if row is not None:
            for key in ("author", "comments", "revlink", "repository", "project"):
                if data.get(key) is not None:
                    row[key] = data[key]

    def _on_worker(self, verb: str, master: str, data: dict[str, Any], time: float) -> None:
        self.workers[data["worker"]] = {"worker": data["worker"], "master": master,
                                        "connected": verb == "connected", "since": time}

    def _on_master(self, verb: str, master: str, data: dict[str, Any], time: float) -> None:
        info = self.masters.setdefault(master, {"master": master})
        info["last_seen"] = time
        info["status"] = "stopped" if verb == "stopped" else "running"
        if data.get("last_seq") is not None:
            info["last_seq"] = data["last_seq"]
        if verb == "started":
            info["started_at"] = time
            self._reconcile(master, data)

    def _reconcile(self, master: str, snapshot: dict[str, Any]) -> None:
        """A master restarted: what it no longer runs or queues is over, whatever we last heard."""
        running = snapshot.get("running")
        if isinstance(running, list):
            alive = {b.get("buildid") for b in running if isinstance(b, dict)}
            for build in self.running(master=master):
                if build["buildid"] not in alive:
                    build["finished"] = True
                    build["lost"] = True
                    build["state"] = "lost when its master restarted"
        queued = snapshot.get("queued")
        if isinstance(queued, list):
            waiting = {r.get("buildrequestid") for r in queued if isinstance(r, dict)}
            for request in self.queue(master=master):
                if request["buildrequestid"] not in waiting:
                    request["status"] = "cancelled"
                    request["lost"] = True

    # The pushlog.

    def _revision(self, branch: Any, revision: Any, time: float) -> dict[str, Any] | None:
        if not revision or not isinstance(revision, str):
            return None
        branch = branch if isinstance(branch, str) and branch else "(none)"
        revisions = self.revisions.get(branch)
        if revisions is None:
            revisions = self.revisions[branch] = OrderedDict()
            while len(self.revisions) > self.max_branches:
                self.revisions.popitem(last=False)
        self.revisions.move_to_end(branch)
        row = revisions.get(revision)
        if row is None:
            row = revisions[revision] = {"revision": revision, "branch": branch, "time": time, "builders": {}}
            while len(revisions) > self.max_revisions:
                revisions.popitem(last=False)
        return row

    def _cell(
        self, branch: Any, revision: Any, builder: str, time: float,
        build: BuildRecord | None = None, request: RequestRecord | None = None, pending: bool = False,
    ) -> None:
        row = self._revision(branch, revision, time)
        if row is None:
            return
        cell = row["builders"].get(builder)
        if build is not None:
            # The newest build of the builder for this revision decides its cell (a rebuild
            # after a failure or a retry replaces the older one).
            order = (build.get("started_at") or 0, build["buildid"])
            if cell is None or "buildid" not in cell or order >= cell["_order"]:
                row["builders"][builder] = {
                    "state": "finished" if build["finished"] else "running",
                    "result": build.get("result"),
                    "master": build["master"],
                    "buildid": build["buildid"],
                    "number": build.get("number"),
                    "_order": order,
                }
        elif request is not None:
            if cell is None or "buildid" not in cell:
                status = request["status"]
                if status == "completed":
                    # Completed without a build: collapsed into a newer request (skipped), or
                    # failed before starting.
                    skipped = request.get("result") in (None, "skipped")
                    state, result = ("skipped", None) if skipped else ("finished", request.get("result"))
                else:
                    state, result = ("cancelled" if status == "cancelled" else "pending"), None
                row["builders"][builder] = {"state": state, "result": result, "master": request["master"],
                                            "buildrequestid": request["buildrequestid"]}
        elif pending and cell is None:
            row["builders"][builder] = {"state": "pending", "result": None}

    # Bounds.

    def _forget_builds(self) -> None:
        self._forget(self.builds, self.max_builds, lambda b: b["finished"])

    def _forget_requests(self) -> None:
        self._forget(self.requests, self.max_requests, lambda r: r["status"] in ("completed", "cancelled"))

    @staticmethod
    def _forget(table: OrderedDict[Key, Any], limit: int, done: Any) -> None:
        """Drop the oldest finished entries past ``limit``, looking at most ``_SCAN`` entries
        from the oldest.  When those are all unfinished (their ends were lost: a master that
        vanished without a snapshot), the oldest go anyway, so memory and the cost per event
        stay bounded whatever happens to the stream."""
        excess = len(table) - limit
        if excess <= 0:
            return
        victims = []
        for scanned, (key, entry) in enumerate(table.items()):
            if scanned >= _SCAN:
                break
            if done(entry):
                victims.append(key)
                if len(victims) == excess:
                    break
        if not victims:
            victims = [next(iter(table))]
        for key in victims:
            del table[key]

    def _sample(self, table: dict[Any, deque[tuple[float, float]]], key: Any, sample: tuple[float, float]) -> None:
        samples = table.get(key)
        if samples is None:
            samples = table[key] = deque(maxlen=self.max_samples)
        samples.append(sample)

    # Reading.

    def queue(self, master: str | None = None) -> Iterator[RequestRecord]:
        """Requests waiting for a build to start, oldest first."""
        for request in self.requests.values():
            if request["status"] == "pending" and (master is None or request["master"] == master):
                yield request

    def running(self, master: str | None = None) -> Iterator[BuildRecord]:
        for build in self.builds.values():
            if not build["finished"] and (master is None or build["master"] == master):
                yield build

    def finished(self) -> Iterator[BuildRecord]:
        """Finished builds, newest first."""
        for build in reversed(self.builds.values()):
            if build["finished"]:
                yield build

    def branch_revisions(self, branch: str) -> list[dict[str, Any]]:
        """The pushlog of a branch, newest revision first."""
        return list(reversed((self.revisions.get(branch) or {}).values()))

    @staticmethod
    def is_green(row: dict[str, Any], builders: Any = None) -> bool:
        """True when every counted builder's latest build for this revision finished green.

        ``builders`` (a predicate on builder names) narrows which builders count.  A revision
        with no counted builder, or one still pending or running, is not green.  A request
        cancelled or collapsed before it got a build does not count (it was superseded).
        """
        state, result = revision_status(row, builders)
        return state == "done" and result in GREEN
