"""POST /ingest through the real site, with an in-memory journal and treq's StubTreq."""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from firehose.event import dumps
from firehose.hub import Hub
from firehose.ingest import IngestStats, MasterTokens
from firehose.journal import MemoryJournal
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
        site = build_site(hub=self.hub, journal=self.journal, clock=Clock(), max_body=4096,
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
