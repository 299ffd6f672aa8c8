"""Fakes for testing your own firehose consumers, without a server, sockets or a reactor.

:class:`FakeFirehose` runs the real hub and filters over an in-memory journal, so what your code
sees is what a server would send (ids, filtering, gaps), synchronously::

    from firehose.testing import FakeFirehose

    def test_my_notifier(monkeypatch):
        fake = FakeFirehose()
        fake.emit_all(try_push("abc123", {"try-linux": "success", "try-mac": "failure"}))
        monkeypatch.setattr(my_notifier, "stream", fake.stream)   # was firehose.client.stream
        assert my_notifier.failures("http://ignored") == ["try-mac"]

* :meth:`FakeFirehose.stream` is a drop-in for :func:`firehose.client.stream`: it yields what
  was emitted (from ``since``, filtered), then stops instead of waiting for more.
* :meth:`FakeFirehose.client` is a drop-in for :class:`firehose.client.FirehoseClient`: same
  ``on_event``/``on_gap``/``async for``/``cursor``/``stop``; events are delivered as they are
  emitted.
* :meth:`FakeFirehose.gap` injects a gap, as the server sends when events were lost.
* :func:`try_push` makes the event sequence the Buildbot plugin sends for a push built on
  several builders; :func:`webhook_request` makes a signed webhook delivery for testing a
  receiver.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from twisted.internet import defer

from firehose.client.common import Gap, RequestError, check_since, filter_dict
from firehose.client.consumer import Consumer
from firehose.cursor import EARLIEST, NOW, CursorError, parse_since
from firehose.event import RESULT_NAMES, Event, dumps
from firehose.filters import parse_json
from firehose.hub import Hub, Subscription
from firehose.journal import MemoryJournal
from firehose.signing import signature_headers

__all__ = ["FakeClient", "FakeFirehose", "try_push", "webhook_request"]

_CODES = {name: code for code, name in RESULT_NAMES.items()}


class FakeFirehose:
    """An in-process firehose: emit events, then read them through fake clients and streams.

    :param master: the default ``master`` of emitted events.
    :param epoch: the cursor epoch (cursors look like ``fake:1``, ``fake:2``...).
    """

    def __init__(self, master: str = "fake-master", epoch: str = "fake") -> None:
        self.master = master
        self.journal = MemoryJournal(epoch=epoch)
        self.hub = Hub(self.journal)
        self._seq = itertools.count(1)
        self._gaps: list[tuple[int, Gap]] = []  # (offset after which it happened, gap)
        self._clients: list[FakeClient] = []

    @property
    def cursor(self) -> str:
        """The cursor of the newest event (what the server's ``/health`` calls ``cursor``)."""
        return self.hub.head_cursor

    def emit(self, type: str, data: Mapping[str, Any] | None = None, *, master: str | None = None,
             time: float | None = None, **fields: Any) -> dict[str, Any]:
        """Publish one event; return it as subscribers receive it (with its ``id``)."""
        event = {
            "master": master or self.master,
            "incarnation": "fake-1",
            "seq": next(self._seq),
            "type": type,
            "time": time if time is not None else 1_700_000_000.0,
            "data": {**(data or {}), **fields},
        }
        result = self.journal.append([event])
        accepted: list[Event] = []
        result.addCallback(lambda r: accepted.extend(r.accepted))
        return dict(accepted[0].obj)

    def emit_all(self, events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Publish events given as ``{"type": ..., "data": ...}`` (e.g. from :func:`try_push`)."""
        return [self.emit(e["type"], e.get("data"), master=e.get("master"), time=e.get("time"))
                for e in events]

    def gap(self, reason: str = "expired") -> Gap:
        """Tell every client and later stream that events before now were lost."""
        since = self.hub.head_cursor
        gap = Gap(type="gap", reason=reason, since=since, cursor=since, earliest=since)
        self._gaps.append((self.journal.head, gap))
        for client in list(self._clients):
            client._gap(gap)
        return gap

    def events(self, since: str | None = "earliest", **fields: Any) -> list[dict[str, Any]]:
        """The emitted events after ``since`` that match the filter."""
        return [e for e in self.stream("fake://", since=since, **fields) if not isinstance(e, Gap)]

    def stream(self, url: str = "fake://", *, since: str | None = "earliest", filter: Mapping[str, Any] | None = None,
               on_gap: Callable[[Gap], Any] | None = None, **fields: Any) -> Iterator[dict[str, Any]]:
        """Drop-in for :func:`firehose.client.stream`: yields what was emitted after ``since``
        (default: everything) that matches, with injected gaps, then stops.  Other keyword
        arguments of the real function (``stop_after``, ``fail_fast``...) are accepted and
        ignored."""
        for name in ("stop_after", "fail_fast", "give_up_after", "poll_timeout"):
            fields.pop(name, None)
        flt = parse_json(filter_dict(filter, **fields))
        after = self._position(since)
        gaps = collections.deque((o, g) for o, g in self._gaps if o >= after)
        for event in self._read_after(after):
            while gaps and gaps[0][0] < event.offset:
                yield from self._surface(gaps.popleft()[1], on_gap)
            if flt.matches(event):
                yield dict(event.obj)
        while gaps:
            yield from self._surface(gaps.popleft()[1], on_gap)

    @staticmethod
    def _surface(gap: Gap, on_gap: Callable[[Gap], Any] | None) -> Iterator[Gap]:
        if on_gap is not None:
            on_gap(gap)
        else:
            yield gap

    def _read_after(self, after: int) -> list[Event]:
        """Every retained event after offset ``after``, through the journal's public
        :meth:`~firehose.journal.IJournal.read` (a memory journal answers at once)."""
        pages: list[list[Event]] = []
        self.journal.read(after, max(0, self.journal.head - after)).addCallback(pages.append)
        return pages[0]

    def _position(self, since: str | None) -> int:
        try:
            where = parse_since(since)
        except CursorError as exc:
            raise RequestError("bad_cursor", str(exc)) from None
        if where == NOW:
            return self.journal.head
        if where == EARLIEST:
            return 0
        assert not isinstance(where, str)
        if where.epoch != self.journal.epoch:
            raise RequestError("bad_cursor", f"{since!r} is not a cursor of this fake firehose")
        return where.offset

    def client(self, url: str = "fake://", filter: Mapping[str, Any] | None = None, since: str | None = None, *,
               on_event: Callable[[dict[str, Any]], Any] | None = None,
               on_gap: Callable[[Gap], Any] | None = None, **fields: Any) -> FakeClient:
        """Drop-in for :class:`firehose.client.FirehoseClient` (``reactor``, ``backoff`` and
        other connection arguments are accepted and ignored)."""
        for name in ("reactor", "backoff", "connect", "ping_interval", "max_queued"):
            fields.pop(name, None)
        client = FakeClient(self, filter_dict(filter, **fields), since, on_event, on_gap)
        self._clients.append(client)
        return client


class FakeClient(Consumer):
    """What :meth:`FakeFirehose.client` returns: the interface of ``FirehoseClient``.

    The user's side (callbacks, ``next()``/``async for``, :attr:`cursor`, :attr:`done`) is the
    real client's own :class:`~firehose.client.consumer.Consumer`; only the source differs: a
    hub subscription in memory instead of a WebSocket.  A cursor the hub refuses (ahead of the
    stream) fails :attr:`done` with :class:`~firehose.client.RequestError`, as the server's
    refusal does for the real client.
    """

    def __init__(self, fake: FakeFirehose, flt: dict[str, list[str]], since: str | None,
                 on_event: Callable[[dict[str, Any]], Any] | None,
                 on_gap: Callable[[Gap], Any] | None) -> None:
        self._since = check_since(since)
        super().__init__(self._since, on_event, on_gap)
        self.fake = fake
        self.filter = flt
        self.connected = False
        self._sub: Subscription | None = None

    def start(self) -> FakeClient:
        if self._sub is None and not self.done.called:
            try:
                self._sub = self.fake.hub.subscribe(self, parse_json(self.filter), self._since, "fake")
            except CursorError as exc:
                self._finish(RequestError("bad_cursor", str(exc)))
                return self
            self.connected = True
            if self.cursor is None:
                self.cursor = self.fake.hub.head_cursor
            self._sub.start()
        return self

    def stop(self) -> defer.Deferred[None]:
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        self.connected = False
        if self in self.fake._clients:
            self.fake._clients.remove(self)
        if self.done.called:
            return self.done
        self._finish(None)
        return defer.succeed(None)

    # The hub's sink.
    def send(self, events: list[Event]) -> None:
        for event in events:
            self._deliver(dict(event.obj))

    def replayed(self, caught_up: bool) -> None:
        """Nothing to do as the replay progresses."""

    def gap(self, gap: dict[str, Any], final: bool) -> None:
        self._gap(Gap(gap))

    def _gap(self, gap: Gap) -> None:
        self._deliver(gap)


def try_push(
    revision: str,
    results: Mapping[str, str],
    *,
    branch: str = "try",
    buildsetid: int = 1,
    first_buildrequestid: int = 1,
    first_buildid: int = 1,
    repository: str = "https://hg.example/try",
    finish: bool | Iterable[str] = True,
    master: str | None = None,
    start_time: float = 1_700_000_000.0,
) -> list[dict[str, Any]]:
    """The events the Buildbot plugin sends for one push built on several builders.

    :param results: builder name -> the result its build ends with (``success``, ``failure``,
        ``retry``: a retried build is followed by a second, successful one).
    :param finish: ``True`` (every build finishes), ``False`` (builds are only queued and
        started) or the builders whose builds finish.
    :returns: events as a master sends them (``type``, ``time``, ``data``, plus ``master`` when
        given); ingest them with ``seq`` numbers, or :meth:`FakeFirehose.emit_all` them.
    """
    stamps = [{"repository": repository, "branch": branch, "revision": revision, "project": "try",
               "codebase": ""}]
    source = {"branch": branch, "revision": revision, "project": "try", "repository": repository}
    finishing = set(results) if finish is True else set() if finish is False else set(finish)
    clock = itertools.count()
    out: list[dict[str, Any]] = []

    def add(type: str, **data: Any) -> None:
        event: dict[str, Any] = {"type": type, "time": start_time + next(clock), "data": data}
        if master is not None:
            event["master"] = master
        out.append(event)

    add("buildset.submitted", buildsetid=buildsetid, reason="try push", scheduler="try", builders=[],
        external_idstring=None, parent_buildid=None, submitted_at=start_time, complete=False, complete_at=None,
        results=None, result=None, sourcestamps=stamps, **source)
    brids = {}
    for i, builder in enumerate(results):
        brid = brids[builder] = first_buildrequestid + i
        add("request.submitted", buildrequestid=brid, buildsetid=buildsetid, builder=builder, builderid=10 + i,
            priority=0, reason="try push", claimed=False, complete=False, submitted_at=start_time,
            results=None, result=None, sourcestamps=stamps, **source)
    buildid = first_buildid
    pending = []
    for i, (builder, result) in enumerate(results.items()):
        attempts = [("retry", 1), ("success", 2)] if result == "retry" else [(result, 1)]
        for attempt, number in attempts:
            bid, buildid = buildid, buildid + 1
            build = {"buildid": bid, "number": number, "builder": builder, "builderid": 10 + i,
                     "buildrequestid": brids[builder], "buildsetid": buildsetid, "worker": "w1",
                     "properties": {"got_revision": revision, "branch": branch}, "sourcestamps": stamps,
                     "url": f"http://buildbot.example/#/builders/{10 + i}/builds/{number}", **source}
            add("request.claimed", buildrequestid=brids[builder], buildsetid=buildsetid, builder=builder,
                claimed=True, complete=False, sourcestamps=stamps, **source)
            add("build.started", **build, complete=False, results=None, result=None, state="building")
            if builder not in finishing:
                pending.append(builder)
                break
            add("build.finished", **build, complete=True, results=_CODES.get(attempt, 2), result=attempt,
                state=attempt)
        else:
            final = "success" if result == "retry" else result
            add("request.completed", buildrequestid=brids[builder], buildsetid=buildsetid, builder=builder,
                claimed=True, complete=True, results=_CODES.get(final, 2), result=final, sourcestamps=stamps,
                **source)
    if not pending:
        worst = max((_CODES.get("success" if r == "retry" else r, 2) for r in results.values()), default=0)
        add("buildset.completed", buildsetid=buildsetid, reason="try push", builders=list(results),
            complete=True, results=worst, result=RESULT_NAMES[worst], sourcestamps=stamps, **source)
    return out


def webhook_request(events: Iterable[Mapping[str, Any]], secret: str, hook: str = "test-hook",
                    now: float | None = None) -> tuple[bytes, dict[str, str]]:
    """A webhook delivery exactly as the server makes it: ``(body, headers)``, signed with
    ``secret``, for testing your receiver."""
    sent_at = int(time.time() if now is None else now)
    body = dumps({"hook": hook, "sent_at": sent_at, "events": list(events)})
    return body, {
        "Content-Type": "application/json",
        "X-Firehose-Hook": hook,
        **signature_headers(secret, body, sent_at),
    }
