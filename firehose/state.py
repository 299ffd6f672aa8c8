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
from firehose.pushes import (
    GREEN,
    REVISION_STATES,
    WORST_FIRST,
    build_cell,
    is_green,
    pending_cell,
    place,
    request_cell,
    request_status,
    revision_status,
    worst,
)

#: What "is this push done" means lives in firehose.pushes (shared with firehose wait); its
#: names stay importable from here.
__all__ = ["GREEN", "REVISION_STATES", "WORST_FIRST", "BuildRecord", "BuildState", "RecordView", "RequestRecord",
           "revision_status", "worst"]

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

#: The bounds of a step's log tail (``BuildState.live_tails``, ``failed_tails``): its last
#: lines, and at most this many bytes of them (UTF-8).
TAIL_LINES = 40
TAIL_BYTES = 4096
#: Results of a step that succeeded: its log tail is dropped when it finishes.
_STEP_OK = frozenset({*GREEN, "skipped"})


class BuildState:
    """Everything the query API answers from.

    :param max_builds: finished builds remembered (the oldest are forgotten first).
    :param max_revisions: revisions remembered per branch.
    :param max_samples: step-timing, build-time and queue-wait samples kept per builder (and
        step).
    :param max_failed_tails: log tails of finished steps that did not succeed, kept in all
        (the newest); :param max_live_tails: those of running steps.
    """

    def __init__(
        self,
        max_builds: int = 20_000,
        max_requests: int = 20_000,
        max_revisions: int = 500,
        max_branches: int = 200,
        max_samples: int = 2_000,
        max_failed_tails: int = 2_000,
        max_live_tails: int = 1_000,
    ) -> None:
        self.max_builds = max_builds
        self.max_requests = max_requests
        self.max_revisions = max_revisions
        self.max_branches = max_branches
        self.max_samples = max_samples
        self.max_failed_tails = max_failed_tails
        self.max_live_tails = max_live_tails
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
        #: builder -> samples of (started_at, duration, result) of finished builds.
        self.build_samples: dict[str, deque[tuple[float, float, str | None]]] = {}
        #: builder -> samples of (submitted_at, wait) of requests that got a build: how long
        #: each waited in the queue (until claimed, or else until its build started).
        self.wait_samples: dict[str, deque[tuple[float, float]]] = {}
        #: (master, stepid) -> the tail of the step's log (``log``, ``lines``, ``bytes``,
        #: ``truncated``): of running steps, and of finished steps that did not succeed.
        self.live_tails: OrderedDict[Key, dict[str, Any]] = OrderedDict()
        self.failed_tails: OrderedDict[Key, dict[str, Any]] = OrderedDict()
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
                self._sample(self.build_samples, build["builder"], (started, float(duration), build.get("result")))
            self._keep_tails(build)
        self._sample_wait(build)
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
                self._step_finished((master, step["stepid"]), step.get("result"))
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
        # Statuses only move forward: a late "claimed" does not reopen a completed request.
        request["status"] = request_status(request["status"], verb)
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

    def _on_log(self, verb: str, master: str, data: dict[str, Any], time: float) -> None:
        """``log.lines``: the tail of the step's log (its ``stdio`` log when it has one), kept
        while the step runs and, once it finished, only if it did not succeed."""
        lines = data.get("lines")
        if verb != "lines" or not isinstance(lines, list) or not lines:
            return
        key = (master, int(data["stepid"]))
        build = self.builds.get((master, int(data["buildid"])))
        step = build["steps"].get(key[1]) if build is not None else None
        if step is not None and step.get("finished"):
            if step.get("result") in _STEP_OK:
                return
            table, limit = self.failed_tails, self.max_failed_tails
        else:
            table, limit = self.live_tails, self.max_live_tails
        name = str(data.get("name") or "")
        tail = table.get(key)
        if tail is not None and tail["log"] != name:
            if name != "stdio" or tail["log"] == "stdio":
                return  # the tail follows one log: stdio, or else the first one seen
            tail = None
        if tail is None:
            tail = table[key] = {"log": name, "lines": [], "bytes": 0, "truncated": False, "next": 0}
            while len(table) > limit:
                table.popitem(last=False)
        _extend_tail(tail, lines, data.get("first_line"), data.get("num_lines"))

    def _step_finished(self, key: Key, result: str | None) -> None:
        tail = self.live_tails.pop(key, None)
        if tail is not None and result not in _STEP_OK:
            self.failed_tails[key] = tail
            while len(self.failed_tails) > self.max_failed_tails:
                self.failed_tails.popitem(last=False)

    def _keep_tails(self, build: BuildRecord) -> None:
        """A build finished (or was lost): the tails of steps it left unfinished go, or are kept
        as failed steps' when the build did not succeed."""
        for stepid, step in build["steps"].items():
            if not step.get("finished"):
                self._step_finished((build["master"], stepid), build.get("result"))

    def _sample_wait(self, build: BuildRecord) -> None:
        """The first build of a request ends its wait in the queue: sample it, once."""
        brid = build.get("buildrequestid")
        if not isinstance(brid, int):
            return
        request = self.requests.get((build["master"], brid))
        if request is None or request.get("_waited"):
            return
        end = request.get("claimed_at") or build.get("started_at")
        submitted = request.get("submitted_at")
        if end is None or submitted is None:
            return
        request["_waited"] = True
        self._sample(self.wait_samples, request.get("builder") or build["builder"],
                     (float(submitted), max(0.0, float(end) - float(submitted))))

    def log_tail(self, master: str, stepid: int) -> dict[str, Any] | None:
        """The kept tail of a step's log, or ``None``."""
        key = (master, stepid)
        return self.failed_tails.get(key) or self.live_tails.get(key)

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
            self._reconcile(master, data, time)

    def _reconcile(self, master: str, snapshot: dict[str, Any], time: float) -> None:
        """A master restarted: what it no longer runs or queues is over, whatever we last heard
        (and the pushlog says so: a lost build is a finished cell without a result, which
        counts as an exception; a lost request a cancelled one).  ``firehose wait`` does the
        same (``RevisionTracker``)."""
        running = snapshot.get("running")
        if isinstance(running, list):
            alive = {b.get("buildid") for b in running if isinstance(b, dict)}
            for build in [b for b in self.running(master=master) if b["buildid"] not in alive]:
                build["finished"] = True
                build["lost"] = True
                build["state"] = "lost when its master restarted"
                self._keep_tails(build)
                self._cell(build.get("branch"), build.get("pushed_revision") or build.get("revision"),
                           build.get("builder") or "?", time, build=build)
        queued = snapshot.get("queued")
        if isinstance(queued, list):
            waiting = {r.get("buildrequestid") for r in queued if isinstance(r, dict)}
            for request in [r for r in self.queue(master=master) if r["buildrequestid"] not in waiting]:
                request["status"] = "cancelled"
                request["lost"] = True
                self._cell(request.get("branch"), request.get("revision"), request.get("builder") or "?", time,
                           request=request)

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
        if build is not None:
            cell = build_cell(build["master"], build["buildid"], build.get("number"), build["finished"],
                              build.get("result"), build.get("started_at"), build.get("buildrequestid"))
        elif request is not None:
            cell = request_cell(request["master"], request["buildrequestid"], request["status"],
                                request.get("result"))
        elif pending:
            cell = pending_cell()
        else:
            return
        # The newest build of the builder for this revision (or, before one started, its newest
        # request) decides its cell: firehose.pushes.place, which firehose wait uses too.
        place(row["builders"], builder, cell)

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

    def _sample(self, table: dict[Any, Any], key: Any, sample: tuple[Any, ...]) -> None:
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
        return is_green(row, builders)


