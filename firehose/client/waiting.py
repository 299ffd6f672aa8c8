"""``wait``: follow every build of one revision until all have finished (what ``firehose wait``
runs), and :class:`RevisionTracker`, which decides what belongs to the revision and when it is
done.

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

#: Results that count as a pass for :func:`wait`.
OK_RESULTS = frozenset({"success", "warnings", "skipped"})
_WAIT_TYPES = ["buildset.submitted", "buildset.completed", "request.*", "build.started", "build.finished"]


def _glob(pattern: str) -> GlobSet:
    """The server's own glob matcher (linear, never a backtracking regex) for ``a*,b*``."""
    return GlobSet(pattern.split(","))


@dataclass
class _Item:
    kind: str  # "buildset" | "request" | "build"
    ident: int
    builder: str | None = None
    number: int | None = None
    result: str | None = None
    done: bool = False
    url: str | None = None
    brid: int | None = None

    @property
    def ok(self) -> bool:
        return self.result in OK_RESULTS

    def label(self) -> str:
        if self.kind == "build":
            return f"{self.builder} #{self.number}"
        if self.kind == "request":
            return f"{self.builder} (request {self.ident})"
        return f"buildset {self.ident}"


@dataclass
class WaitResult:
    """What :func:`wait` found.

    :ivar builds: finished builds (``builder``, ``number``, ``result``, ``url``), in the order
        they finished, retried ones included.
    :ivar timed_out: the timeout passed first (``pending`` says what was still running).
    """

    revision: str
    builds: list[_Item] = field(default_factory=list)
    unbuilt: list[_Item] = field(default_factory=list)
    pending: list[_Item] = field(default_factory=list)
    timed_out: bool = False
    submitted: bool = False
    error: str | None = None

    @property
    def failed(self) -> list[_Item]:
        return [b for b in self.builds + self.unbuilt if not b.ok and b.result != "retry"]

    @property
    def counted(self) -> list[_Item]:
        """Finished builds and unbuilt requests, retried builds left out."""
        return [b for b in self.builds + self.unbuilt if b.result != "retry"]

    @property
    def ok(self) -> bool:
        """Every build finished and none failed."""
        return not self.timed_out and self.error is None and self.submitted and not self.failed

    @property
    def exit_code(self) -> int:
        """0: all succeeded; 1: some failed; 2: timeout or error."""
        if self.error is not None or self.timed_out or not self.submitted:
            return 2
        return 1 if self.failed else 0

    def summary(self) -> str:
        """A few human lines: one per build, then the verdict."""
        lines = [f"  {b.label():<40} {b.result}" + (f"  {b.url}" if b.url else "") for b in self.builds]
        lines += [f"  {r.label():<40} {r.result} (no build)" for r in self.unbuilt]
        if self.error is not None:
            verdict = f"error: {self.error}"
        elif not self.submitted:
            verdict = f"no build was submitted for revision {self.revision} before the timeout"
        elif self.timed_out:
            running = ", ".join(p.label() for p in self.pending) or "nothing visible"
            verdict = f"timed out; still waiting for: {running}"
        elif self.failed:
            verdict = f"{len(self.failed)} of {len(self.counted)} failed"
        else:
            verdict = f"all {len(self.counted)} succeeded"
        return "\n".join([f"revision {self.revision}: {verdict}", *lines])


