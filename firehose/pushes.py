"""Is this push done, and how did it go: the one definition, shared by the server's pushlog
(``/api/revisions``, ``/api/lastgreen``, green) and by ``firehose wait``.

A revision has one **cell** per builder: the builder's newest build of the revision, or, before
one started, its newest request (a placeholder when only a buildset named the builder).  This
module says what a cell is (:func:`build_cell`, :func:`request_cell`, :func:`pending_cell`),
which of two cells is the newer (:func:`place`), and what the cells of a revision add up to
(:func:`revision_status`, :func:`failures`).  The server keeps cells in
:class:`firehose.state.BuildState`; :class:`firehose.client.waiting.RevisionTracker` keeps the
same cells from the stream; both decide with these functions, so they agree.

Pure and standard library only: the blocking client imports it without Twisted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

#: Results that make a build count as green: success and warnings (the build did its job).
GREEN = frozenset({"success", "warnings"})

#: Results of a build that failed: what ``failures`` lists and ``/api/trend`` counts as failed.
FAILED = frozenset({"failure", "exception"})

#: Buildbot's results, worst first (as ``buildbot.process.results.worst_status`` orders them):
#: the overall result of a revision is the worst of its builds'.
WORST_FIRST = ("cancelled", "retry", "exception", "failure", "warnings", "success", "skipped")

#: A revision's states: ``pending`` (requested, no build started), ``running`` (some build
#: running or still queued), ``done`` (every counted build finished).
REVISION_STATES = ("pending", "running", "done")

#: Cell states of a request that never got a build because it was superseded: it does not count.
SUPERSEDED = ("cancelled", "skipped")

#: A request's status after each of its events (``request.<verb>``).
REQUEST_STATUS = {"submitted": "pending", "claimed": "claimed", "completed": "completed",
                  "cancelled": "cancelled"}
_STATUS_ORDER = {"pending": 0, "claimed": 1, "completed": 2, "cancelled": 2}

#: A pushlog cell: ``state``, ``result`` and the build's or request's identity; keys starting
#: with ``_`` are bookkeeping, not shown.
Cell = dict[str, Any]


def request_status(current: str | None, verb: str) -> str:
    """The status of a request after a ``request.<verb>`` event: statuses only move forward
    (a late ``claimed`` does not reopen a completed request)."""
    new = REQUEST_STATUS.get(verb) or current or "pending"
    if current is None or _STATUS_ORDER[new] >= _STATUS_ORDER[current]:
        return new
    return current


def build_cell(master: str | None, buildid: int, number: int | None, finished: bool, result: str | None,
               started_at: float | None, buildrequestid: int | None) -> Cell:
    """The cell of a build: ``running`` or ``finished`` with its result."""
    return {
        "state": "finished" if finished else "running",
        "result": result,
        "master": master,
        "buildid": buildid,
        "number": number,
        "_order": (started_at or 0, buildid),
        "_brid": buildrequestid,
    }


def request_cell(master: str | None, buildrequestid: int, status: str, result: str | None) -> Cell:
    """The cell of a request that has no build (yet): ``pending`` while queued (claimed
    included), ``cancelled``, ``skipped`` when completed without a result or as skipped (Buildbot
    collapsed it into a newer one), else ``finished`` with its result (it failed before
    starting)."""
    if status == "completed":
        skipped = result in (None, "skipped")
        state, result = ("skipped", None) if skipped else ("finished", result)
    else:
        state, result = ("cancelled" if status == "cancelled" else "pending"), None
    return {"state": state, "result": result, "master": master, "buildrequestid": buildrequestid}


def pending_cell() -> Cell:
    """The placeholder of a builder a buildset named before any of its requests was seen."""
    return {"state": "pending", "result": None}


#: Requests remembered per cell (the newest by id): a builder asked to build one revision
#: more often than this keeps only the newest.
MAX_REQUESTS_PER_CELL = 4


def place(cells: MutableMapping[str, Cell], builder: str, cell: Cell) -> None:
    """Take ``cell`` (a new state of one build or request of ``builder``) into account.

    A place remembers the builder's newest build (by start time, then id: a rebuild after a
    failure, or a retry, replaces the build before it) and its newest requests (by id), and
    shows the one that decides:

    * a request newer than the build's own (a higher request id) and still queued: a rebuild
      was asked for, the revision is not done;
    * else the newest build;
    * else the newest request not superseded (cancelled or collapsed into a newer one), else
      the newest request;
    * a placeholder (:func:`pending_cell`) only fills an empty place.

    A request's cell replaces that request's earlier cell (the caller keeps its status moving
    forward only, :func:`request_status`); so taking an event twice, or an old event late,
    changes nothing.
    """
    old = cells.get(builder)
    build: Cell | None = old.get("_build") if old else None
    requests: dict[int, Cell] = dict(old.get("_requests") or {}) if old else {}
    if "buildid" in cell:
        if build is None or cell["_order"] >= build["_order"]:
            build = cell
    elif "buildrequestid" in cell:
        requests[cell["buildrequestid"]] = cell
        while len(requests) > MAX_REQUESTS_PER_CELL:
            del requests[min(requests)]
    elif old is not None:
        return
    else:
        cells[builder] = cell
        return
    cells[builder] = {**_deciding(build, requests), "_build": build, "_requests": requests}


def _deciding(build: Cell | None, requests: dict[int, Cell]) -> Cell:
    live = [r for r in requests.values() if r["state"] not in SUPERSEDED]
    if build is not None:
        brid = build.get("_brid")
        rebuilds = [r for r in live if r["state"] == "pending" and brid is not None and r["buildrequestid"] > brid]
        return max(rebuilds, key=lambda r: r["buildrequestid"]) if rebuilds else build
    return max(live or requests.values(), key=lambda r: r["buildrequestid"])


def visible(cell: Cell) -> Cell:
    """A cell without its bookkeeping (the keys starting with ``_``): what the API shows."""
    return {k: v for k, v in cell.items() if not k.startswith("_")}


def worst(results: Iterable[str | None]) -> str | None:
    """The worst of Buildbot results (:data:`WORST_FIRST`); a result Buildbot does not name
    ranks with ``exception``; ``None`` when there is none."""
    rank = {name: i for i, name in enumerate(WORST_FIRST)}
    known = [r for r in results if r is not None]
    return min(known, key=lambda r: rank.get(r, rank["exception"]), default=None)


def _counted_cells(row: Mapping[str, Any], builders: Callable[[str], bool] | None) -> list[tuple[str, Cell]]:
    return [(name, cell) for name, cell in row["builders"].items() if builders is None or builders(name)]


def revision_status(row: Mapping[str, Any], builders: Callable[[str], bool] | None = None) -> tuple[str, str | None]:
    """``(state, result)`` of a pushlog row (``{"builders": {name: cell}}``): the one definition
    of "is this push done, and how did it go".

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

    A revision is green when it is ``done`` with a result in :data:`GREEN`.
    """
    cells = [cell for _, cell in _counted_cells(row, builders)]
    counted = [c for c in cells if c["state"] not in SUPERSEDED]
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


def is_green(row: Mapping[str, Any], builders: Callable[[str], bool] | None = None) -> bool:
    """``done`` with success or warnings (:func:`revision_status`)."""
    state, result = revision_status(row, builders)
    return state == "done" and result in GREEN


def failures(row: Mapping[str, Any], builders: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
    """The counted cells that finished with a result in :data:`FAILED`, by builder name:
    ``{"builder", "master", "buildid", "result"}`` (``buildid`` is ``None`` for a request that
    failed before it got a build).  A build finished without a result (lost when its master
    restarted) is an ``exception``, as :func:`revision_status` counts it."""
    return [
        {"builder": name, "master": cell.get("master"), "buildid": cell.get("buildid"),
         "result": cell["result"] or "exception"}
        for name, cell in sorted(_counted_cells(row, builders), key=lambda item: item[0])
        if cell["state"] == "finished" and (cell["result"] or "exception") in FAILED
    ]


__all__ = [
    "FAILED", "GREEN", "REQUEST_STATUS", "REVISION_STATES", "SUPERSEDED", "WORST_FIRST", "Cell",
    "MAX_REQUESTS_PER_CELL", "build_cell", "failures", "is_green", "pending_cell", "place", "request_cell",
    "request_status", "revision_status", "visible", "worst",
]
