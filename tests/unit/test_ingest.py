"""POST /ingest through the real site, with an in-memory journal and treq's StubTreq."""

from __future__ import annotations

import io
import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from firehose.event import dumps
from firehose.hub import Hub
from firehose.ingest import IngestResource, IngestStats, MasterTokens
from firehose.journal import AppendResult, MemoryJournal
from firehose.web import build_site
from tests.unit.helpers import batch, make_event

URL = "http://firehose.test/ingest"


class IngestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.journal = MemoryJournal(epoch="e1")
        self.hub = Hub(self.journal)
        self.published: list[int] = []
        self.journal.listen(lambda events: self.published.extend(e.offset for e in events))
        self.stats = IngestStats()
        self.clock = Clock()
        site = build_site(hub=self.hub, journal=self.journal, clock=self.clock, max_body=4096,
                          tokens=MasterTokens({"m1": "tok1", "m2": "tok2"}), ingest_stats=self.stats)
        self.client = StubTreq(site.resource)

    def post(self, body: Any, token: str | None = "tok1", raw: bool = False) -> tuple[int, Any]:
        headers = {"Content-Type": ["application/json"]}
        if token is not None:
            headers["Authorization"] = [f"Bearer {token}"]
        data = body if raw else dumps(body)
        response = self.successResultOf(self.client.post(URL, data=data, headers=headers))
        return response.code, self.successResultOf(response.json())

    def assert_rejected(self, code: int, error: str, body: Any, **kw: Any) -> dict[str, Any]:
        got_code, answer = self.post(body, **kw)
        self.assertEqual((got_code, answer["error"]), (code, error), answer)
        self.assertTrue(answer["message"])
        self.assertEqual((self.journal.head, self.published), (0, []))
        return answer

    def test_accepts_and_acknowledges_with_cursor(self) -> None:
        """A valid batch is journaled, published and answered with counts and the cursor."""
        code, answer = self.post(batch(1, 3))
        self.assertEqual((code, answer), (200, {"accepted": 3, "duplicates": 0, "cursor": "e1:3"}))
        self.assertEqual(self.published, [1, 2, 3])

    def test_retry_is_acknowledged_but_not_published_again(self) -> None:
        """Resending an acknowledged batch answers 200 with every event a duplicate."""
        self.post(batch(1, 3))
        code, answer = self.post(batch(1, 3))
        self.assertEqual((code, answer["accepted"], answer["duplicates"]), (200, 0, 3))
        self.assertEqual(self.published, [1, 2, 3])

    def test_malformed_json(self) -> None:
        """A body that is not JSON is a 400 naming the parse error."""
        self.assert_rejected(400, "malformed_json", b"[{", raw=True)

    def test_wrong_schema(self) -> None:
        """Schema violations are 422s that say where the problem is."""
        answer = self.assert_rejected(422, "schema", [make_event(1), {**make_event(2), "seq": "two"}])
        self.assertIn("batch[1].seq", answer["message"])
        self.assert_rejected(422, "schema", [])
        self.assert_rejected(422, "schema", {"not": "a list"})
        no_builder = make_event(1)
        del no_builder["data"]["builder"]
        self.assert_rejected(422, "schema", [no_builder])

    def test_limits_are_checked_at_the_door(self) -> None:
        """Each limit the journal or the encoder has is a 422 whose code and message name the
        limit and the offending path, before anything reaches the journal."""
        def deep(n: int) -> Any:
            value: Any = 1
            for _ in range(n):
                value = [value]
            return value

        cases: list[tuple[list[dict[str, Any]], str, str]] = [
            ([make_event(1, properties={"p": deep(300)})], "too_deep", "batch[0].data.properties.p[0]"),
            ([make_event(1), make_event(2, x=deep(31))], "too_deep", "batch[1].data.x"),
            ([make_event(2**63)], "schema", "batch[0].seq must be smaller than or equal to 9223372036854775807"),
            ([make_event(2**64 + 1)], "schema", "batch[0].seq"),
            ([make_event(1), {**make_event(2), "seq": 2.0}], "schema", "batch[1].seq must be an integer"),
            ([{**make_event(1), "time": 2.0**60}], "schema", "batch[0].time"),
            ([make_event(1), make_event(3), make_event(2)], "seq_order", "batch[2].seq is 2, not above 3"),
            ([make_event(1), make_event(1)], "seq_order", "batch[1].seq is 1"),
            ([{**make_event(1), "incarnation": "i" * 65}], "schema", "batch[0].incarnation"),
        ]
        for body, error, where in cases:
            # The standard library's encoder writes any integer and any depth; orjson would not.
            answer = self.assert_rejected(422, error, json.dumps(body).encode(), raw=True)
            self.assertIn(where, answer["message"])
        code, answer = self.post(batch(1, 1) + batch(1, 1, incarnation="i2"))
        self.assertEqual((code, answer["accepted"]), (200, 2))  # seqs are ordered per incarnation

    def test_too_many_events(self) -> None:
        """A batch of more events than the limit is a 422 naming the limit."""
        journal = MemoryJournal(epoch="e1")
        site = build_site(hub=Hub(journal), journal=journal, clock=Clock(), max_body=4 * 1024 * 1024,
                          tokens=MasterTokens({"m1": "tok1"}))
        client = StubTreq(site.resource)
        events = [{**make_event(s), "data": {}, "type": "master.heartbeat"} for s in range(1, 10_002)]
        response = self.successResultOf(client.post(URL, data=dumps(events),
                                                    headers={"Authorization": ["Bearer tok1"]}))
        answer = self.successResultOf(response.json())
        self.assertEqual((response.code, answer["error"]), (422, "schema"))
        self.assertIn("10000", answer["message"])
        self.assertEqual(journal.head, 0)

    def test_oversized_body(self) -> None:
        """A body over the limit is a 413, whatever it contains."""
        self.assert_rejected(413, "too_large", batch(1, 40))

    def test_missing_and_wrong_token(self) -> None:
        """No token or an unknown token is a 401."""
        self.assert_rejected(401, "unauthorized", batch(1, 1), token=None)
        self.assert_rejected(401, "unauthorized", batch(1, 1), token="nope")

    def test_token_of_another_master(self) -> None:
        """A master may only publish its own events: 403 naming both masters."""
        answer = self.assert_rejected(403, "wrong_master", batch(1, 1, master="m2"))
        self.assertIn("'m1'", answer["message"])
        answer = self.assert_rejected(403, "wrong_master", batch(1, 1, master="m9"))
        self.assertIn("unknown master 'm9'", answer["message"])

    def test_journal_failure_is_503(self) -> None:
        """When the journal cannot store, ingest answers 503 and acknowledges nothing."""
        self.journal.fail_writes = OSError("disk full")
        code, answer = self.post(batch(1, 2))
        self.assertEqual((code, answer["error"]), (503, "unavailable"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.journal.fail_writes = None
        code, answer = self.post(batch(1, 2))
        self.assertEqual((code, answer["accepted"]), (200, 2))

    def test_rejections_are_counted(self) -> None:
        """Every rejection reason shows up in the ingest stats."""
        self.post(b"nope", raw=True)
        self.post(batch(1, 1), token="bad")
        self.assertEqual(dict(self.stats.rejected), {"malformed_json": 1, "unauthorized": 1})

    def test_arrival_is_timed_by_the_site_clock(self) -> None:
        """A master's last accepted batch is dated by the clock the site was built with."""
        self.clock.advance(1234.5)
        self.post(batch(1, 1))
        self.assertEqual(self.stats.last_received, {"m1": 1234.5})


class _HeldJournal:
    """A journal whose one append answers only when the test says so."""

    epoch = "e1"
    head = 0

    def append(self, batch: Any) -> defer.Deferred[AppendResult]:
        self.answer: defer.Deferred[AppendResult] = defer.Deferred()
        return self.answer


class ClientGoneTests(SynchronousTestCase):
    def test_client_gone_before_the_batch_is_durable(self) -> None:
        """A master that hung up while its batch was being stored is written nothing (the
        batch is stored all the same), and nothing fails: ingest hears of the lost
        connection through ``notifyFinish``."""
        journal = _HeldJournal()
        resource = IngestResource(journal, MasterTokens({"m1": "tok1"}), 4096, IngestStats(), Clock())
        request = DummyRequest([b""])
        request.method = b"POST"
        request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer tok1"])
        request.content = io.BytesIO(dumps(batch(1, 1)))
        self.assertEqual(resource.render(request), NOT_DONE_YET)
        request.processingFailed(Failure(ConnectionDone()))  # what a lost connection does to it
        journal.answer.callback(AppendResult())
        self.assertEqual((request.written, request.finished), ([], 0))