class RevisionTracker:
    """Follows the builds of one revision through request, buildset and build events.

    A revision is matched on a request's or buildset's source stamps and on a build's
    ``revision``/``got_revision``; a build also belongs when its request does.  The revision is
    *done* once something was submitted for it and every buildset, request and build seen has
    finished (a build that ends in ``retry`` leaves its request pending).

    :param revision: the revision; ``*`` is a wildcard (``4d2c*`` for a short hash).
    :param builder: only builds of builders matching this glob (buildsets are then ignored).
    """

    def __init__(self, revision: str, branch: str | None = None, builder: str | None = None) -> None:
        self.revision = revision
        self._rev = _glob(revision)
        self._branch = _glob(branch) if branch else None
        self._builder = _glob(builder) if builder else None
        self.buildsets: dict[int, _Item] = {}
        self.requests: dict[int, _Item] = {}
        self.builds: dict[int, _Item] = {}
        self.finished: list[_Item] = []

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
        return not builder or self._builder_ok(data)

    def _builder_ok(self, data: Mapping[str, Any]) -> bool:
        return self._builder is None or bool(self._builder.match(str(data.get("builder") or "")))

    def feed(self, event: Mapping[str, Any]) -> str | None:
        """Take one event into account; return a progress line when something finished."""
        entity, _, verb = str(event.get("type", "")).partition(".")
        data = event.get("data") or {}
        if entity == "buildset":
            return self._buildset(verb, data)
        if entity == "request":
            return self._request(verb, data)
        if entity == "build":
            return self._build(verb, data)
        return None

    def _buildset(self, verb: str, data: Mapping[str, Any]) -> str | None:
        bsid = data.get("buildsetid")
        if self._builder is not None or not isinstance(bsid, int):
            return None
        item = self.buildsets.get(bsid)
        if item is None:
            if not self._matches(data, builder=False):
                return None
            item = self.buildsets[bsid] = _Item("buildset", bsid)
        if verb == "completed" and not item.done:
            item.done, item.result = True, data.get("result")
        return None

    def _request(self, verb: str, data: Mapping[str, Any]) -> str | None:
        brid = data.get("buildrequestid")
        if not isinstance(brid, int):
            return None
        item = self.requests.get(brid)
        if item is None:
            bsid = data.get("buildsetid")
            known_set = isinstance(bsid, int) and bsid in self.buildsets
            if not (self._matches(data) or (known_set and self._builder_ok(data))):
                return None
            item = self.requests[brid] = _Item("request", brid, builder=data.get("builder"))
        if item.done:
            return None
        if verb == "completed" or verb == "cancelled":
            item.done = True
            item.result = "cancelled" if verb == "cancelled" else (data.get("result") or "unknown")
            if not any(b.brid == brid for b in self.builds.values()):
                return f"{item.label()}: {item.result} (no build)"
        return None

    def _build(self, verb: str, data: Mapping[str, Any]) -> str | None:
        buildid = data.get("buildid")
        if not isinstance(buildid, int):
            return None
        brid = data.get("buildrequestid")
        item = self.builds.get(buildid)
        if item is None:
            if not ((isinstance(brid, int) and brid in self.requests) or self._matches(data)):
                return None
            item = self.builds[buildid] = _Item(
                "build", buildid, builder=data.get("builder"), number=data.get("number"),
                brid=brid if isinstance(brid, int) else None,
            )
        item.url = data.get("url") or item.url
        if verb != "finished" or item.done:
            return None
        item.done = True
        item.result = data.get("result") or "unknown"
        self.finished.append(item)
        request = self.requests.get(item.brid) if item.brid is not None else None
        if request is not None and not request.done and item.result != "retry":
            request.done, request.result = True, item.result
        return f"{item.label()}: {item.result}" + (f"  {item.url}" if item.url else "")

    @property
    def submitted(self) -> bool:
        return bool(self.buildsets or self.requests or self.builds)

    @property
    def pending(self) -> list[_Item]:
        items = [*self.buildsets.values(), *self.requests.values(), *self.builds.values()]
        return [i for i in items if not i.done]

    @property
    def done(self) -> bool:
        return self.submitted and not self.pending

    def result(self, timed_out: bool = False, error: str | None = None) -> WaitResult:
        built = {b.brid for b in self.builds.values()}
        return WaitResult(
            revision=self.revision,
            builds=list(self.finished),
            unbuilt=[r for r in self.requests.values() if r.done and r.ident not in built],
            pending=self.pending,
            timed_out=timed_out,
            submitted=self.submitted,
            error=error,
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
    """Wait until every build of ``revision`` (submitted so far or still queued) has finished.

    First the server's history (from ``since``, default the oldest retained event) is searched
    for the revision, so builds that started - or finished - before the call count; then the
    live stream is followed.  When nothing has been submitted yet, it waits for the first
    submission, up to ``timeout``.

    :param timeout: seconds; ``None`` waits as long as it takes.
    :param on_progress: called with a line for each build that finishes.
    :returns: a :class:`WaitResult` (``.ok``, ``.exit_code``, ``.summary()``).
    :raises RequestError: bad arguments; :raises Unavailable: the server is unreachable at
        the start (with ``fail_fast``).
    """
    tracker = RevisionTracker(revision, branch, builder)
    progress = on_progress or (lambda line: None)
    # History, filtered by the server on the revision: cheap even with a long journal.
    history = Stream(url, {"revision": [revision]}, since, stop_after=timeout, fail_fast=fail_fast,
                     poll_timeout=0.5, limit=1000)
    first_match: str | None = None
    for _ in range(1_000_000):
        batch = history.fetch()
        for event in batch:
            if is_event(event):
                first_match = first_match or event["id"]
                line = tracker.feed(event)
                if line:
                    progress(line)
        if not batch or history.timed_out:
            break
    if tracker.done or history.timed_out:
        return tracker.result(timed_out=history.timed_out and not tracker.done)
    # Live: every request/build event, matched here, because a build's revision may differ from
    # the one submitted (got_revision) and still belong.  The history's filter hid such events,
    # and its cursor has moved past them: so follow from the first event the history found (the
    # tracker takes an event twice harmlessly); with none found, nothing earlier can belong.
    remaining = None if history.deadline is None else history.deadline - time.monotonic()
    live = Stream(url, {"type": _WAIT_TYPES, **({"builder": [builder]} if builder else {})},
                  first_match or history.cursor, stop_after=remaining, limit=1000)
    for event in live:
        if not is_event(event):
            continue
        line = tracker.feed(event)
        if line:
            progress(line)
        if tracker.done:
            return tracker.result()
    return tracker.result(timed_out=True)
