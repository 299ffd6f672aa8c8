"""POST /ingest with generated bodies: any JSON, near-valid batches with one field mutated, raw
bytes.  Whatever arrives, the answer is a 2xx, or a 4xx whose JSON body names the problem; never
a 5xx, never a request left hanging; a refused batch changes nothing, and a good batch from
another master is accepted right after it (one bad batch never wedges ingest for the others).

The real site runs over treq's StubTreq, against a MemoryJournal and against an SQLiteJournal in
a temporary directory whose threads are replaced by a synchronous stand-in (so each example is
answered before the next starts, without a reactor).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from firehose.hub import Hub
from firehose.ingest import IngestStats, MasterTokens
from firehose.journal import MemoryJournal, Retention, SQLiteJournal
from firehose.web import build_site
from tests.unit.helpers import make_event

URL = "http://firehose.test/ingest"
TOKENS = {"m1": "tok1", "m2": "tok2"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def deep(depth: int, leaf: Any = 1) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


#: Values that break a field's type or range: huge and negative integers, floats, booleans for
#: integers, long strings, wrong types, nesting past any limit.
bad_values = st.one_of(
    st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, 10**30, -(2**63) - 1,
                     1.0, 5.0, 1.5, 1e300, -0.0, True, False, None, "", "1", [], {}, [1], {"a": 1}]),
    st.text(min_size=60, max_size=300),
    st.integers(min_value=20, max_value=400).map(deep),
    st.integers(min_value=20, max_value=400).map(lambda n: {"x": deep(n)}),
    json_values,
)

FIELDS = ("master", "incarnation", "seq", "type", "time", "data")


@st.composite
def near_valid(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A valid batch of master m1 with up to three mutations applied."""
    start = draw(st.integers(min_value=1, max_value=30))
    types = st.sampled_from(["build.started", "step.started", "master.heartbeat", "log.lines"])
    events = [make_event(start + i, type=draw(types), lines=["a"])
              for i in range(draw(st.integers(min_value=1, max_value=5)))]
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        i = draw(st.integers(min_value=0, max_value=len(events) - 1))
        event = events[i]
        how = draw(st.sampled_from(
            ["set", "set_data", "deep_data", "deep_data", "drop", "extra", "swap", "duplicate", "reverse"]))
        if how == "set":
            event[draw(st.sampled_from(FIELDS))] = draw(bad_values)
        elif how == "set_data":
            if isinstance(event.get("data"), dict):
                key = draw(st.sampled_from(["builder", "buildid", "number", "properties", "state",
                                            "lines", "stepid", "name", "x"]))
                event["data"][key] = draw(bad_values)
        elif how == "deep_data":
            if isinstance(event.get("data"), dict):
                # Around the limit (32 levels, data.properties.p at level 4) and the encoder's (~254).
                depth = draw(st.sampled_from([27, 28, 29, 60, 249, 250, 251, 252, 300]))
                event["data"]["properties"] = {"p": deep(depth)}
        elif how == "drop":
            event.pop(draw(st.sampled_from(FIELDS)), None)
        elif how == "extra":
            event[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
        elif how == "swap" and len(events) > 1:
            j = draw(st.integers(min_value=0, max_value=len(events) - 1))
            events[i], events[j] = events[j], events[i]
        elif how == "duplicate":
            events.insert(i, dict(event))
        elif how == "reverse":
            events.reverse()
    return events


def encode(value: Any) -> bytes:
    """JSON text of ``value`` (the standard library: it writes integers of any size)."""
    return json.dumps(value).encode()


bodies = st.one_of(
    near_valid().map(encode),
    near_valid().map(encode),
    near_valid().map(encode),
    json_values.map(encode),
    st.binary(max_size=200),
    near_valid().flatmap(lambda b: st.integers(0, len(encode(b))).map(lambda n: encode(b)[:n])),
)


class _SyncPool:
    """A thread pool that runs the work at once, in the calling thread."""

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any, **kw: Any) -> None:
        try:
            result = f(*args, **kw)
        except Exception:
            on_result(False, Failure())
        else:
            on_result(True, result)

    def stop(self) -> None:
        """Nothing to stop."""


class _SyncReactor:
    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        f(*args, **kw)


#: The contract's tests run from two TestCase classes (one per journal), which Hypothesis flags
#: as "differing executors"; each class builds its own site in setUp, so nothing is shared.
shared_contract = settings(suppress_health_check=[HealthCheck.differing_executors, HealthCheck.too_slow])


