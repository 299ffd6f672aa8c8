"""Journal faults: a batch the journal cannot write fails alone, storage faults are named and
reported as health, the writer recovers, and an empty journal file is not reset silently."""

from __future__ import annotations

import json
import os
from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from firehose.event import Event, dumps
from firehose.hub import Hub
from firehose.ingest import IngestStats, MasterTokens
from firehose.journal import JournalError, MemoryJournal, Retention, SQLiteJournal, UnstorableBatch
from firehose.web import build_site
from tests.unit.helpers import batch, make_event


def nested(depth: int) -> Any:
    """A list nested ``depth`` levels deep: orjson decodes it, but refuses to encode ~255 levels."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def hold_first_write(journal: Any) -> defer.Deferred[None]:
    """Make the journal's next write wait until the returned Deferred fires, so that the batches
    appended meanwhile are written together, in one group commit."""
    real = journal._store
    gate: defer.Deferred[None] = defer.Deferred()

    def store(events: list[Event]) -> defer.Deferred[None]:
        journal._store = real
        return gate.addCallback(lambda _: real(events))

    journal._store = store
    return gate


class GroupIsolationContract:
    """Mixed into a TestCase that defines ``make_journal()``: a group commit in which one
    master's batch cannot be written fails that batch alone."""

    timeout = 30  # a bound for a writer that hangs, never a measured duration

    def make_journal(self) -> Any:
        raise NotImplementedError

    def unwritable_batch(self) -> list[dict[str, Any]]:
        """A batch (of master m2) that the door would refuse, given straight to the journal."""
        return [make_event(1, master="m2", properties={"deep": nested(300)})]

    @defer.inlineCallbacks
    def test_unwritable_batch_fails_alone_in_its_group(self) -> Any:
        """Two masters' batches wait for the same group commit and one cannot be written: the
        other is acknowledged, stored and published, the bad one fails as unstorable (not as a
        storage fault), the writer is not left busy and a later append is stored after it."""
        journal = self.make_journal()
        self.addCleanup(journal.close)
        heard: list[int] = []
        journal.listen(lambda events: heard.extend(e.obj["seq"] for e in events))
        gate = hold_first_write(journal)
        first = journal.append(batch(1, 1, master="m0"))
        good = journal.append(batch(1, 3))
        bad = journal.append(self.unwritable_batch())
        gate.callback(None)
        yield first
        result = yield good
        self.assertEqual([e.offset for e in result.accepted], [2, 3, 4])
        failure = yield self.assertFailure(bad, UnstorableBatch)
        self.assertIn("cannot store this batch", str(failure))
        self.flushLoggedErrors()
        yield journal._when_idle()  # the writer is free again (it hung here before)
        self.assertTrue(journal.write_health.writable)
        self.assertEqual(journal.last_seqs(), {"m0": ("i1", 1), "m1": ("i1", 3)})
        later = yield journal.append(batch(4, 4) + batch(1, 1, master="m2"))
        self.assertEqual([e.offset for e in later.accepted], [5, 6])
        stored = yield journal.read(0, 100)
        self.assertEqual([(e.obj["master"], e.obj["seq"]) for e in stored],
                         [("m0", 1), ("m1", 1), ("m1", 2), ("m1", 3), ("m1", 4), ("m2", 1)])
        self.assertEqual(heard, [1, 1, 2, 3, 4, 1])


class MemoryGroupIsolationTests(GroupIsolationContract, TestCase):
    def make_journal(self) -> MemoryJournal:
        return MemoryJournal(epoch="e1")


class SQLiteGroupIsolationTests(GroupIsolationContract, TestCase):
    def make_journal(self) -> SQLiteJournal:
        path = os.path.join(self.mktemp(), "j.sqlite")
        os.makedirs(os.path.dirname(path))
        return SQLiteJournal(path, retention=Retention(max_age=None, max_events=None))


class SQLiteStoreIsolationTests(SQLiteGroupIsolationTests):
    def unwritable_batch(self) -> list[dict[str, Any]]:
        """A seq SQLite cannot store (past a signed 64-bit INTEGER): it fails inside the
        commit, not while encoding, so the group commit must be retried a batch at a time."""
        return [make_event(2**63, master="m2")]


