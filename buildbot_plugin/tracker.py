"""Turns the master's raw message stream into a coherent stream of firehose events.

The tracker keeps the small amount of state that makes events self-contained: builder and
worker names by id, each recent build's merged properties and source stamps, and which builds
have been announced.  It asks the data API only on a cache miss (typically never for a build:
its buildset and request were seen moments before), so a build costs one data-API call (its
final properties, to be exact even when the plugin started mid-build).

Buildbot publishes a build's first step, its properties and an ``update`` *before* the build's
``new``.  Events about a build that has not been announced yet are held back until the first
message carrying the build itself arrives, then replayed after ``build.started``; if none comes
within ``hold_seconds`` the build is fetched.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.python import log

from buildbot_plugin import convert

#: ``fetch(path, **kwargs) -> Deferred`` of ``master.data.get(path, **kwargs)``.
Fetch = Callable[..., "defer.Deferred[Any]"]
Out = list[tuple[str, dict[str, Any]]]


class _LRU(collections.OrderedDict):
    """A bounded mapping that forgets the least recently inserted entries."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> Any:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
        return value


@dataclass
class _Build:
    buildid: int
    payload: Any = None
    properties: dict[str, Any] = field(default_factory=dict)
    announced: bool = False
    finished: bool = False
    data: dict[str, Any] | None = None
    held: list[tuple[tuple[str, ...], Any]] = field(default_factory=list)
    held_since: float | None = None
    #: ``properties`` redacted, and by which redactor: every event of the build carries them,
    #: they change only with a properties update.
    redacted: tuple[convert.Redactor, dict[str, Any]] | None = None


@dataclass
class _Log:
    logid: int
    stepid: int
    buildid: int
    payload: Any
    num_lines: int = 0
    offset: int = 0
    skipped: int = 0
    removed: int = 0
    stdio: convert.StdioFilter | None = None
    #: The last raw lines sent: context for scrubbing a secret that spans two fetches.
    tail: list[str] = field(default_factory=list)


