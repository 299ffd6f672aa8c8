"""The blocking client: :func:`stream` (long-poll over ``urllib``) and :func:`query` (``/api/``).

For plain scripts: no reactor, no Twisted import.  A :class:`Stream` resumes by cursor after
any outage, retrying with :class:`~firehose.backoff.Backoff`, so nothing is lost or delivered
twice; a real loss is surfaced as a :class:`~firehose.client.common.Gap`.

Given several URLs (nodes of one firehose), a failed request moves to the next one at once and
resumes there from the same cursor (the nodes share one cursor space); the backoff applies once
every URL has failed in a row, and a working URL is kept (sticky).
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from firehose.backoff import Backoff
from firehose.client.common import Gap, RequestError, Unavailable, base_urls, check_since, filter_dict

log = logging.getLogger("firehose.client")

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
    :ivar urls: the nodes it may use, in order; :attr:`url` is the one in use.
    """

    def __init__(
        self,
        url: str | Sequence[str],
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
        self.urls = base_urls(url)
        self._node = 0
        #: Requests failed in a row (on any URL) since the last answer.
        self._failed = 0
        self.filter = filter_dict(filter)
        self.cursor: str | None = check_since(since)
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

    @property
    def url(self) -> str:
        """The base URL requests go to now (the first one until it fails)."""
        return self.urls[self._node]

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
            else:
                # Started "from now": ask for the head at once (timeout 0) rather than hold
                # the first poll, so that "now" becomes a concrete cursor the moment the
                # server first answers.  Otherwise an outage before the first event made the
                # retry start "from now" again, and what was published meanwhile was lost.
                query["timeout"] = "0"
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
                self._failed = 0
                self._down_since = None
                self.backoff.reset()
                items, after = self._parse(answer)
                if self.cursor is None and not items:
                    # "Now" is pinned; the poll the caller asked for (held) follows from it.
                    self.cursor = after
                    left = self._hold(hold)
                    if left is None:
                        self.timed_out = True
                        return [], after
                    hold = left
                    continue
                return items, after
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
        """After a failed request: the next URL at once, or (every URL failed in a row) raise
        or sleep a backoff and start the next round at the next URL."""
        now = self.monotonic()
        if self._down_since is None:
            self._down_since = now
        self._failed += 1
        failed = self.url
        self._node = (self._node + 1) % len(self.urls)
        if self._failed % len(self.urls):
            log.warning("firehose: %s at %s; trying %s from %s", problem, failed, self.url, self.cursor or "now")
            return
        where = ", ".join(self.urls)
        if self.fail_fast and not self.connected:
            raise Unavailable(f"cannot reach the firehose at {where}: {problem}")
        if self.give_up_after is not None and now - self._down_since >= self.give_up_after:
            raise Unavailable(
                f"the firehose at {where} has been unreachable for {now - self._down_since:.0f}s: {problem}"
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
    url: str | Sequence[str],
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

    :param url: the server, ``http://host:port``; or the nodes of one firehose, as a list or
        separated by commas: a failed request moves to the next one and resumes by cursor.
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


def query(
    url: str | Sequence[str],
    endpoint: str = "",
    *,
    timeout: float = 30.0,
    _opener: urllib.request.OpenerDirector | None = None,
    **params: Any,
) -> dict[str, Any]:
    """GET ``/api/<endpoint>`` with ``params`` (filters, ``limit``, ``offset``); the JSON answer.

    Every answer carries ``cursor``: pass it as ``since`` to :func:`stream` to follow what
    happens next without missing or double-counting anything::

        snapshot = query(url, "running", builder="linux*")
        for event in stream(url, since=snapshot["cursor"], builder="linux*"): ...

    With several URLs (nodes of one firehose), each is asked in turn until one answers; a 5xx
    or a connection failure moves to the next, a 4xx is the answer.

    :raises RequestError: the server refused the question (bad filter, unknown endpoint).
    :raises Unavailable: no server could be reached (or every one answered 5xx).
    """
    bases = base_urls(url)
    qs = urllib.parse.urlencode({k.replace("__", "."): v for k, v in params.items() if v is not None}, doseq=True)
    opener = _opener or urllib.request.build_opener(urllib.request.ProxyHandler({}))
    problems: list[str] = []
    for base in bases:
        target = f"{base}/api/{endpoint.strip('/')}" + (f"?{qs}" if qs else "")
        try:
            with opener.open(target, timeout=timeout) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                raise _request_error(exc) from None
            problems.append(f"{base}: HTTP {exc.code}")
        except _RETRYABLE as exc:
            problems.append(f"{base}: {_describe(exc)}")
    if len(problems) == 1:
        raise Unavailable(f"cannot reach the firehose at {problems[0]}")
    raise Unavailable(f"cannot reach the firehose at any of its URLs ({'; '.join(problems)})")