class DiskFullTests(TestCase):
    """A full disk, simulated with ``PRAGMA max_page_count`` on the writer's connection."""

    timeout = 30

    def setUp(self) -> None:
        path = os.path.join(self.mktemp(), "j.sqlite")
        os.makedirs(os.path.dirname(path))
        self.journal = SQLiteJournal(path, retention=Retention(max_age=None, max_events=None))
        self.addCleanup(self.journal.close)
        self.hub = Hub(self.journal)
        site = build_site(hub=self.hub, journal=self.journal, clock=Clock(), max_body=1024 * 1024,
                          tokens=MasterTokens({"m1": "tok1"}), ingest_stats=IngestStats())
        self.client = StubTreq(site.resource)

    def fill_disk(self) -> None:
        db = self.journal._writer_db
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        db.execute(f"PRAGMA max_page_count={pages}")

    def free_disk(self) -> None:
        self.journal._writer_db.execute("PRAGMA max_page_count=1073741823")

    @defer.inlineCallbacks
    def post(self, events: list[dict[str, Any]]) -> Any:
        d = self.client.post("http://firehose.test/ingest", data=dumps(events),
                             headers={"Authorization": ["Bearer tok1"]})
        yield self.journal._when_idle()
        self.client.flush()
        response = yield d
        body = yield response.json()
        return response, body

    def get(self, path: str) -> Any:
        response = self.successResultOf(self.client.get(f"http://firehose.test/{path}"))
        return response, self.successResultOf(response.content())

    def metric(self, name: str) -> float:
        _, text = self.get("metrics")
        for line in text.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")

    @defer.inlineCallbacks
    def test_disk_full_is_named_reported_and_recovered_from(self) -> Any:
        """With the disk full, ingest answers 503 ``unavailable`` saying "disk full" with a
        Retry-After, the journal's head and dedup state do not move, /health says degraded
        with the reason and /metrics shows the journal unwritable; once space frees, the same
        batch is stored at the next offsets and health is ok again."""
        response, answer = yield self.post(batch(1, 2))
        self.assertEqual(response.code, 200)
        self.fill_disk()
        big = [make_event(s, state="x" * 20_000) for s in range(3, 6)]
        response, answer = yield self.post(big)
        self.assertEqual((response.code, answer["error"]), (503, "unavailable"), answer)
        self.assertIn("disk full", answer["message"])
        self.assertNotIn("rollback", answer["message"])
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        self.assertEqual((self.journal.head, self.journal.last_seqs()), (2, {"m1": ("i1", 2)}))
        self.assertEqual(len(self.flushLoggedErrors()), 1)

        response, body = self.get("health")
        health = json.loads(body)
        self.assertEqual(health["status"], "degraded")
        self.assertIn("disk full", health["reason"])
        self.assertIsInstance(health["since"], float)
        self.assertEqual((self.metric("firehose_journal_writable"),
                          self.metric("firehose_journal_write_errors_total")), (0, 1))

        self.free_disk()
        response, answer = yield self.post(big)
        self.assertEqual((response.code, answer["accepted"], answer["cursor"]),
                         (200, 3, f"{self.journal.epoch}:5"), answer)
        _, body = self.get("health")
        health = json.loads(body)
        self.assertEqual(health["status"], "ok")
        self.assertNotIn("reason", health)
        self.assertEqual((self.metric("firehose_journal_writable"),
                          self.metric("firehose_journal_write_errors_total")), (1, 1))

    @defer.inlineCallbacks
    def test_disk_full_fails_a_group_batch_by_batch_and_recovers(self) -> Any:
        """A group commit that hits a full disk fails every batch of the group as a storage
        fault (a JournalError, never UnstorableBatch, so masters retry), and after space frees
        every one of them is stored."""
        gate = hold_first_write(self.journal)
        ds = [self.journal.append(batch(1, 1, master=f"m{n}", state="x" * 20_000)) for n in (0, 1, 2)]
        self.fill_disk()
        gate.callback(None)  # m0 is written alone, then m1 and m2 as one group
        for d in ds:
            failure = yield self.assertFailure(d, JournalError)
            self.assertNotIsInstance(failure, UnstorableBatch)
            self.assertIn("disk full", str(failure))
        self.flushLoggedErrors()
        self.assertEqual((self.journal.head, self.journal.last_seqs()), (0, {}))
        self.free_disk()
        results = yield defer.gatherResults(
            [self.journal.append(batch(1, 1, master=f"m{n}")) for n in (0, 1, 2)])
        self.assertEqual([r.accepted[0].offset for r in results], [1, 2, 3])
        self.assertTrue(self.journal.write_health.writable)


class EmptyFileTests(TestCase):
    def setUp(self) -> None:
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)
        self.path = os.path.join(self.mktemp(), "j.sqlite")
        os.makedirs(os.path.dirname(self.path))

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.logged if e.get("log_level") is not None
                and e["log_level"].name == "warn" and "journal" in formatEvent(e)]

    def open(self) -> SQLiteJournal:
        journal = SQLiteJournal(self.path)
        self.addCleanup(journal.close)
        return journal

    def test_zero_byte_file_is_reinitialised_with_a_warning(self) -> None:
        """Opening a journal file that exists but is empty starts a new epoch, and a warning
        says so: it names the file, says it was empty, gives the new epoch and warns of the
        epoch gap subscribers will get."""
        open(self.path, "wb").close()
        journal = self.open()
        (warning,) = self.warnings()
        for part in (self.path, "empty", journal.epoch, "epoch gap"):
            self.assertIn(part, warning)

    @defer.inlineCallbacks
    def test_new_or_existing_journal_opens_without_warning(self) -> Any:
        """A first start (no file) and a restart (a journal with events) warn of nothing."""
        journal = SQLiteJournal(self.path)
        yield journal.append(batch(1, 1))
        yield journal.close()
        self.open()
        self.assertEqual(self.warnings(), [])
