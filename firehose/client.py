"""Python client of the firehose: follow the stream from a script or from a Twisted program.

Two clients with the same guarantee: **resume by cursor**.  Whatever happens to the network or
to the server (a dropped connection, a restart), the client reconnects with exponential backoff
and jitter, and resumes after the last event it delivered, so nothing is lost and nothing is
delivered twice.  A *real* loss (a cursor older than retention, or from another journal) is
never silent: it is surfaced as a :class:`Gap`.

* :func:`stream` is for plain scripts (no reactor knowledge; long-poll over ``urllib``)::

      for event in firehose.client.stream("http://127.0.0.1:8080", builder="try-*"):
          print(event["type"], event["data"]["builder"])

* :class:`FirehoseClient` is Twisted-native (WebSocket, autobahn): a callback, or
  ``async for event in client`` inside a Twisted coroutine.

* :func:`wait` waits for every build of a revision to finish (what ``firehose wait`` runs).

Filters are keyword arguments (``builder="linux*"``, ``type=["build.started", "build.finished"]``)
or a ``filter={...}`` dict for names that are not identifiers (``{"prop.owner": "alice"}``);
``prop__owner="alice"`` also means ``prop.owner``.  See docs/client.md.
"""

from __future__ import annotations

import collections
import functools
import http.client
import json
import logging
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from firehose.cursor import CursorError, parse_cursor
from firehose.filters import FilterError, GlobSet, parse_json

log = logging.getLogger("firehose.client")

__all__ = [
    "Backoff",
    "FirehoseClient",
    "FirehoseError",
    "Gap",
    "RequestError",
    "Stream",
    "Unavailable",
    "WaitResult",
    "is_event",
    "query",
    "stream",
    "wait",
]

#: Gap reasons that mean events were lost; ``slow`` and ``error`` only mean "resume from here",
#: which the clients do by themselves.
LOSS_REASONS = ("epoch", "expired")


class FirehoseError(Exception):
    """Base of the client's errors."""


class RequestError(FirehoseError):
    """The server refused the request (bad filter, bad cursor...): retrying cannot help.

    :ivar code: the protocol's error code (``bad_filter``, ``bad_cursor``, ``bad_request``...).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Unavailable(FirehoseError):
    """The server could not be reached (and the caller asked not to wait for it)."""


class Gap(dict[str, Any]):
    """A ``gap`` message: events between ``since`` and ``cursor`` are not coming.

    It is a ``dict`` (the message as the server sent it, ``type == "gap"``), so code that
    prints or serialises what a stream yields works unchanged; the properties are shortcuts.
    """

    @property
    def reason(self) -> str:
        return str(self.get("reason"))

    @property
    def cursor(self) -> str | None:
        return self.get("cursor")

    @property
    def lost(self) -> bool:
        """Whether events were lost (``epoch``, ``expired``) rather than merely interrupted."""
        return self.reason in LOSS_REASONS


def is_event(item: Mapping[str, Any]) -> bool:
    """Whether a message is an event (its type has a dot) rather than a control message."""
    return "." in str(item.get("type", ""))


def filter_dict(filter: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, list[str]]:
    """Merge a filter dict and keyword fields into ``{field: [patterns]}`` and validate it.

    ``prop__owner`` stands for ``prop.owner``; ``None`` values are dropped; a comma-separated
    string means alternatives, as in a query string.  Raises :class:`RequestError`
    (``bad_filter``) with the server's own message for an unknown field or an empty pattern.
    """
    merged: dict[str, list[str]] = {}
    items = list((filter or {}).items()) + [(k.replace("__", "."), v) for k, v in fields.items()]
    for name, value in items:
        if value is None:
            continue
        values = [value] if isinstance(value, str) else list(value)
        for v in values:
            if not isinstance(v, str):
                raise RequestError("bad_filter", f"filter field {name!r} must be a string or a list of strings")
            merged.setdefault(name, []).extend(p.strip() for p in v.split(","))
    try:
        parse_json(merged)
    except FilterError as exc:
        raise RequestError("bad_filter", str(exc)) from None
    return merged


def _check_since(since: str | None) -> None:
    if since in (None, "", "now", "earliest"):
        return
    assert since is not None
    try:
        parse_cursor(since)
    except CursorError as exc:
        raise RequestError("bad_cursor", str(exc)) from None


def _offset_after(a: str, b: str) -> bool:
    """Whether cursor ``a`` names a position after ``b`` in the same epoch (else ``True``)."""
    try:
        ca, cb = parse_cursor(a), parse_cursor(b)
    except CursorError:
        return True
    return ca.epoch != cb.epoch or ca.offset > cb.offset


class Backoff:
    """Exponential backoff with jitter: ``initial * factor**n`` capped at ``maximum``, each
    delay drawn uniformly from its upper half so that clients cut off together do not all come
    back in the same instant.

    :param rng: a ``random.Random`` (tests pass a seeded one).
    """

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.rng = rng or random.Random()
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        ceiling = min(self.maximum, self.initial * self.factor**self.attempts)
        self.attempts += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """A connection succeeded: start from ``initial`` again."""
        self.attempts = 0


def _base_url(url: str) -> str:
    """``http://host:port`` (any path, query or fragment dropped; ``ws`` becomes ``http``)."""
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise RequestError("bad_url", f"not a firehose URL: {url!r} (expected http://host:port)")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


