"""``/api/...``: questions answered from the materialized :class:`~firehose.state.BuildState`.

Every answer is JSON with CORS and carries ``cursor``: the stream position it reflects.  Take a
snapshot here, then subscribe with ``since=<cursor>``: nothing is missed, nothing counted twice.
List endpoints accept the stream's filter fields (``builder=linux*&result=failure``) plus
``limit``/``offset`` paging.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from firehose._http import (
    ReadResource,
    allow_cors,
    bad_argument,
    error_body,
    json_body,
    number_arg,
    query_args,
    single,
)
from firehose.event import BUILD_FILTER_FIELDS, REQUEST_FILTER_FIELDS
from firehose.filters import Filter, FilterError, parse_query
from firehose.hub import Hub
from firehose.pushes import FAILED, GREEN, failures, revision_status, visible
from firehose.state import BuildRecord, BuildState, RecordView, RequestRecord

_PAGING = ("limit", "offset")

_ALLOW = b"GET, HEAD, OPTIONS"


class NotFound(Exception):
    """The path names something the state does not know (a 404)."""


class _Name:
    """Lets a filter on ``builder`` judge a bare builder name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def values(self, field: str) -> tuple[str, ...]:
        return (self.name,) if field == "builder" else ()


def _not_allowed(request: Request) -> bytes:
    """The JSON 405 for a method the query API does not answer (Twisted's is an HTML page)."""
    allow_cors(request)
    request.setHeader(b"allow", _ALLOW)
    method = request.method.decode("latin-1", "replace")
    return error_body(request, 405, "method_not_allowed", f"{method} is not allowed here: use GET")


