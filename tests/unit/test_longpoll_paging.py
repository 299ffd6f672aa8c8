"""Long-poll paging: ``limit`` honoured from history, ``more``/``head`` in every answer, and
``while more: poll(since=cursor)`` yielding exactly the matching events, in order, once.

Driven through :class:`PollResource` with StubTreq, a real :class:`Hub` and a
:class:`MemoryJournal` (whose reads finish at once), on a :class:`Clock`: no sockets, no sleeps.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any
from urllib.parse import urlencode

from hypothesis import given
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from firehose.hub import Hub
from firehose.journal import MemoryJournal, Retention
from firehose.transports.longpoll import PollResource
from tests.unit.helpers import HeldReads, make_event


class _Poller:
    """A hub on a memory journal behind ``/poll``; :meth:`poll` answers one request."""

    def __init__(self, case: SynchronousTestCase, page_size: int = 500, max_scan: int = 2000,
                 max_limit: int = 1000, retention: Retention | None = None) -> None:
        self.case = case
        self.clock = Clock()
        self.journal = MemoryJournal(epoch="e1", retention=retention)
        self.hub = Hub(self.journal, page_size=page_size, max_pending=10_000)
        self.client = StubTreq(PollResource(self.hub, self.clock, max_scan=max_scan, max_limit=max_limit))
        self.seq = 0

    def append(self, *data: dict[str, Any]) -> None:
        """Journal one event per ``data`` (its builder, result, ...), in one batch."""
        events = []
        for d in data:
            self.seq += 1
            events.append(make_event(self.seq, **d))
        self.case.successResultOf(self.journal.append(events))

    def request(self, **query: Any) -> Any:
        return self.client.get("http://firehose.test/poll?" + urlencode(query))

    def answer(self, d: Any) -> dict[str, Any]:
        self.client.flush()
        response = self.case.successResultOf(d)
        self.case.assertEqual(response.code, 200)
        return self.case.successResultOf(response.json())  # type: ignore[no-any-return]

    def poll(self, **query: Any) -> dict[str, Any]:
        """One poll with ``timeout=0``: answered from history at once, or when the clock lets
        its (zero) wait for live events end."""
        d = self.request(timeout=0, **query)
        self.client.flush()
        self.clock.advance(0)  # nothing to run if it was answered from history
        return self.answer(d)

    def idle(self) -> bool:
        """No timer and no subscription left behind."""
        return not self.clock.getDelayedCalls() and self.hub.stats.subscribers["longpoll"] == 0


def _seqs(answer: dict[str, Any]) -> list[int]:
    return [e["seq"] for e in answer["events"]]


class LimitTests(SynchronousTestCase):
    def test_limit_beyond_one_slice_is_honoured(self) -> None:
        """An answer from history holds ``limit`` events, not one slice of 64 (the hub hands the
        sink a page in slices; the poll gathers them)."""
        p = _Poller(self)
        p.append(*[{}] * 300)
        answer = p.poll(since="earliest", limit=200)
        self.assertEqual(_seqs(answer), list(range(1, 201)))
        self.assertEqual((answer["cursor"], answer["more"], answer["head"]), ("e1:200", True, "e1:300"))
        self.assertTrue(p.idle())

    def test_limit_spans_replay_pages(self) -> None:
        """``limit`` is gathered across several replay pages, up to the documented maximum."""
        p = _Poller(self, page_size=10)
        p.append(*[{}] * 1500)
        answer = p.poll(since="earliest", limit=1000)
        self.assertEqual(_seqs(answer), list(range(1, 1001)))
        self.assertEqual((answer["cursor"], answer["more"]), ("e1:1000", True))
        rest = p.poll(since=answer["cursor"], limit=1000)
        self.assertEqual(_seqs(rest), list(range(1001, 1501)))
        self.assertEqual((rest["cursor"], rest["more"], rest["head"]), ("e1:1500", False, "e1:1500"))

    def test_selective_filter_cursor_moves_past_unmatched_events(self) -> None:
        """A filter that matches little, far behind the head, answers after ``max_scan`` events
        with what it found, ``more`` and a cursor past everything examined, so the next poll
        makes progress instead of rescanning."""
        p = _Poller(self, page_size=50, max_scan=200)
        p.append(*[{"result": "failure" if i % 97 == 0 else "success"} for i in range(1, 1001)])
        first = p.poll(since="earliest", result="failure")
        self.assertEqual(_seqs(first), [97, 194])
        self.assertEqual((first["cursor"], first["more"], first["head"]), ("e1:200", True, "e1:1000"))
        second = p.poll(since=first["cursor"], result="failure")
        self.assertEqual(_seqs(second), [291, 388])
        self.assertEqual(second["cursor"], "e1:400")

    def test_selective_filter_pages_to_every_match(self) -> None:
        """The README's ``since=earliest&result=failure``, paged with ``while more``, returns
        every failure, not the few of the first page."""
        p = _Poller(self, page_size=500)
        p.append(*[{"result": "failure" if i % 100 == 0 else "success"} for i in range(1, 5001)])
        answer = p.poll(since="earliest", result="failure")
        got = _seqs(answer)
        polls = 1
        while answer["more"]:
            answer = p.poll(since=answer["cursor"], result="failure")
            got += _seqs(answer)
            polls += 1
        self.assertEqual(got, list(range(100, 5001, 100)))
        self.assertEqual(polls, 3)  # 5000 events examined 2000 at a time
        self.assertEqual(answer["cursor"], "e1:5000")


class MoreAndHeadTests(SynchronousTestCase):
    def test_empty_stream(self) -> None:
        """An empty stream: no events, the cursor and head at 0, nothing more."""
        p = _Poller(self)
        self.assertEqual(p.poll(since="earliest"), {"events": [], "cursor": "e1:0", "more": False, "head": "e1:0"})
        self.assertTrue(p.idle())

    def test_partial_answer_is_caught_up(self) -> None:
        """Fewer matches than ``limit``: all of them, the cursor at the head (past the unmatched
        last events), ``more`` false."""
        p = _Poller(self, page_size=4)
        p.append({"builder": "mac"}, {}, {"builder": "mac"}, {}, {})
        answer = p.poll(since="earliest", builder="mac", limit=10)
        self.assertEqual(_seqs(answer), [1, 3])
        self.assertEqual((answer["cursor"], answer["more"], answer["head"]), ("e1:5", False, "e1:5"))

    def test_exact_limit_at_the_head(self) -> None:
        """Exactly ``limit`` matches, the last of them the head: caught up."""
        p = _Poller(self, page_size=4)
        p.append(*[{}] * 6)
        answer = p.poll(since="earliest", limit=6)
        self.assertEqual(_seqs(answer), [1, 2, 3, 4, 5, 6])
        self.assertEqual((answer["cursor"], answer["more"]), ("e1:6", False))

    def test_exact_limit_with_events_after_it(self) -> None:
        """Exactly ``limit`` matches with unexamined events after the last: ``more`` says so, and
        the next poll finds nothing more and is caught up."""
        p = _Poller(self, page_size=2)
        p.append({"builder": "mac"}, {"builder": "mac"}, {}, {}, {})
        answer = p.poll(since="earliest", builder="mac", limit=2)
        self.assertEqual(_seqs(answer), [1, 2])
        self.assertEqual((answer["cursor"], answer["more"], answer["head"]), ("e1:2", True, "e1:5"))
        rest = p.poll(since=answer["cursor"], builder="mac", limit=2)
        self.assertEqual(rest, {"events": [], "cursor": "e1:5", "more": False, "head": "e1:5"})

    def test_caught_up_poll_is_answered_by_a_live_event(self) -> None:
        """A caught-up poll waits; the first matching live event answers it, caught up, with
        the new head; unmatched live events move the cursor without answering."""
        p = _Poller(self)
        p.append({})
        d = p.request(since="e1:1", builder="mac", timeout=30)
        p.client.flush()
        self.assertNoResult(d)
        p.append({"builder": "linux"})
        p.client.flush()
        self.assertNoResult(d)
        p.append({"builder": "linux"}, {"builder": "mac"})
        answer = p.answer(d)
        self.assertEqual(_seqs(answer), [4])
        self.assertEqual((answer["cursor"], answer["more"], answer["head"]), ("e1:4", False, "e1:4"))
        self.assertTrue(p.idle())

    def test_live_batch_beyond_limit_says_more(self) -> None:
        """A live batch larger than ``limit`` is cut at the limit: the cursor names the last
        event returned and ``more`` is true, so the rest comes with the next poll."""
        p = _Poller(self)
        d = p.request(limit=3, timeout=30)
        p.client.flush()
        p.append(*[{}] * 5)
        answer = p.answer(d)
        self.assertEqual(_seqs(answer), [1, 2, 3])
        self.assertEqual((answer["cursor"], answer["more"], answer["head"]), ("e1:3", True, "e1:5"))
        self.assertEqual(_seqs(p.poll(since=answer["cursor"])), [4, 5])

    def test_timeout_while_caught_up(self) -> None:
        """A wait that times out answers empty, caught up, at the head."""
        p = _Poller(self)
        p.append({}, {})
        d = p.request(since="e1:2", timeout=5)
        p.client.flush()
        p.clock.advance(5)
        self.assertEqual(p.answer(d), {"events": [], "cursor": "e1:2", "more": False, "head": "e1:2"})

    def test_gap_answer_says_more(self) -> None:
        """A gap (a cursor of another journal) is answered with no events, the cursor to resume
        from, and ``more`` when there are events after it."""
        p = _Poller(self)
        p.append({}, {})
        answer = p.poll(since="zz:9")
        self.assertEqual(answer["gap"]["reason"], "epoch")
        self.assertEqual((answer["events"], answer["cursor"], answer["more"], answer["head"]),
                         ([], "e1:0", True, "e1:2"))
        self.assertEqual(_seqs(p.poll(since=answer["cursor"])), [1, 2])

    def test_expired_gap_after_gathered_events(self) -> None:
        """Events gathered before retention removes the ones after them are answered first,
        with the cursor before the hole; the next poll from there is told of the gap."""
        p = _Poller(self, page_size=3, retention=Retention(max_age=None, max_events=4))
        p.append(*[{}] * 10)
        reads = HeldReads(p.journal, snapshot=False)
        d = p.request(since="earliest", timeout=0, limit=100)
        self.assertTrue(reads.release())  # the first page: 1..3, and the second is queued
        self.assertEqual(self.successResultOf(p.journal.trim()), 6)  # 1..6 go meanwhile
        self.assertTrue(reads.release())
        answer = p.answer(d)
        self.assertEqual(_seqs(answer), [1, 2, 3])
        self.assertEqual((answer["cursor"], answer["more"], answer["head"]), ("e1:3", True, "e1:10"))
        gap = p.poll(since=answer["cursor"])
        self.assertEqual((gap["events"], gap["gap"]["reason"], gap["cursor"], gap["more"]),
                         ([], "expired", "e1:6", True))
        self.assertTrue(p.idle())


# --------------------------------------------------------------------------------------------
# Generated: paging from earliest with `while more` is the stream, filtered, exactly once
# --------------------------------------------------------------------------------------------

BUILDERS = ["linux", "linux-arm", "mac", "win"]
RESULTS = [None, "success", "failure", "warnings"]

journals = st.lists(st.tuples(st.sampled_from(BUILDERS), st.sampled_from(RESULTS)), max_size=120)
filters = st.fixed_dictionaries({}, optional={
    "builder": st.sampled_from(["linux", "linux*", "mac", "*", "nomatch"]),
    "result": st.sampled_from(["failure", "success", "warnings"]),
})


def _matches(flt: dict[str, str], builder: str, result: str | None) -> bool:
    """The reference: what the filter language says, written independently of firehose.filters."""
    if "builder" in flt and not fnmatch.fnmatchcase(builder, flt["builder"]):
        return False
    return "result" not in flt or result == flt["result"]


class PagingPropertyTests(SynchronousTestCase):
    @given(journal=journals, flt=filters, limit=st.integers(1, 20), page_size=st.integers(1, 12),
           max_scan=st.integers(1, 40), batch=st.integers(1, 30))
    def test_while_more_pages_exactly_the_matching_events(
        self, journal: list[tuple[str, str | None]], flt: dict[str, str], limit: int,
        page_size: int, max_scan: int, batch: int,
    ) -> None:
        """For any journal, filter, limit, page size and scan budget, ``while more`` from
        ``earliest`` yields exactly the matching events, in order, once; ends caught up at the
        head; and takes at most one poll per ``limit`` matches plus one per ``max_scan`` events
        examined (rounded up to whole pages), plus one."""
        p = _Poller(self, page_size=page_size, max_scan=max_scan, max_limit=20)
        records = [{"builder": b} if r is None else {"builder": b, "result": r} for b, r in journal]
        for i in range(0, len(records), batch):
            p.append(*records[i:i + batch])
        want = [i + 1 for i, (b, r) in enumerate(journal) if _matches(flt, b, r)]
        scanned_per_poll = math.ceil(max_scan / page_size) * page_size
        bound = math.ceil(len(want) / limit) + math.ceil(len(journal) / scanned_per_poll) + 1

        got: list[int] = []
        answer = p.poll(since="earliest", limit=limit, **flt)
        polls = 1
        got += _seqs(answer)
        while answer["more"]:
            self.assertLessEqual(polls, bound, "paging did not terminate in time")
            answer = p.poll(since=answer["cursor"], limit=limit, **flt)
            polls += 1
            self.assertLessEqual(len(answer["events"]), limit)
            got += _seqs(answer)
        self.assertEqual(got, want)
        self.assertLessEqual(polls, bound)
        head = f"e1:{len(journal)}"
        self.assertEqual((answer["cursor"], answer["head"]), (head, head))
        self.assertTrue(p.idle())