class LineBudget:
    """A token bucket limiting how many log lines per second leave the master.

    :param rate: lines per second on average.
    :param burst: lines that may leave at once after a quiet period.
    """

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.last = now

    def take(self, wanted: int, now: float) -> int:
        """How many of ``wanted`` lines may be sent now (the rest are skipped)."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        self.last = now
        granted = max(0, min(wanted, int(self.tokens)))
        self.tokens -= granted
        return granted


class Tracker:
    """Stateful conversion of ``(routing key, payload)`` to ``[(event type, data)]``.

    :param fetch: data-API getter used on cache misses.
    :param redactor: redacts properties and scrubs secrets.
    :param seconds: the clock (``reactor.seconds``).
    :param buildbot_url: base of web-UI links, or ``None``.
    :param logs: whether log events are produced at all.
    :param log_lines_per_second: rate limit of ``log.lines`` across the master.
    :param secrets_for_build: returns secret values a running build has used (from its
        ``Properties``), so they can be scrubbed before its properties are sent.
    """

    #: Routing keys consumed, by (first element, length).  Each entity is published under
    #: several aliases; these are the canonical ones.
    KEYS: frozenset[tuple[str, int]] = frozenset(
        {
            ("builds", 3),
            ("builds", 4),
            ("steps", 3),
            ("logs", 3),
            ("buildrequests", 3),
            ("buildsets", 3),
            ("changes", 3),
            ("workers", 3),
            ("builders", 3),
        }
    )

    def __init__(
        self,
        *,
        fetch: Fetch,
        redactor: convert.Redactor,
        seconds: Callable[[], float],
        buildbot_url: str | None = None,
        logs: bool = False,
        log_lines_per_second: float = 500.0,
        log_burst: int = 5000,
        log_lines_per_event: int = 500,
        hold_seconds: float = 2.0,
        cache_size: int = 5000,
        secrets_for_build: Callable[[int], Iterable[str]] | None = None,
    ) -> None:
        self.fetch = fetch
        self.redactor = redactor
        self.seconds = seconds
        self.buildbot_url = buildbot_url
        self.logs = logs
        self.budget = LineBudget(log_lines_per_second, log_burst, seconds())
        self.log_lines_per_event = log_lines_per_event
        self.hold_seconds = hold_seconds
        self.secrets_for_build = secrets_for_build
        self.builders: dict[int, tuple[str, list[str]]] = {}
        self.workers: dict[int, str] = {}
        self.builds: _LRU = _LRU(cache_size)
        self.steps: _LRU = _LRU(cache_size * 4)
        self.requests: _LRU = _LRU(cache_size)
        self.buildsets: _LRU = _LRU(cache_size)
        self.open_logs: dict[int, _Log] = {}
        #: Builds from this id on were created after capture started (see :meth:`preload`):
        #: every properties update of theirs was seen, so they finish without a lookup.
        #: ``None``: unknown, every build's final properties are fetched.
        self.first_live_buildid: int | None = None
        #: Set when a message was lost before conversion (the reporter's queue was full): from
        #: then on the final properties are always fetched.
        self.lossy = False

    @classmethod
    def wants(cls, key: tuple[str, ...]) -> bool:
        """Cheap check run on the master's path: is this routing key one we convert?"""
        return (key[0], len(key)) in cls.KEYS if key else False

    # -- caches ----------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def preload(self) -> Any:
        """Fill the builder and worker name caches, and find the newest build, in three calls.

        Run once the capture hook is installed: a build newer than the newest one now was
        created while every message was being captured.
        """
        builders = yield self.fetch(("builders",))
        for b in builders or ():
            self.builders[b["builderid"]] = (b["name"], list(b.get("tags") or ()))
        workers = yield self.fetch(("workers",))
        for w in workers or ():
            self.workers[w["workerid"]] = w["name"]
        newest = yield self._get(("builds",), order=["-buildid"], limit=1)
        if isinstance(newest, list | collections.UserList):  # the data API answers a UserList
            ids = [b.get("buildid") for b in newest if isinstance(b, dict)]
            self.first_live_buildid = max([i for i in ids if isinstance(i, int)], default=0) + 1

    @defer.inlineCallbacks
    def _builder(self, builderid: Any) -> Any:
        if builderid not in self.builders and isinstance(builderid, int):
            b = yield self._get(("builders", builderid))
            if b:
                self.builders[builderid] = (b["name"], list(b.get("tags") or ()))
        return self.builders.get(builderid, (f"builder-{builderid}", []))

    @defer.inlineCallbacks
    def _worker(self, workerid: Any) -> Any:
        if workerid is None:
            return None
        if workerid not in self.workers:
            w = yield self._get(("workers", workerid))
            if w:
                self.workers[workerid] = w["name"]
        return self.workers.get(workerid)

    @defer.inlineCallbacks
    def _buildset(self, bsid: Any) -> Any:
        if bsid is None:
            return None
        if bsid not in self.buildsets:
            bs = yield self._get(("buildsets", bsid))
            if bs:
                self.buildsets.put(bsid, convert.buildset_data(bs))
        return self.buildsets.get(bsid)

    @defer.inlineCallbacks
    def _request(self, brid: Any) -> Any:
        if brid is None:
            return None
        if brid not in self.requests:
            br = yield self._get(("buildrequests", brid))
            if br:
                self.requests.put(brid, {"builderid": br["builderid"], "buildsetid": br["buildsetid"]})
        return self.requests.get(brid)

    @defer.inlineCallbacks
    def _get(self, path: tuple[Any, ...], **kwargs: Any) -> Any:
        try:
            result = yield self.fetch(path, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any lookup failure only degrades an event
            log.msg(f"firehose: data API lookup {path} failed: {exc}")
            return None
        return result

    # -- dispatch --------------------------------------------------------------------------------

    def handle(self, key: tuple[str, ...], payload: Any) -> defer.Deferred[Out]:
        """Convert one message; returns (a Deferred of) the possibly empty list of events it
        yields.  Steps, changes, workers and builders convert at once (the Deferred has fired:
        no generator per message); builds, requests, buildsets and logs may need a lookup."""
        kind = key[0]
        out: Out = []
        if kind == "steps":
            st = self._on_step(key, payload)
            if st is not None:
                if st.data is None:
                    return self._step_later(st, key, payload)
                out.append((f"step.{key[2]}", convert.step_data(payload, build=st.data)))
        elif kind in ("builds", "buildrequests", "buildsets") or (kind == "logs" and self.logs):
            return self._handle(key, payload)
        elif kind == "changes" and key[2] == "new":
            out.append(("change.new", convert.change_data(payload, self.redactor)))
        elif kind == "workers":
            self._on_worker(key, payload, out)
        elif kind == "builders":
            name = convert.get(payload, "name")
            bid = convert.get(payload, "builderid")
            if isinstance(name, str) and bid in self.builders:
                self.builders[bid] = (name, self.builders[bid][1])
        return defer.succeed(out)

    @defer.inlineCallbacks
    def _handle(self, key: tuple[str, ...], payload: Any) -> Any:
        kind = key[0]
        out: Out = []
        if kind == "builds":
            yield self._on_build(key, payload, out)
        elif kind == "logs":
            yield self._on_log(key, payload, out)
        elif kind == "buildrequests":
            yield self._on_request(key, payload, out)
        elif kind == "buildsets":
            yield self._on_buildset(key, payload, out)
        return out

    @defer.inlineCallbacks
    def tick(self) -> Any:
        """Periodic work: poll log lines, announce builds held back too long."""
        out: Out = []
        now = self.seconds()
        for st in list(self.builds.values()):
            if st.held and not st.announced and st.held_since is not None and now - st.held_since >= self.hold_seconds:
                payload = yield self._get(("builds", st.buildid))
                if payload:
                    yield self._on_build(("builds", str(st.buildid), "update"), payload, out)
                else:
                    log.msg(f"firehose: build {st.buildid} never appeared; dropping {len(st.held)} held messages")
                    st.held = []
        for lg in list(self.open_logs.values()):
            if lg.num_lines > lg.offset:
                yield self._log_lines(lg, out)
        return out

    # -- builds and steps ------------------------------------------------------------------------

    def _state(self, buildid: int) -> _Build:
        st = self.builds.get(buildid)
        if st is None:
            st = self.builds.put(buildid, _Build(buildid))
        return st

    @defer.inlineCallbacks
    def _build_data(self, st: _Build) -> Any:
        # Cache hits (nearly always) are read here rather than through the lookups: each
        # inlineCallbacks call costs a generator and a Deferred, on every build and step event.
        p = st.payload
        builderid = convert.get(p, "builderid")
        builder = self.builders.get(builderid)
        name, tags = builder if builder is not None else (yield self._builder(builderid))
        workerid = convert.get(p, "workerid")
        worker = self.workers.get(workerid) if workerid in self.workers else (yield self._worker(workerid))
        brid = convert.get(p, "buildrequestid")
        req = self.requests.get(brid) if brid in self.requests else (yield self._request(brid))
        bsid = req["buildsetid"] if req else None
        bs = self.buildsets.get(bsid) if bsid in self.buildsets else (yield self._buildset(bsid))
        if self.secrets_for_build is not None:
            self.redactor.add_secrets(self.secrets_for_build(st.buildid))
        st.data = convert.build_data(
            p,
            builder=name,
            tags=tags,
            worker=worker,
            properties=self._redacted(st),
            stamps=bs["sourcestamps"] if bs else [],
            buildsetid=bsid,
            url=convert.build_url(self.buildbot_url, convert.get(p, "builderid"), convert.get(p, "number")),
        )
        return st.data

    def _redacted(self, st: _Build) -> dict[str, Any]:
        if st.redacted is None or st.redacted[0] is not self.redactor:
            st.redacted = (self.redactor, self.redactor.properties(st.properties))
        return st.redacted[1]

    @defer.inlineCallbacks
    def _on_build(self, key: tuple[str, ...], payload: Any, out: Out) -> Any:
        buildid = int(key[1])
        st = self._state(buildid)
        if len(key) == 4:  # builds/<id>/properties/update: only new or changed ones
            for name, raw in (payload or {}).items():
                st.properties[name] = convert.prop_value(raw)
            st.redacted = None
            if not st.announced:
                self._hold(st, key, payload)
                return
            if st.finished:
                return
            data = yield self._build_data(st)
            out.append(("build.updated", data))
            return
        event = key[2]
        st.payload = payload
        if event == "finished" and not self._saw_every_update(buildid):
            # A build older than the plugin (or any build once a message was lost): one lookup
            # makes its final properties exact.  Newer builds have had every update merged.
            props = yield self._get(("builds", buildid, "properties"))
            if isinstance(props, dict):
                st.properties = {k: convert.prop_value(v) for k, v in props.items()}
                st.redacted = None
        if not st.announced:
            st.announced = True
            data = yield self._build_data(st)
            out.append(("build.started", dict(data)))
            held, st.held, st.held_since = st.held, [], None
            for hkey, hpayload in held:
                sub = yield self.handle(hkey, hpayload)
                out.extend(sub)
            if event != "finished":
                return
        if st.finished:
            return
        data = yield self._build_data(st)
        if event == "finished":
            st.finished = True
            out.append(("build.finished", data))
        elif event == "update":
            out.append(("build.updated", data))
        # a late "new" after the build was announced says nothing new

    def _saw_every_update(self, buildid: int) -> bool:
        """Whether every ``properties/update`` of this build went through :meth:`handle`.

        Buildbot publishes every property change of a build as one (``setBuildProperties``
        sends what differs from the database), so the merged updates are its final properties.
        """
        first = self.first_live_buildid
        return first is not None and buildid >= first and not self.lossy

    def _hold(self, st: _Build, key: tuple[str, ...], payload: Any) -> None:
        if st.held_since is None:
            st.held_since = self.seconds()
        if len(st.held) < 10000:
            st.held.append((key, payload))

    def _on_step(self, key: tuple[str, ...], payload: Any) -> _Build | None:
        """Cache the step; the state of its build when the message makes an event now."""
        event = key[2]
        stepid = int(key[1])
        self.steps.put(stepid, payload)
        if event not in ("started", "finished"):
            return None
        st = self._state(convert.get(payload, "buildid"))
        if not st.announced:
            self._hold(st, key, payload)
            return None
        return st

    @defer.inlineCallbacks
    def _step_later(self, st: _Build, key: tuple[str, ...], payload: Any) -> Any:
        build = yield self._build_data(st)
        return [(f"step.{key[2]}", convert.step_data(payload, build=build))]

    # -- requests, buildsets, workers ------------------------------------------------------------

    @defer.inlineCallbacks
    def _on_request(self, key: tuple[str, ...], payload: Any, out: Out) -> Any:
        event = key[2]
        types = {
            "new": "request.submitted",
            "claimed": "request.claimed",
            "complete": "request.completed",
            "cancel": "request.cancelled",
        }
        if event not in types:
            return
        brid = convert.get(payload, "buildrequestid")
        bsid = convert.get(payload, "buildsetid")
        builderid = convert.get(payload, "builderid")
        self.requests.put(brid, {"builderid": builderid, "buildsetid": bsid})
        builder = self.builders.get(builderid)
        name, _tags = builder if builder is not None else (yield self._builder(builderid))
        bs = self.buildsets.get(bsid) if bsid in self.buildsets else (yield self._buildset(bsid))
        if bs is not None and event == "new" and name not in bs["builders"]:
            bs["builders"].append(name)
        out.append((types[event], convert.request_data(payload, builder=name, buildset=bs)))

    @defer.inlineCallbacks
    def _on_buildset(self, key: tuple[str, ...], payload: Any, out: Out) -> Any:
        event = key[2]
        bsid = convert.get(payload, "bsid")
        if event == "new":
            data = convert.buildset_data(payload)
            self.buildsets.put(bsid, data)
            out.append(("buildset.submitted", data))
        elif event == "complete":
            known = self.buildsets.get(bsid) if bsid in self.buildsets else (yield self._buildset(bsid))
            stamps = known["sourcestamps"] if known else []
            data = convert.buildset_data(payload, builders=known["builders"] if known else [])
            if data["scheduler"] is None and known:
                # Buildbot's buildsets/*/complete message has no scheduler; its new one had.
                data["scheduler"] = known.get("scheduler")
            if not data["sourcestamps"]:
                data["sourcestamps"] = stamps
                data.update(convert.top_source(stamps))
            out.append(("buildset.completed", data))

    def _on_worker(self, key: tuple[str, ...], payload: Any, out: Out) -> None:
        wid = convert.get(payload, "workerid")
        name = convert.get(payload, "name")
        if isinstance(wid, int) and isinstance(name, str):
            self.workers[wid] = name
        if key[2] in ("connected", "disconnected") and isinstance(name, str):
            out.append((f"worker.{key[2]}", convert.worker_data(payload, connected=key[2] == "connected")))

    # -- logs ------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _step_data(self, stepid: int) -> Any:
        step = self.steps.get(stepid)
        if step is None:
            step = yield self._get(("steps", stepid))
            if not step:
                return None
            self.steps.put(stepid, step)
        st = self._state(convert.get(step, "buildid"))
        if not st.announced:
            return st
        build = st.data or (yield self._build_data(st))
        return convert.step_data(step, build=build)

    @defer.inlineCallbacks
    def _on_log(self, key: tuple[str, ...], payload: Any, out: Out) -> Any:
        event = key[2]
        logid = int(key[1])
        lg = self.open_logs.get(logid)
        if event == "new":
            step = yield self._step_data(convert.get(payload, "stepid"))
            if isinstance(step, _Build):
                self._hold(step, key, payload)
                return
            if step is None:
                return
            lg = _Log(
                logid,
                step["stepid"],
                step["buildid"],
                payload,
                stdio=convert.StdioFilter() if convert.get(payload, "type") == "s" else None,
            )
            self.open_logs[logid] = lg
            out.append(("log.started", convert.log_data(payload, step=step)))
            return
        if lg is None:
            st = self.builds.get(self.steps.get(convert.get(payload, "stepid"), {}).get("buildid"))
            if st is not None and not st.announced:
                self._hold(st, key, payload)
            return
        lg.num_lines = max(lg.num_lines, int(convert.get(payload, "num_lines") or 0))
        lg.payload = payload
        if event == "finished":
            if lg.num_lines > lg.offset:
                yield self._log_lines(lg, out)
            del self.open_logs[logid]
            step = yield self._step_data(lg.stepid)
            if isinstance(step, dict):
                data = convert.log_data(payload, step=step)
                data.update(num_lines=lg.num_lines, skipped_lines=lg.skipped, removed_lines=lg.removed)
                out.append(("log.finished", data))

    @defer.inlineCallbacks
    def _log_lines(self, lg: _Log, out: Out) -> Any:
        """Fetch a log's new lines (within the rate budget) and emit them in chunks."""
        wanted = lg.num_lines - lg.offset
        granted = self.budget.take(wanted, self.seconds())
        step = yield self._step_data(lg.stepid)
        if not isinstance(step, dict):
            return
        base = convert.log_data(lg.payload, step=step)
        log_type = convert.get(lg.payload, "type") or "t"
        offset = lg.offset
        while granted > 0:
            n = min(granted, self.log_lines_per_event)
            # Read a few lines past the ones sent, so a secret crossing the end is seen whole.
            ahead = max(0, min(self.redactor.context_lines, lg.num_lines - offset - n))
            contents = yield self._get(("logs", lg.logid, "contents"), offset=offset, limit=n + ahead)
            if not contents:
                break
            lines, streams, removed = convert.split_log_lines(
                contents.get("content") or "",
                log_type=log_type,
                stdio=lg.stdio,
                redactor=self.redactor,
                emit=n,
                tail=lg.tail,
            )
            got = n if (contents.get("content") or "") else 0
            if not got:
                break
            lg.removed += removed
            data = dict(base)
            data.update(first_line=offset, num_lines=n, lines=lines, removed_lines=removed)
            if streams is not None:
                data["streams"] = streams
            if lines:
                out.append(("log.lines", data))
            offset += n
            granted -= n
        skipped = lg.num_lines - offset
        if skipped > 0:
            # Over the rate limit: skip ahead instead of falling further behind.
            lg.skipped += skipped
            lg.tail.clear()
            if lg.stdio is not None:
                lg.stdio.lost_lines()
        lg.offset = lg.num_lines

    # -- snapshot --------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def snapshot(self, masterid: int | None, limit: int = 500) -> Any:
        """``running`` builds of this master and ``queued`` requests, for ``master.started``.

        The running builds are marked announced: the snapshot is their announcement, and their
        later events follow it coherently.
        """
        from buildbot.data import (
            resultspec,  # the plugin runs inside Buildbot; keep convert pure
        )

        running: list[dict[str, Any]] = []
        queued: list[dict[str, Any]] = []
        builds = yield self._get(("builds",), filters=[resultspec.Filter("complete", "eq", [False])])
        for b in (builds or [])[:limit]:
            if masterid is not None and b.get("masterid") not in (None, masterid):
                continue
            st = self._state(b["buildid"])
            st.payload = b
            props = yield self._get(("builds", b["buildid"], "properties"))
            if isinstance(props, dict):
                st.properties = {k: convert.prop_value(v) for k, v in props.items()}
                st.redacted = None
            st.announced = True
            data = yield self._build_data(st)
            running.append(data)
        requests = yield self._get(
            ("buildrequests",),
            filters=[resultspec.Filter("claimed", "eq", [False]), resultspec.Filter("complete", "eq", [False])],
        )
        for r in (requests or [])[:limit]:
            name, _tags = yield self._builder(r["builderid"])
            bs = yield self._buildset(r["buildsetid"])
            queued.append(convert.request_data(r, builder=name, buildset=bs))
        return {"running": running, "queued": queued}