class _Endpoint(ReadResource):
    """A GET answered by ``answer(args)``; a bad argument is a 400 naming the problem.

    :cvar fields: the filter fields its records have.  Any other stream field (``type``, say:
        a state record is no event) is a 400 ``bad_filter`` naming the field and these, not a
        filter that silently matches nothing.
    :cvar props: whether ``prop.<name>`` fields apply (builds carry properties).
    :cvar paths: whether a path below the endpoint names something (else it is a 404).
    """

    reserved: tuple[str, ...] = _PAGING
    fields: tuple[str, ...] = ("builder",)
    props = False
    paths = False

    def __init__(self, api: ApiResource) -> None:
        super().__init__()
        self.api = api

    def render(self, request: Request) -> bytes | int:
        if request.method not in _ALLOW.split(b", "):
            return _not_allowed(request)
        return super().render(request)

    def check_fields(self, flt: Filter) -> None:
        """Refuse a filter field this endpoint's records do not have."""
        for name in flt.as_dict():
            if name in self.fields or (self.props and name.startswith("prop.")):
                continue
            accepted = ", ".join(self.fields) + (" or prop.<name>" if self.props else "")
            where = self.request_path
            if not accepted:
                raise FilterError(f"{where} takes no filter field ({name!r} given)")
            raise FilterError(f"{where} cannot filter on {name!r} (events have it, its records do not): "
                              f"use {accepted}")

    @property
    def request_path(self) -> str:
        for name, child in self.api.children.items():
            if child is self:
                return f"/api/{name.decode()}"
        return "/api"

    def render_GET(self, request: Request) -> bytes:
        allow_cors(request)
        args = query_args(request)
        try:
            flt = parse_query(args, self.reserved)
            self.check_fields(flt)
            path = [p.decode("utf-8", "replace") for p in request.postpath or () if p]
            if path and not self.paths:
                raise NotFound(f"{self.request_path} has no {'/'.join(path)!r} below it")
            body = self.answer(args, flt, path)
        except NotFound as exc:
            return error_body(request, 404, "not_found", str(exc.args[0]))
        except ValueError as exc:
            return bad_argument(request, exc)
        body["cursor"] = self.api.cursor
        return json_body(request, 200, body)

    def answer(self, args: dict[str, list[str]], flt: Filter, path: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def state(self) -> BuildState:
        return self.api.state

    @property
    def now(self) -> float:
        return self.api.clock.seconds()

    def page(self, args: dict[str, list[str]], items: Iterable[Any], key: str,
             show: Callable[[Any], dict[str, Any]], default: int = 50) -> dict[str, Any]:
        limit = int(number_arg(args, "limit", default, 1, 500))
        offset = int(number_arg(args, "offset", 0, 0, 1_000_000))
        out: list[dict[str, Any]] = []
        more = False
        for i, item in enumerate(items):
            if i < offset:
                continue
            if len(out) == limit:
                more = True
                break
            out.append(show(item))
        return {key: out, "next_offset": offset + limit if more else None}


def _step(step: dict[str, Any]) -> dict[str, Any]:
    """A step as the API shows it: its record, and ``state_string``, Buildbot's own status text
    of the step (``state`` in step events: "compile failed", "7 tests 2 failed")."""
    return {**step, "state_string": step.get("state")}


def _steps(build: BuildRecord) -> list[dict[str, Any]]:
    return sorted(build["steps"].values(), key=lambda s: (s.get("number") is None, s.get("number") or 0))


def _build_summary(build: BuildRecord, now: float, steps: bool = False) -> dict[str, Any]:
    out = {k: v for k, v in build.items() if k not in ("steps", "properties")}
    if not build["finished"] and build.get("started_at") is not None:
        out["elapsed"] = max(0.0, now - build["started_at"])
    ordered = _steps(build)
    current = [s for s in ordered if not s.get("finished") and s.get("started_at") is not None]
    if not build["finished"]:
        out["current_step"] = _step(current[-1]) if current else None
    if steps:
        out["steps"] = [_step(s) for s in ordered]
        out["properties"] = build["properties"]
    return out


#: Results of a step that did not fail (a skipped step did not run, which is no failure).
_STEP_OK = frozenset({*GREEN, "skipped"})


def _failure(build: BuildRecord, state: BuildState) -> dict[str, Any]:
    """What went wrong in a finished build that did not succeed: its failed steps (result
    failure or exception; when none, the steps that did not succeed), each with its duration,
    status text and the tail of its log (when the plugin sends logs), and the build's URL."""
    ordered = _steps(build)
    failed = [s for s in ordered if s.get("result") in FAILED]
    if not failed:
        failed = [s for s in ordered if s.get("result") is not None and s["result"] not in _STEP_OK]
    out = []
    for step in failed:
        duration = step.get("duration")
        if duration is None and step.get("started_at") is not None and step.get("complete_at") is not None:
            duration = step["complete_at"] - step["started_at"]
        tail = state.log_tail(build["master"], step["stepid"])
        out.append({
            "name": step.get("name"),
            "number": step.get("number"),
            "result": step.get("result"),
            "state_string": step.get("state"),
            "duration": duration,
            "log_tail": None if tail is None else {"log": tail["log"], "lines": list(tail["lines"]),
                                                   "truncated": tail["truncated"]},
        })
    return {"steps": out, "url": build.get("url")}


def _request_summary(request: RequestRecord, now: float) -> dict[str, Any]:
    out = {k: v for k, v in request.items() if not k.startswith("_")}
    submitted = request.get("submitted_at")
    if request["status"] == "pending" and submitted is not None:
        out["waited"] = max(0.0, now - submitted)
    return out


class QueueEndpoint(_Endpoint):
    """``/api/queue``: requests waiting to start, oldest first, with how long each has waited."""

    fields = REQUEST_FILTER_FIELDS

    def answer(self, args: dict[str, list[str]], flt: Filter, path: list[str]) -> dict[str, Any]:
        now = self.now
        waiting = [r for r in self.state.queue() if flt.matches(RecordView(r, "request"))]
        by_builder: dict[str, dict[str, Any]] = {}
        for r in waiting:
            entry = by_builder.setdefault(r.get("builder") or "?", {"pending": 0, "oldest_waited": 0.0})
            entry["pending"] += 1
            if r.get("submitted_at") is not None:
                entry["oldest_waited"] = max(entry["oldest_waited"], now - r["submitted_at"])
        body = self.page(args, waiting, "requests", lambda r: _request_summary(r, now), default=100)
        body["by_builder"] = by_builder
        body["total"] = len(waiting)
        return body


class RunningEndpoint(_Endpoint):
    """``/api/running``: builds in progress with their current step and elapsed time."""

    fields = BUILD_FILTER_FIELDS
    props = True

    def answer(self, args: dict[str, list[str]], flt: Filter, path: list[str]) -> dict[str, Any]:
        now = self.now
        running = sorted((b for b in self.state.running() if flt.matches(RecordView(b, "build"))),
                         key=lambda b: b.get("started_at") or 0)
        body = self.page(args, running, "builds", lambda b: _build_summary(b, now), default=100)
        body["total"] = len(running)
        return body


class BuildsEndpoint(_Endpoint):
    """``/api/builds``: finished builds, newest first; ``/api/builds/<master>/<buildid>``: one
    build (finished or not) with its steps and properties.

    With ``revision=``, every build of the revision: queued requests first (oldest first),
    then running builds (oldest first), then finished ones (newest first), each with its
    ``status`` (``pending``, ``running``, ``finished``), so "what is left of my push" is one
    question.
    """

    fields = BUILD_FILTER_FIELDS
    props = True
    paths = True

    def answer(self, args: dict[str, list[str]], flt: Filter, path: list[str]) -> dict[str, Any]:
        now = self.now
        if path:
            if len(path) != 2 or not (path[1].isascii() and path[1].isdigit()):
                raise NotFound("use /api/builds/<master>/<buildid>")
            build = self.state.builds.get((path[0], int(path[1])))
            if build is None:
                raise NotFound(f"no build {path[1]} of master {path[0]!r} is known")
            out = _build_summary(build, now, steps=True)
            if build["finished"] and build.get("result") not in GREEN:
                out["failure"] = _failure(build, self.state)
            return {"build": out}
        finished = (b for b in self.state.finished() if flt.matches(RecordView(b, "build")))
        if "revision" not in flt.as_dict():
            return self.page(args, finished, "builds", lambda b: _build_summary(b, now))
        queued = [r for r in self.state.queue() if flt.matches(RecordView(r, "request"))]
        running = sorted((b for b in self.state.running() if flt.matches(RecordView(b, "build"))),
                         key=lambda b: b.get("started_at") or 0)

        def everything() -> Iterable[dict[str, Any]]:
            for r in queued:
                yield {**_request_summary(r, now), "status": "pending"}
            for b in running:
                yield {**_build_summary(b, now), "status": "running"}
            for b in finished:
                yield {**_build_summary(b, now), "status": "finished"}

        return self.page(args, everything(), "builds", dict)


#: How many of a builder's newest finished builds its ``duration_p50`` is the median of.
RECENT_BUILDS = 100


class BuildersEndpoint(_Endpoint):
    """``/api/builders``: every builder seen, with its masters, tags, last finished build and
    the median duration of its recent builds (``duration_p50``)."""

    def answer(self, args: dict[str, list[str]], flt: Filter, path: list[str]) -> dict[str, Any]:
        out = []
        for name in sorted(self.state.builders):
            if not flt.matches(_Name(name)):
                continue
            info = self.state.builders[name]
            last = self.state.builds.get(info["last"]) if info["last"] else None
            out.append({
                "builder": name,
                "masters": sorted(info["masters"]),
                "tags": info["tags"],
                "last_build": _build_summary(last, self.now) if last else None,
                "duration_p50": self.median_duration(name),
            })
        return {"builders": out}

    def median_duration(self, builder: str) -> float | None:
        samples = self.state.build_samples.get(builder)
        if not samples:
            return None
        recent = [s[1] for s in itertools.islice(reversed(samples), RECENT_BUILDS)]
        return float(_stats(recent)["p50"])


def _cells(row: dict[str, Any], flt: Filter) -> dict[str, Any]:
    return {name: visible(cell) for name, cell in row["builders"].items() if flt.matches(_Name(name))}


def _revision(row: dict[str, Any], flt: Filter) -> dict[str, Any]:
    """A pushlog row as the API shows it: its cells, the revision's ``state``, ``result`` and
    ``green`` (:func:`firehose.pushes.revision_status`, narrowed by ``builder=``) and its
    ``failures``."""
    out = {k: v for k, v in row.items() if k != "builders"}
    out["builders"] = _cells(row, flt)

    def counted(name: str) -> bool:
        return flt.matches(_Name(name))

    out["state"], out["result"] = revision_status(row, counted)
    out["green"] = out["state"] == "done" and out["result"] in GREEN
    out["failures"] = failures(row, counted)
    return out


#: The longest ``revision=`` asked of ``/api/revisions``.
MAX_REVISION = 256


class RevisionsEndpoint(_Endpoint):
    """``/api/revisions?branch=B``: the pushlog, newest revision first, each builder's result,
    and each revision's overall ``state`` and ``result``; ``?revision=R``: the rows of R, in
    whichever branch (most recently active first)."""

    reserved = (*_PAGING, "branch", "revision")

    def answer(self, args: dict[str, list[str]], flt: Filter, path: list[str]) -> dict[str, Any]:
        branch = single(args, "branch")
        revision = single(args, "revision")
        if revision is not None:
            if not revision or len(revision) > MAX_REVISION:
                raise ValueError(f"'revision' must be 1 to {MAX_REVISION} characters")
            rows = [revisions[revision] for name, revisions in reversed(self.state.revisions.items())
                    if (branch is None or name == branch) and revision in revisions]
            body = self.page(args, rows, "revisions", lambda row: _revision(row, flt))
            body["revision"] = revision
            if branch is not None:
                body["branch"] = branch
            return body
        if branch is None:
            return {"branches": list(reversed(self.state.revisions))}
        rows = self.state.branch_revisions(branch)
        body = self.page(args, rows, "revisions", lambda row: _revision(row, flt))
        body["branch"] = branch
        return body


class LastGreenEndpoint(_Endpoint):
    """``/api/lastgreen?branch=B[&builder=GLOB]``: the newest revision whose counted builders all
    finished with success or warnings, none still pending or running."""

    reserved = ("branch",)

    def answer(self, args: dict[str, list[str]], flt: Filter, path: list[str]) -> dict[str, Any]:
        branch = single(args, "branch")
        if branch is None:
            raise ValueError("'branch' is required")
        for row in self.state.branch_revisions(branch):
            if self.state.is_green(row, lambda n: flt.matches(_Name(n))):
                return {"branch": branch, "revision": _revision(row, flt)}
        return {"branch": branch, "revision": None}


def _stats(durations: list[float]) -> dict[str, Any]:
    ordered = sorted(durations)
    n = len(ordered)

    def pct(p: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(p * n) - 1))]

    total = sum(ordered)
    return {
        "count": n,
        "total": total,
        "mean": total / n,
        "p50": pct(0.50),
        "p95": pct(0.95),
        "max": ordered[-1],
    }