def _extend_tail(tail: dict[str, Any], lines: list[Any], first_line: Any, covered: Any) -> None:
    """Add a chunk of log lines to a tail, keeping the last :data:`TAIL_LINES` lines and at most
    :data:`TAIL_BYTES` bytes; ``truncated`` says lines of the log before them are not kept.

    ``first_line`` is the chunk's line number in the log and ``covered`` (``num_lines``) how
    many of the log's lines it covers, the ones the plugin removed (the environment dump)
    included: a chunk that starts past the end of the one before means lines never came (the
    plugin's rate limit skipped them)."""
    if isinstance(first_line, int) and first_line > tail["next"]:
        tail["truncated"] = True
    if isinstance(first_line, int):
        tail["next"] = max(tail["next"], first_line + (covered if isinstance(covered, int) else len(lines)))
    if len(lines) > TAIL_LINES:
        tail["truncated"] = True
    kept: list[str] = tail["lines"]
    for line in lines[-TAIL_LINES:]:
        text = line if isinstance(line, str) else str(line)
        size = len(text.encode("utf-8", "replace"))
        if size > TAIL_BYTES:
            text = text.encode("utf-8", "replace")[:TAIL_BYTES].decode("utf-8", "ignore")
            size = len(text.encode("utf-8"))
            tail["truncated"] = True
        kept.append(text)
        tail["bytes"] += size
    drop = 0
    while len(kept) - drop > TAIL_LINES or tail["bytes"] > TAIL_BYTES:
        tail["bytes"] -= len(kept[drop].encode("utf-8", "replace"))
        drop += 1
    if drop:
        del kept[:drop]
        tail["truncated"] = True