# ---------------------------------------------------------------------------------------------
# Blocking client (long-poll)
# ---------------------------------------------------------------------------------------------

_RETRYABLE = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    socket.timeout,
    OSError,
    ValueError,  # a truncated JSON answer
)


class Stream:
    """An iterator over events, made by :func:`stream`.  Blocking; no reactor involved.

    :ivar cursor: where to resume: the id of the last event this iterator yielded (or a later
        position the server told it about).  Store it and pass it as ``since`` to continue in
        another process exactly where this one stopped.
    """

    def __init__(
        self,
        url: str,
        filter: Mapping[str, Any] | None = None,
        since: str | None = None,
        *,
        on_gap: Callable[[Gap], Any] | None = None,
        poll_timeout: float = 30.0,
        limit: int = 500,
        stop_after: float | None = None,
        fail_fast: bool = False,
        give_up_after: float | None = None,
        backoff: Backoff | None = None,
        opener: urllib.request.OpenerDirector | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = _base_url(url)
        self.filter = filter_dict(filter)
        _check_since(since)
        self.cursor: str | None = since if since not in ("", "now") else None
        self.on_gap = on_gap
        self.poll_timeout = poll_timeout
        self.limit = limit
        self.fail_fast = fail_fast
        self.give_up_after = give_up_after
        self.backoff = backoff or Backoff()
        self.opener = opener or urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.sleep = sleep
        self.monotonic = monotonic
        self.deadline = monotonic() + stop_after if stop_after is not None else None
        #: Whether iteration ended because ``stop_after`` passed.
        self.timed_out = False
        #: Whether the server has answered at least once.
        self.connected = False
        self._buffer: collections.deque[dict[str, Any]] = collections.deque()
        self._after: str | None = None
        self._down_since: float | None = None

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> dict[str, Any]:
        for _ in range(1_000_000_000):
            if self._buffer:
                item = self._buffer.popleft()
                if isinstance(item, Gap):
                    if self.on_gap is not None:
                        self.on_gap(item)
                        continue
                    return item
                self.cursor = item["id"]
                return item
            if self._after is not None:
                self.cursor, self._after = self._after, None
            hold = self._hold()
            if hold is None:
                self.timed_out = True
                raise StopIteration
            items, after = self._request(hold)
            self._buffer.extend(items)
            self._after = after
        raise StopIteration  # pragma: no cover (the loop above is bounded only for form)

    def fetch(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """One long-poll (retried on failure): the events (and :class:`Gap` s) that follow
        :attr:`cursor`, waiting up to ``timeout`` seconds for one; advances :attr:`cursor` past
        all of them.  An empty list means nothing matched in that time."""
        if self._buffer:
            out = list(self._buffer)
            self._buffer.clear()
        else:
            hold = self._hold(timeout)
            if hold is None:
                self.timed_out = True
                return []
            out, self._after = self._request(hold)
        if self._after is not None:
            self.cursor, self._after = self._after, None
        return out

    def close(self) -> None:
        """Nothing to release (each poll is its own request); here for symmetry."""

    def _hold(self, timeout: float | None = None) -> float | None:
        hold = self.poll_timeout if timeout is None else timeout
        if self.deadline is not None:
            left = self.deadline - self.monotonic()
            if left <= 0:
                return None
            hold = min(hold, left)
        return max(0.001, min(hold, 300.0))

    def _request(self, hold: float) -> tuple[list[dict[str, Any]], str]:
        """One answered poll: (events and gaps, the cursor to continue from)."""
        for _ in range(1_000_000_000):
            query: dict[str, str] = {k: ",".join(v) for k, v in self.filter.items()}
            if self.cursor is not None:
                query["since"] = self.cursor
            query["timeout"] = f"{hold:.3f}"
            query["limit"] = str(self.limit)
            url = f"{self.url}/poll?{urllib.parse.urlencode(query)}"
            try:
                with self.opener.open(url, timeout=hold + 30) as resp:
                    answer = json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                if 400 <= exc.code < 500:
                    raise _request_error(exc) from None
                problem = f"HTTP {exc.code}"
            except _RETRYABLE as exc:
                problem = _describe(exc)
            else:
                self.connected = True
                self._down_since = None
                self.backoff.reset()
                return self._parse(answer)
            self._retry_or_raise(problem)
            if self._hold() is None:
                self.timed_out = True
                return [], self.cursor or ""
        raise Unavailable("gave up")  # pragma: no cover

    def _parse(self, answer: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = list(answer.get("events", ()))
        cursor = str(answer["cursor"])
        gap = answer.get("gap")
        if gap is not None:
            g = Gap(gap)
            if g.lost:
                items.append(g)
            else:
                log.info("firehose: %s gap, resuming from %s", g.reason, g.cursor)
        return items, cursor

    def _retry_or_raise(self, problem: str) -> None:
        now = self.monotonic()
        if self.fail_fast and not self.connected:
            raise Unavailable(f"cannot reach the firehose at {self.url}: {problem}")
        if self._down_since is None:
            self._down_since = now
        if self.give_up_after is not None and now - self._down_since >= self.give_up_after:
            raise Unavailable(
                f"the firehose at {self.url} has been unreachable for {now - self._down_since:.0f}s: {problem}"
            )
        delay = self.backoff.next()
        if self.deadline is not None:
            delay = min(delay, max(0.0, self.deadline - now))
        log.warning("firehose: %s; retrying in %.1fs from %s", problem, delay, self.cursor or "now")
        self.sleep(delay)


def _request_error(exc: urllib.error.HTTPError) -> RequestError:
    try:
        body = json.loads(exc.read())
        return RequestError(str(body.get("error", f"http_{exc.code}")), str(body.get("message", "")))
    except Exception:
        return RequestError(f"http_{exc.code}", str(exc.reason))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(exc.reason)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def stream(
    url: str,
    *,
    since: str | None = None,
    filter: Mapping[str, Any] | None = None,
    on_gap: Callable[[Gap], Any] | None = None,
    stop_after: float | None = None,
    fail_fast: bool = False,
    give_up_after: float | None = None,
    poll_timeout: float = 30.0,
    **fields: Any,
) -> Stream:
    """Iterate over the events of a firehose, blocking; resumes by itself after any outage.

    :param url: the server, ``http://host:port``.
    :param since: ``None``/``"now"`` (live), ``"earliest"``, or a cursor (an event's ``id``, or
        :attr:`Stream.cursor` saved earlier): start after it.
    :param fields: the filter: ``builder="try-*"``, ``type=["build.finished"]``,
        ``prop__owner="alice"``.
    :param on_gap: called with each :class:`Gap` that means lost events; without it, gaps are
        *yielded* among the events (check :func:`is_event` or ``isinstance(item, Gap)``).
    :param stop_after: end the iteration after this many seconds (``Stream.timed_out`` is set).
    :param fail_fast: raise :class:`Unavailable` if the very first request fails, instead of
        retrying (later outages are always retried).
    :param give_up_after: raise :class:`Unavailable` after this many seconds of continuous
        outage (default: retry forever).
    :raises RequestError: at once, for a bad filter or cursor.
    """
    return Stream(
        url,
        filter_dict(filter, **fields),
        since,
        on_gap=on_gap,
        stop_after=stop_after,
        fail_fast=fail_fast,
        give_up_after=give_up_after,
        poll_timeout=poll_timeout,
    )


def query(url: str, endpoint: str = "", *, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
    """GET ``/api/<endpoint>`` with ``params`` (filters, ``limit``, ``offset``); the JSON answer.

    Every answer carries ``cursor``: pass it as ``since`` to :func:`stream` to follow what
    happens next without missing or double-counting anything::

        snapshot = query(url, "running", builder="linux*")
        for event in stream(url, since=snapshot["cursor"], builder="linux*"): ...

    :raises RequestError: the server refused the question (bad filter, unknown endpoint).
    :raises Unavailable: the server could not be reached.
    """
    base = _base_url(url)
    qs = urllib.parse.urlencode({k.replace("__", "."): v for k, v in params.items() if v is not None}, doseq=True)
    target = f"{base}/api/{endpoint.strip('/')}" + (f"?{qs}" if qs else "")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(target, timeout=timeout) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        raise _request_error(exc) from None
    except _RETRYABLE as exc:
        raise Unavailable(f"cannot reach the firehose at {base}: {_describe(exc)}") from None


# ---------------------------------------------------------------------------------------------
# Waiting for the builds of a revision
# ---------------------------------------------------------------------------------------------

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
    url: str,
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


# ---------------------------------------------------------------------------------------------
# Twisted client (WebSocket)
# ---------------------------------------------------------------------------------------------


class FirehoseClient:
    """A Twisted-native subscriber over WebSocket that never loses its place.

    Give it ``on_event`` (called with each event dict, in order) or iterate it inside a
    coroutine::

        client = FirehoseClient("http://127.0.0.1:8080", builder="linux*")
        client.start()
        async for event in client:
            ...

    It reconnects with :class:`Backoff` after a drop or a server restart and subscribes with
    ``since`` = the last event it received, so each event is delivered exactly once.  A ``slow``
    gap (it did not read fast enough) is handled by resubscribing from the gap's cursor; a gap
    that lost events goes to ``on_gap`` (or into the iteration as a :class:`Gap`).

    :param reactor: the reactor (default: the global one).
    :param connect: ``connect(factory) -> Deferred[protocol]``; default a TCP/TLS connection
        to the URL's host (tests plug in memory transports).
    :param max_queued: with async iteration, events read but not yet consumed; beyond that
        the socket stops being read (the server then ends the subscription as ``slow`` and
        the client catches up from the journal once the consumer is ready).
    """

    def __init__(
        self,
        url: str,
        filter: Mapping[str, Any] | None = None,
        since: str | None = None,
        *,
        on_event: Callable[[dict[str, Any]], Any] | None = None,
        on_gap: Callable[[Gap], Any] | None = None,
        reactor: Any = None,
        backoff: Backoff | None = None,
        connect: Callable[[Any], Any] | None = None,
        ping_interval: float = 30.0,
        max_queued: int = 1000,
        **fields: Any,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        from twisted.internet import defer

        self.reactor = reactor
        self.base = _base_url(url)
        self.ws_url = self.base.replace("http", "ws", 1) + "/ws"
        self.filter = filter_dict(filter, **fields)
        _check_since(since)
        self._since = since if since not in ("", "now") else None
        #: Position to subscribe from after a reconnect: the last event *received*.
        self._received: str | None = self._since
        #: Position of the last event handed to the consumer: what to store to resume later.
        self.cursor: str | None = self._since
        self.on_event = on_event
        self.on_gap = on_gap
        self.backoff = backoff or Backoff()
        self._connect = connect or self._tcp_connect
        self.ping_interval = ping_interval
        self.max_queued = max_queued
        #: Fires with ``None`` after :meth:`stop`, or fails with :class:`RequestError` when the
        #: server refuses the subscription (bad filter or cursor).
        self.done: defer.Deferred[None] = defer.Deferred()
        self.connected = False
        #: Connections made (a reconnect counts), for tests and metrics.
        self.connections = 0
        self._protocol: Any = None
        self._retry: Any = None
        self._connecting: Any = None
        self._stopped = False
        self._started = False
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._waiting: list[defer.Deferred[dict[str, Any]]] = []
        self._reading_paused = False
        self._error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FirehoseClient:
        """Connect and subscribe (returns at once; delivery follows)."""
        if not self._started:
            self._started = True
            self._open()
        return self

    def stop(self) -> Any:
        """Disconnect and stop reconnecting; returns :attr:`done` (fires once closed)."""
        from twisted.internet import defer

        if self._stopped:
            return self.done
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None and getattr(protocol, "transport", None) is not None:
            protocol.transport.abortConnection() if hasattr(protocol.transport, "abortConnection") \
                else protocol.transport.loseConnection()
        self._finish(None)
        return defer.succeed(None) if self.done.called else self.done

    def _finish(self, error: BaseException | None) -> None:
        self._error = error
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if error is None:
                d.errback(StopAsyncIteration())
            else:
                d.errback(error)
        if not self.done.called:
            if error is None:
                self.done.callback(None)
            else:
                self.done.errback(error)

    # -- connection --------------------------------------------------------------------------

    def _factory(self) -> Any:
        from autobahn.twisted.websocket import WebSocketClientFactory

        factory = WebSocketClientFactory(self.ws_url, reactor=self.reactor)
        factory.protocol = _client_protocol_class()
        factory.client = self  # type: ignore[attr-defined]
        factory.setProtocolOptions(
            autoPingInterval=self.ping_interval or 0,
            autoPingTimeout=self.ping_interval or 0,
            perMessageCompressionOffers=[],
        )
        return factory

    def _tcp_connect(self, factory: Any) -> Any:
        from twisted.internet.endpoints import clientFromString

        parts = urllib.parse.urlsplit(self.base)
        host = parts.hostname or "127.0.0.1"
        kind = "tls" if parts.scheme == "https" else "tcp"
        port = parts.port or (443 if kind == "tls" else 80)
        endpoint = clientFromString(self.reactor, f"{kind}:host={host}:port={port}:timeout=10")
        return endpoint.connect(factory)

    def _open(self) -> None:
        self._retry = None
        if self._stopped:
            return
        try:
            d = self._connect(self._factory())
        except Exception as exc:  # a connector that fails synchronously
            from twisted.internet import defer

            d = defer.fail(exc)
        self._connecting = d

        def failed(failure: Any) -> None:
            self._connecting = None
            if not self._stopped:
                self._schedule(f"cannot connect: {failure.getErrorMessage()}")

        def connected(_: Any) -> None:
            self._connecting = None

        d.addCallbacks(connected, failed)

    def _schedule(self, why: str) -> None:
        if self._stopped or (self._retry is not None and self._retry.active()):
            return
        delay = self.backoff.next()
        log.warning("firehose: %s; reconnecting in %.1fs from %s", why, delay, self._received or "now")
        self._retry = self.reactor.callLater(delay, self._open)

    def _opened(self, protocol: Any) -> None:
        if self._stopped:
            protocol.transport.loseConnection()
            return
        self._protocol = protocol
        self.connections += 1
        self._subscribe()
        if self._reading_paused:
            protocol.transport.pauseProducing()

    def _subscribe(self) -> None:
        msg: dict[str, Any] = {"cmd": "subscribe", "filter": self.filter}
        if self._received is not None:
            msg["since"] = self._received
        self._protocol.sendMessage(json.dumps(msg).encode())

    def _closed(self, protocol: Any, why: str) -> None:
        if protocol is not self._protocol and self._protocol is not None:
            return
        self._protocol = None
        self.connected = False
        if not self._stopped and self._error is None:
            self._schedule(f"connection lost ({why})")

    # -- messages ----------------------------------------------------------------------------

    def _message(self, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            log.warning("firehose: ignoring a malformed message")
            return
        kind = str(msg.get("type", ""))
        if "." in kind:
            received = self._received
            if received not in (None, "earliest") and not _offset_after(msg["id"], received):
                return  # already delivered (defensive: the server never sends it twice)
            self._received = msg["id"]
            self._deliver(msg)
        elif kind == "subscribed":
            self.connected = True
            self.backoff.reset()
            if self._received is None:
                self._received = msg.get("cursor")
                if self.cursor is None:
                    self.cursor = self._received
        elif kind == "gap":
            gap = Gap(msg)
            if gap.cursor:
                self._received = gap.cursor
            if gap.reason in ("slow", "error"):
                log.info("firehose: %s gap; resubscribing from %s", gap.reason, gap.cursor)
                if self._protocol is not None:
                    self._subscribe()
            else:
                self._deliver(gap)
        elif kind == "error":
            error = RequestError(str(msg.get("error")), str(msg.get("message")))
            self._stopped = True
            protocol, self._protocol = self._protocol, None
            if protocol is not None:
                protocol.transport.loseConnection()
            self._finish(error)

    def _deliver(self, item: dict[str, Any]) -> None:
        if isinstance(item, Gap):
            if self.on_gap is not None:
                self.on_gap(item)
                if item.cursor:
                    self.cursor = item.cursor
                return
            if self.on_event is not None:
                log.warning("firehose: events lost (%s gap) up to %s", item.reason, item.cursor)
                if item.cursor:
                    self.cursor = item.cursor
                return
        if self.on_event is not None:
            self.cursor = item["id"]
            self.on_event(item)
            return
        if self._waiting:
            self._advance(item)
            self._waiting.pop(0).callback(item)
            return
        self._queue.append(item)
        if len(self._queue) >= self.max_queued and not self._reading_paused:
            self._reading_paused = True
            if self._protocol is not None:
                self._protocol.transport.pauseProducing()

    def _advance(self, item: dict[str, Any]) -> None:
        if isinstance(item, Gap):
            if item.cursor:
                self.cursor = item.cursor
        else:
            self.cursor = item["id"]

    # -- async iteration ---------------------------------------------------------------------

    def __aiter__(self) -> FirehoseClient:
        self.start()
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self.next()

    def next(self) -> Any:
        """A Deferred firing with the next event (or :class:`Gap`); fails with
        ``StopAsyncIteration`` after :meth:`stop`, or with the :class:`RequestError`."""
        from twisted.internet import defer

        if self._queue:
            item = self._queue.popleft()
            self._advance(item)
            if self._reading_paused and len(self._queue) <= self.max_queued // 2:
                self._reading_paused = False
                if self._protocol is not None:
                    self._protocol.transport.resumeProducing()
            return defer.succeed(item)
        if self.done.called:
            return defer.fail(self._error or StopAsyncIteration())
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._waiting.append(d)
        return d


@functools.cache
def _client_protocol_class() -> Any:
    """The autobahn protocol, made on first use: scripts using only :func:`stream` never pay
    for importing autobahn and Twisted."""
    from autobahn.twisted.websocket import WebSocketClientProtocol

    class ClientProtocol(WebSocketClientProtocol):
        def onOpen(self) -> None:
            self.factory.client._opened(self)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.factory.client._message(payload)

        def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
            self.factory.client._closed(self, reason or f"code {code}")

    return ClientProtocol