class StepTimingsEndpoint(_Endpoint):
    """``/api/steps?builder=GLOB&window=SECONDS``: which steps take the most time, per builder:
    count, total, mean, p50, p95 and max duration over the window, largest total first."""

    reserved = (*_PAGING, "window", "sort")

    def answer(self, args: dict[str, list[str]], flt: Filter, path: list[str]) -> dict[str, Any]:
        window = number_arg(args, "window", 7 * 86400, 1, 366 * 86400)
        sort = single(args, "sort") or "total"
        if sort not in ("total", "mean", "p50", "p95", "max", "count"):
            raise ValueError("'sort' must be one of total, mean, p50, p95, max, count")
        since = self.now - window
        rows = []
        for (builder, step), samples in self.state.step_samples.items():
            if not flt.matches(_Name(builder)):
                continue
            durations = [d for t, d in samples if t >= since]
            if durations:
                rows.append({"builder": builder, "step": step, **_stats(durations)})
        rows.sort(key=lambda r: r[sort], reverse=True)
        body = self.page(args, rows, "steps", dict)
        body["window"] = window
        return body


def _bucketed(samples: Iterable[Sequence[Any]], since: float, bucket: float) -> dict[int, list[Sequence[Any]]]:
    """Samples whose first item (a time) is in the window, by bucket index.  (The loop runs
    over every sample of every matched builder, 400,000 for 200 builders: kept tight.)"""
    groups: dict[int, list[Sequence[Any]]] = {}
    get = groups.get
    for sample in samples:
        start = sample[0]
        if start >= since:
            index = int(start // bucket)
            group = get(index)
            if group is None:
                groups[index] = [sample]
            else:
                group.append(sample)
    return groups


def _series(groups: Mapping[int, list[Sequence[Any]]], bucket: float, results: bool) -> list[dict[str, Any]]:
    """Each bucket, oldest first: ``start`` and the statistics of the samples' second item (a
    duration); with ``results``, the samples' third item is a build's result, and each bucket
    counts the ``failed`` ones (:data:`firehose.pushes.FAILED`) and their ``failure_rate``."""
    series = []
    for index in sorted(groups):
        stats = _stats([float(s[1]) for s in groups[index]])
        entry = {"start": index * bucket, "count": stats["count"], "mean": stats["mean"], "p50": stats["p50"],
                 "p95": stats["p95"], "max": stats["max"]}
        if results:
            failed = sum(1 for s in groups[index] if s[2] in FAILED)
            entry["failed"] = failed
            entry["failure_rate"] = failed / stats["count"]
        series.append(entry)
    return series


class _BucketedEndpoint(_Endpoint):
    """Samples of each builder bucketed by time: per builder, and ``all`` of them together.

    ``series=all`` leaves each builder's buckets out (the builders are still listed by name):
    a page drawing the glob as one line over 200 builders downloads kilobytes, not megabytes;
    ``series=each`` leaves ``all`` out.
    """

    reserved = ("bucket", "window", "series")
    results = False

    def samples(self) -> Mapping[str, Iterable[Sequence[Any]]]:
        raise NotImplementedError

    def answer(self, args: dict[str, list[str]], flt: Filter, path: list[str]) -> dict[str, Any]:
        bucket = number_arg(args, "bucket", 3600, 60, 30 * 86400)
        window = number_arg(args, "window", 7 * 86400, 60, 366 * 86400)
        series = single(args, "series") or "both"
        if series not in ("both", "all", "each"):
            raise ValueError("'series' must be one of both, all, each")
        since = self.now - window
        out: list[dict[str, Any]] = []
        together: dict[int, list[Sequence[Any]]] = {}
        for builder, samples in sorted(self.samples().items()):
            if not flt.matches(_Name(builder)):
                continue
            groups = _bucketed(samples, since, bucket)
            if series != "each":
                for index, group in groups.items():
                    together.setdefault(index, []).extend(group)
            if series == "all":
                out.append({"builder": builder})
            else:
                out.append({"builder": builder, "buckets": _series(groups, bucket, self.results)})
        body: dict[str, Any] = {"bucket": bucket, "window": window, "builders": out}
        if series != "each":
            body["all"] = {"buckets": _series(together, bucket, self.results)}
        return body


class TrendEndpoint(_BucketedEndpoint):
    """``/api/trend?builder=GLOB&bucket=SECONDS&window=SECONDS``: build durations over time,
    bucketed by start time (count, mean, p50, p95, max, failed, failure_rate per bucket), oldest
    first, per builder and for every matched builder together (``all``)."""

    results = True

    def samples(self) -> Mapping[str, Iterable[Sequence[Any]]]:
        return self.state.build_samples


class WaitsEndpoint(_BucketedEndpoint):
    """``/api/waits?builder=GLOB&bucket=SECONDS&window=SECONDS``: how long requests waited in
    the queue before their build, bucketed by submission time (count, mean, p50, p95, max),
    per builder and for every matched builder together (``all``)."""

    def samples(self) -> Mapping[str, Iterable[Sequence[Any]]]:
        return self.state.wait_samples


class MastersEndpoint(_Endpoint):
    """``/api/masters``: masters seen, their status and last heartbeat; and workers."""

    fields = ()

    def answer(self, args: dict[str, list[str]], flt: Filter, path: list[str]) -> dict[str, Any]:
        return {
            "masters": [dict(m) for _, m in sorted(self.state.masters.items())],
            "workers": [dict(w) for _, w in sorted(self.state.workers.items())],
        }


class ApiResource(Resource):
    """``/api``: one child per question.  Other features mount their own children here."""

    def __init__(self, state: BuildState, hub: Hub, clock: IReactorTime) -> None:
        super().__init__()
        self.state = state
        self.hub = hub
        self.clock = clock
        for name, endpoint in [
            (b"queue", QueueEndpoint), (b"running", RunningEndpoint), (b"builds", BuildsEndpoint),
            (b"builders", BuildersEndpoint), (b"revisions", RevisionsEndpoint),
            (b"lastgreen", LastGreenEndpoint), (b"steps", StepTimingsEndpoint),
            (b"trend", TrendEndpoint), (b"waits", WaitsEndpoint), (b"masters", MastersEndpoint),
        ]:
            self.putChild(name, endpoint(self))

    @property
    def cursor(self) -> str:
        return self.hub.cursor(self.state.offset)

    def getChild(self, path: bytes, request: Request) -> Resource:
        """An unknown ``/api/<name>``: a JSON 404 listing the endpoints (Twisted's is HTML)."""
        if path == b"":
            return self
        return _Unknown(self, path.decode("utf-8", "replace"))

    def render(self, request: Request) -> bytes | int:
        if request.method not in _ALLOW.split(b", "):
            return _not_allowed(request)
        return super().render(request)

    def render_OPTIONS(self, request: Request) -> bytes:
        allow_cors(request)
        return b""

    def endpoints(self) -> list[str]:
        return [f"/api/{n}" for n in sorted(k.decode() for k in self.children)]

    def render_GET(self, request: Request) -> bytes:
        allow_cors(request)
        return json_body(request, 200, {"endpoints": self.endpoints(), "cursor": self.cursor})


class _Unknown(ReadResource):
    """What ``/api/<unknown>`` answers, whatever the method: 404 ``not_found`` in JSON."""

    def __init__(self, api: ApiResource, name: str) -> None:
        super().__init__()
        self.api = api
        self.name = name

    def render(self, request: Request) -> bytes:
        allow_cors(request)
        known = ", ".join(self.api.endpoints())
        return error_body(request, 404, "not_found", f"no endpoint /api/{self.name[:100]}: the endpoints are {known}")
