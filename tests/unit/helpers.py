"""Builders of valid events and a recording sink, shared by the unit tests."""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource

from firehose.event import Event
from firehose.webhooks.api import WebhookAPI


def make_event(seq: int, master: str = "m1", incarnation: str = "i1", type: str = "build.started",
               builder: str = "linux", **data: Any) -> dict[str, Any]:
    """One event as a master sends it."""
    body = {"buildid": seq, "number": seq, "builder": builder}
    if type.startswith("step."):
        body.update(stepid=seq, name="compile")
    body.update(data)
    return {"master": master, "incarnation": incarnation, "seq": seq, "type": type,
            "time": 1_700_000_000.0 + seq, "data": body}


def batch(first: int, last: int, **kw: Any) -> list[dict[str, Any]]:
    return [make_event(s, **kw) for s in range(first, last + 1)]


class RecordingSink:
    """A hub sink that records what it was given."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.gaps: list[tuple[dict[str, Any], bool]] = []

    def send(self, events: list[Event]) -> None:
        assert events, "the hub must never send an empty list"
        self.events.extend(events)

    def replayed(self, caught_up: bool) -> None:
        """Nothing to do as the replay progresses."""

    def gap(self, gap: dict[str, Any], final: bool) -> None:
        self.gaps.append((gap, final))

    @property
    def seqs(self) -> list[int]:
        return [e.obj["seq"] for e in self.events]

    @property
    def offsets(self) -> list[int]:
        return [e.offset for e in self.events]


class Scenario:
    """Plugin-shaped events for one master, numbered as the plugin would number them."""

    def __init__(self, master: str = "m1", incarnation: str = "i1", start: float = 1_700_000_000.0) -> None:
        self.master, self.incarnation, self.seq, self.now = master, incarnation, 0, start
        self.events: list[dict[str, Any]] = []

    def emit(self, type: str, data: dict[str, Any], at: float | None = None) -> dict[str, Any]:
        self.seq += 1
        if at is not None:
            self.now = at
        event = {"master": self.master, "incarnation": self.incarnation, "seq": self.seq,
                 "type": type, "time": self.now, "data": data}
        self.events.append(event)
        return event

    def take(self) -> list[dict[str, Any]]:
        out, self.events = self.events, []
        return out

    def request(self, verb: str, brid: int, builder: str, revision: str | None = "r1",
                branch: str = "main", at: float | None = None, **extra: Any) -> dict[str, Any]:
        return self.emit(f"request.{verb}", {"buildrequestid": brid, "builder": builder, "buildsetid": brid,
                                             "branch": branch, "revision": revision,
                                             "submitted_at": at if verb == "submitted" else None, **extra}, at)

    def build(self, verb: str, buildid: int, builder: str, revision: str | None = "r1",
              branch: str = "main", result: str | None = None, at: float | None = None,
              started_at: float | None = None, **extra: Any) -> dict[str, Any]:
        codes = {"success": 0, "warnings": 1, "failure": 2, "skipped": 3, "exception": 4,
                 "retry": 5, "cancelled": 6}
        data = {"buildid": buildid, "number": buildid, "builder": builder, "branch": branch,
                "revision": revision, "worker": "w1", "buildrequestid": buildid,
                "started_at": started_at, "result": result,
                "results": codes[result] if result else None,
                "complete_at": at if verb == "finished" else None, **extra}
        return self.emit(f"build.{verb}", data, at)

    def step(self, verb: str, stepid: int, buildid: int, builder: str, name: str, started_at: float,
             complete_at: float | None = None, **extra: Any) -> dict[str, Any]:
        data = {"stepid": stepid, "buildid": buildid, "build_number": buildid, "builder": builder,
                "name": name, "number": stepid, "started_at": started_at, "complete_at": complete_at,
                "duration": (complete_at - started_at) if complete_at is not None else None, **extra}
        return self.emit(f"step.{verb}", data, complete_at or started_at)


class HeldReads:
    """Makes a journal's reads wait until the test releases them, one at a time, oldest first.

    :param snapshot: the page is what the journal held when the read was *queued* (as with the
        SQLite reader thread, which reads up to the head of that moment); otherwise it is read
        when released (to let the test change the journal, e.g. trim it, in between).
    """

    def __init__(self, journal: Any, snapshot: bool = True) -> None:
        from twisted.internet import defer

        self.pending: list[defer.Deferred[Any]] = []
        real = journal.read

        def read(after: int, limit: int) -> defer.Deferred[Any]:
            held: defer.Deferred[Any] = defer.Deferred()
            self.pending.append(held)
            if snapshot:
                page = real(after, limit)
                return held.addCallback(lambda _: page)
            return held.addCallback(lambda _: real(after, limit))

        journal.read = read

    def release(self) -> bool:
        """Let the oldest waiting read finish; False when none was waiting."""
        if not self.pending:
            return False
        self.pending.pop(0).callback(None)
        return True

    def release_all(self, at_most: int = 100) -> None:
        """Release reads (including those the released ones start) until none waits."""
        for _ in range(at_most):
            if not self.release():
                return
        raise AssertionError(f"reads still waiting after {at_most} releases")


def webhook_site(dispatcher: Any, admin_token: str | None) -> Resource:
    """A site holding only ``/api/webhooks`` for ``dispatcher`` (the server's own is built by
    ``firehose.web.build_site``)."""
    root, api = Resource(), Resource()
    root.putChild(b"api", api)
    api.putChild(b"webhooks", WebhookAPI(dispatcher, admin_token))
    return root