class IngestPropertyContract:
    """Mixed into a SynchronousTestCase that defines ``make_journal()``."""

    def make_journal(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.journal = self.make_journal()
        self.hub = Hub(self.journal)
        self.published: list[int] = []
        self.journal.listen(lambda events: self.published.extend(e.offset for e in events))
        site = build_site(hub=self.hub, journal=self.journal, clock=Clock(), max_body=64 * 1024,
                          tokens=MasterTokens(TOKENS), ingest_stats=IngestStats())
        self.client = StubTreq(site.resource)
        self.m2_seq = 0

    def post(self, body: bytes, token: str) -> tuple[int, Any]:
        d = self.client.post(URL, data=body, headers={"Authorization": [f"Bearer {token}"]})
        self.client.flush()
        response = self.successResultOf(d)  # fails if the answer never came: a hang
        raw = self.successResultOf(response.content())
        return response.code, json.loads(raw)

    def check(self, body: bytes) -> None:
        before = (self.journal.head, self.journal.last_seqs(), list(self.published))
        code, answer = self.post(body, TOKENS["m1"])
        event(f"{code} {answer.get('error', '')}")  # the mix of answers, in --hypothesis-show-statistics
        self.assertTrue(200 <= code < 300 or 400 <= code < 500, (code, answer, body[:300]))
        if code >= 400:
            self.assertIsInstance(answer.get("error"), str, answer)
            self.assertTrue(isinstance(answer.get("message"), str) and answer["message"], answer)
            self.assertEqual((self.journal.head, self.journal.last_seqs(), self.published), before)
        self.m2_seq += 1
        code, answer = self.post(encode([make_event(self.m2_seq, master="m2")]), TOKENS["m2"])
        self.assertEqual((code, answer.get("accepted")), (200, 1), answer)

    @shared_contract
    @given(bodies)
    @example(encode([make_event(1, properties={"p": deep(300)})]))  # the encoder's limit
    @example(encode([make_event(1, properties={"p": deep(30)})]))  # the door's limit
    @example(encode([make_event(2**63)]))  # past SQLite's INTEGER
    @example(encode([make_event(2**64 + 1)]))  # decoded as a float
    @example(encode([make_event(5.0)]))  # type: ignore[arg-type]
    @example(encode([make_event(2), make_event(1)]))  # out of order
    @example(encode([make_event(1), make_event(1)]))  # a duplicate within the batch
    def test_any_body_gets_a_2xx_or_a_4xx_naming_the_problem(self, body: bytes) -> None:
        """Generated bodies (near-valid batches, any JSON, raw bytes, truncated batches) are
        answered 2xx or 4xx with an ``error`` and a ``message``, never 5xx and never left
        hanging; a refused one leaves the head, the masters' seqs and the published events as
        they were; another master's good batch is accepted right after."""
        self.check(body)

    @shared_contract
    @given(near_valid())
    def test_an_accepted_batch_is_stored_whole_and_in_order(self, events: list[dict[str, Any]]) -> None:
        """A near-valid batch that is accepted had every event stored or counted as a
        duplicate: accepted + duplicates is the batch's length (no event silently dropped), and
        the journal's head and the published events moved by exactly the accepted count."""
        head, published = self.journal.head, len(self.published)
        code, answer = self.post(encode(events), TOKENS["m1"])
        self.assertLess(code, 500, answer)
        event(f"{code}")  # how often the stored-whole branch below runs, in --hypothesis-show-statistics
        if code == 200:
            self.assertEqual(answer["accepted"] + answer["duplicates"], len(events))
            self.assertEqual(self.journal.head - head, answer["accepted"], answer)
            self.assertEqual(len(self.published) - published, answer["accepted"], answer)


class MemoryIngestPropertyTests(IngestPropertyContract, SynchronousTestCase):
    def make_journal(self) -> MemoryJournal:
        return MemoryJournal(epoch="e1")


class SQLiteIngestPropertyTests(IngestPropertyContract, SynchronousTestCase):
    def make_journal(self) -> SQLiteJournal:
        directory = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.remove(os.path.join(directory, f)) for f in os.listdir(directory)])
        journal = SQLiteJournal(os.path.join(directory, "j.sqlite"), reactor=_SyncReactor(),
                                retention=Retention(max_age=None, max_events=None), synchronous="OFF")
        journal._writer.stop()
        journal._reader.stop()
        journal._writer = journal._reader = _SyncPool()  # type: ignore[assignment]
        self.addCleanup(journal.close)
        return journal
