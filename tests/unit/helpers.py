"""Builders of valid events and a recording sink, shared by the unit tests."""

from __future__ import annotations

from typing import Any

from firehose.event import Event


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

    def gap(self, gap: dict[str, Any], final: bool) -> None:
        self.gaps.append((gap, final))

    @property
    def seqs(self) -> list[int]:
        return [e.obj["seq"] for e in self.events]

    @property
    def offsets(self) -> list[int]:
        return [e.offset for e in self.events]
