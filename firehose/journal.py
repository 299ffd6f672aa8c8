"""The journal: every accepted event, in order, with its offset; the one source of truth.

``append`` deduplicates by ``(master, incarnation, seq)``, gives each new event the next offset,
makes the batch durable and only then fires, so its answer can be the master's acknowledgement.
Listeners (the hub) are told of new events in offset order, in the reactor thread, before
``append``'s Deferred fires.  That is the only way events reach subscribers, so a journal that
is fed by other nodes (a Redis Streams journal, say) fans out the same way.

:class:`SQLiteJournal` is the embedded default: WAL mode, one writer thread doing group commits
(every batch that arrives while a commit is running goes into the next one), one reader thread
with its own connection for replays, so neither ever blocks the reactor.
"""

from __future__ import annotations

import errno
import functools
import os
import secrets
import sqlite3
import time as _time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import Attribute, Interface, implementer

from firehose.config import Retention
from firehose.cursor import format_cursor
from firehose.event import Event

Listener = Callable[[list[Event]], None]


class TimeSource(Protocol):
    """What a journal needs of a clock (an ``IReactorTime`` has it): the time, in seconds."""

    def seconds(self) -> float: ...


class JournalError(Exception):
    """The journal could not be opened or written; the message says what to fix."""


class UnstorableBatch(JournalError):
    """This batch can never be stored: what it holds is at fault, not the storage, so retrying
    it would fail the same way (ingest answers 422, not 503).  Ingest's checks at the door
    should make this unreachable; it exists so that a check missed there fails one batch,
    never the writer or the other batches of its group commit."""


#: Raised while storing a batch when a value cannot be represented (an integer past 64 bits):
#: the batch's fault.  Anything else (sqlite3.OperationalError, OSError) is the storage's.
_CONTENT_ERRORS = (OverflowError, TypeError, ValueError, sqlite3.InterfaceError)


@dataclass
class WriteHealth:
    """Whether the journal's writes reach storage, for ``/health`` and ``/metrics``.

    A storage fault (disk full, I/O error) sets :attr:`error` and :attr:`since`; the next write
    that reaches storage clears both.  A batch refused for its own content is no storage fault.
    """

    #: Writes that failed for a storage fault since the journal was opened.
    failures: int = 0
    #: The last storage fault, while writes keep failing.
    error: str | None = None
    #: When writes started failing (seconds since the epoch).
    since: float | None = None

    @property
    def writable(self) -> bool:
        return self.error is None

    def failed(self, error: str, now: float) -> None:
        self.failures += 1
        self.error = error
        if self.since is None:
            self.since = now

    def succeeded(self) -> None:
        self.error = self.since = None


def describe_storage_error(exc: BaseException | None) -> str:
    """A sentence for a write error, naming a full disk as such: SQLite reports it as
    ``database or disk is full`` (SQLITE_FULL), the OS as ENOSPC."""
    code = getattr(exc, "sqlite_errorcode", None)
    full = (code is not None and code & 0xFF == sqlite3.SQLITE_FULL) or (
        isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    )
    text = str(exc) or type(exc).__name__
    return f"disk full ({text})" if full else text


@dataclass
class AppendResult:
    """What became of one appended batch."""

    accepted: list[Event] = field(default_factory=list)
    duplicates: int = 0
    #: Events whose ``seq`` skipped ahead of the last one seen (the master lost some).
    seq_gaps: int = 0


class IJournal(Interface):
    epoch = Attribute("The journal's epoch: changes when the journal is recreated.")
    head = Attribute("Offset of the newest event, 0 when empty.")
    earliest = Attribute("Offset of the oldest retained event (head + 1 when empty).")
    write_health = Attribute("A WriteHealth: whether writes reach storage, the last fault, since when.")

    def append(batch: Sequence[dict[str, Any]]) -> defer.Deferred[AppendResult]:
        """Deduplicate, number and durably store a batch of validated events."""

    def read(after: int, limit: int) -> defer.Deferred[list[Event]]:
        """Up to ``limit`` events with offset greater than ``after``, oldest first.

        Never an event beyond :attr:`head` as it is when ``read`` is called: an event that is
        committed but whose listeners have not run yet would otherwise reach a reader before
        the live feed, and a cursor to it would be ahead of the stream.
        """

    def listen(listener: Listener) -> None:
        """Call ``listener`` with each list of newly durable events, in offset order."""

    def last_seqs() -> dict[str, tuple[str, int]]:
        """Per master: its newest incarnation and the last seq accepted from it."""

    def trim() -> defer.Deferred[int]:
        """Apply retention now; fires with the number of events removed."""

    def close() -> defer.Deferred[None]:
        """Finish pending writes and release resources."""


class _Sequencer:
    """Dedup and numbering, shared by every journal; it holds no lock and touches no I/O.

    ``plan`` works on a private overlay so that a failed write leaves the state unchanged:
    ``commit`` applies the overlay once the write is durable.
    """

    def __init__(self, epoch: str, head: int, seqs: dict[tuple[str, str], int]) -> None:
        self.epoch = epoch
        self.head = head
        self.seqs = seqs
        #: Per master, the incarnation seen most recently, for metrics and health.
        self.latest: dict[str, tuple[str, int]] = {}

    def plan(
        self, batches: Sequence[Sequence[dict[str, Any]]]
    ) -> tuple[list[AppendResult | Failure], dict[tuple[str, str], int], int]:
        """Number and encode each batch after the ones before it.  A batch that cannot be
        planned (an event the encoder refuses) gets a :class:`Failure` in its place and leaves
        no trace in the overlay, so the batches around it are planned as if it never came."""
        overlay: dict[tuple[str, str], int] = {}
        head = self.head
        results: list[AppendResult | Failure] = []
        for batch in batches:
            try:
                result, mine, head_after = self._plan_one(batch, overlay, head)
            except Exception:
                results.append(Failure())
                continue
            overlay.update(mine)
            head = head_after
            results.append(result)
        return results, overlay, head

    def _plan_one(
        self, batch: Sequence[dict[str, Any]], overlay: dict[tuple[str, str], int], head: int
    ) -> tuple[AppendResult, dict[tuple[str, str], int], int]:
        result = AppendResult()
        mine: dict[tuple[str, str], int] = {}
        for ev in batch:
            key = (ev["master"], ev["incarnation"])
            last = mine.get(key, overlay.get(key, self.seqs.get(key, 0)))
            seq = ev["seq"]
            if seq <= last:
                result.duplicates += 1
                continue
            if seq != last + 1:
                result.seq_gaps += 1
            mine[key] = seq
            head += 1
            result.accepted.append(
                Event.build(
                    head,
                    format_cursor(self.epoch, head),
                    type=ev["type"],
                    master=ev["master"],
                    incarnation=ev["incarnation"],
                    seq=seq,
                    time=ev["time"],
                    data=ev["data"],
                )
            )
        return result, mine, head

    def commit(self, overlay: dict[tuple[str, str], int], head: int) -> None:
        self.seqs.update(overlay)
        for (master, incarnation), seq in overlay.items():
            self.latest[master] = (incarnation, seq)
        self.head = head


class _JournalBase:
    """Group commit, listeners and the ordering guarantee; subclasses store and read."""

    log = Logger()

    def __init__(
        self, epoch: str, head: int, earliest: int, seqs: dict[tuple[str, str], int], clock: TimeSource
    ) -> None:
        self._seq = _Sequencer(epoch, head, seqs)
        #: When events are received (age retention) and when writes started failing.
        self._clock = clock
        self.earliest = earliest
        self._listeners: list[Listener] = []
        self._pending: list[tuple[Sequence[dict[str, Any]], defer.Deferred[AppendResult]]] = []
        self._writing = False
        #: How many of the pending batches to write one at a time (after a group failed).
        self._alone = 0
        self._idle: list[defer.Deferred[None]] = []
        self.write_health = WriteHealth()

    @property
    def epoch(self) -> str:
        return self._seq.epoch

    @property
    def head(self) -> int:
        return self._seq.head

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def last_seqs(self) -> dict[str, tuple[str, int]]:
        return dict(self._seq.latest)

    def append(self, batch: Sequence[dict[str, Any]]) -> defer.Deferred[AppendResult]:
        d: defer.Deferred[AppendResult] = defer.Deferred()
        self._pending.append((batch, d))
        if not self._writing:
            self._writing = True
            self._start_group()
        return d

    def _start_group(self) -> None:
        """Start writing the pending batches (``_writing`` is already set).  At once here; a
        journal with a reactor waits for the end of the reactor turn (see SQLiteJournal)."""
        self._write_pending()

    def _write_pending(self) -> None:
        """Write every pending batch in one commit, or, after a group failed, the next one alone.

        Whatever is raised while planning, encoding or storing ends in :meth:`_written`, which
        answers every batch of the group and always lets the next group start: no exception
        can leave the writer busy, and so ingest hung, for everyone.
        """
        if self._alone:
            self._alone -= 1
            group, self._pending = self._pending[:1], self._pending[1:]
        else:
            group, self._pending = self._pending, []
        self._writing = True
        planned: list[AppendResult | Failure] = []
        overlay: dict[tuple[str, str], int] = {}
        head = self.head
        try:
            planned, overlay, head = self._seq.plan([b for b, _ in group])
            events = [e for r in planned if isinstance(r, AppendResult) for e in r.accepted]
            d = self._store(events)
        except Exception:
            events, d = [], defer.fail()
        d.addBoth(self._written, group, planned, overlay, head, events)

    def _written(
        self,
        outcome: object,
        group: list[tuple[Sequence[dict[str, Any]], defer.Deferred[AppendResult]]],
        planned: list[AppendResult | Failure],
        overlay: dict[tuple[str, str], int],
        head: int,
        events: list[Event],
    ) -> None:
        try:
            if isinstance(outcome, Failure):
                self._group_failed(outcome, group)
            else:
                self._group_stored(group, planned, overlay, head, events)
        except Exception:
            self.log.failure("journal: answering a group commit failed")
            for _, bd in group:
                if not bd.called:
                    bd.errback(JournalError("journal write failed: internal error"))
        finally:
            self._writing = False
            if self._pending:
                self._write_pending()
            else:
                idle, self._idle = self._idle, []
                for w in idle:
                    w.callback(None)

    def _group_stored(
        self,
        group: list[tuple[Sequence[dict[str, Any]], defer.Deferred[AppendResult]]],
        planned: list[AppendResult | Failure],
        overlay: dict[tuple[str, str], int],
        head: int,
        events: list[Event],
    ) -> None:
        self._seq.commit(overlay, head)
        if events:
            self.write_health.succeeded()
            if self.earliest > events[0].offset:
                self.earliest = events[0].offset
            for listener in self._listeners:
                try:
                    listener(events)
                except Exception:
                    self.log.failure("journal listener failed")
        for (_, bd), result in zip(group, planned, strict=True):
            if isinstance(result, AppendResult):
                bd.callback(result)
            else:
                self.log.failure("journal cannot encode a batch; refusing that batch alone", result)
                bd.errback(UnstorableBatch(f"the journal cannot store this batch: {result.getErrorMessage()}"))

    def _group_failed(
        self, failure: Failure, group: list[tuple[Sequence[dict[str, Any]], defer.Deferred[AppendResult]]]
    ) -> None:
        if len(group) > 1:
            # One batch may hold what the storage refuses: write each alone, first, so that
            # only that one fails (none of them is committed, so each is planned afresh).
            self.log.failure("journal group commit of {n} batches failed; writing each alone", failure, n=len(group))
            self._pending[:0] = group
            self._alone += len(group)
            return
        self.log.failure("journal write failed; batch not acknowledged", failure)
        if failure.check(*_CONTENT_ERRORS):
            error: JournalError = UnstorableBatch(f"the journal cannot store this batch: {failure.getErrorMessage()}")
        else:
            why = describe_storage_error(failure.value)
            self.write_health.failed(why, self._clock.seconds())
            error = JournalError(f"journal write failed: {why}")
        for _, bd in group:
            bd.errback(error)

    def _when_idle(self) -> defer.Deferred[None]:
        if not self._writing:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        return d

    def _store(self, events: list[Event]) -> defer.Deferred[None]:
        raise NotImplementedError


@implementer(IJournal)
class MemoryJournal(_JournalBase):
    """A journal in memory: for unit tests and for users' own tests (``firehose.testing``).

    ``retention`` applies on :meth:`trim` just as in the SQLite journal, so gap handling can be
    tested without a disk.

    :param clock: when events are received, for age retention; a
        :class:`twisted.internet.task.Clock` makes it testable.  Default: the wall clock
        (no reactor is needed to use this journal).
    """

    def __init__(
        self, epoch: str | None = None, retention: Retention | None = None, clock: IReactorTime | None = None
    ) -> None:
        super().__init__(epoch or new_epoch(), 0, 1, {}, clock if clock is not None else WallClock())
        self._events: list[Event] = []
        self._received: list[float] = []  # arrival time of each event, for age retention
        self._retention = retention or Retention(max_age=None, max_events=None)
        #: Set to an exception to make the next writes fail (tests of the failure path).
        self.fail_writes: Exception | None = None

    def _store(self, events: list[Event]) -> defer.Deferred[None]:
        if self.fail_writes is not None:
            return defer.fail(self.fail_writes)
        self._events.extend(events)
        self._received.extend([self._clock.seconds()] * len(events))
        return defer.succeed(None)

    def read(self, after: int, limit: int) -> defer.Deferred[list[Event]]:
        start = max(0, after + 1 - self.earliest)
        stop = min(start + limit, self.head + 1 - self.earliest)
        return defer.succeed(self._events[start:stop])

    def trim(self) -> defer.Deferred[int]:
        removed = 0
        keep, max_age = self._retention.max_events, self._retention.max_age
        if keep is not None and len(self._events) > keep:
            removed = len(self._events) - keep
        if max_age is not None:
            oldest_kept = self._clock.seconds() - max_age
            while removed < len(self._received) and self._received[removed] < oldest_kept:
                removed += 1
        del self._events[:removed]
        del self._received[:removed]
        self.earliest += removed
        return defer.succeed(removed)

    def close(self) -> defer.Deferred[None]:
        return self._when_idle()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    offset INTEGER PRIMARY KEY,
    received REAL NOT NULL,
    type TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sources (
    master TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (master, incarnation)
);
"""


#: The most event rows one INSERT statement carries (4 values a row; SQLite allows 32,766).
_ROWS_PER_INSERT = 256


@functools.cache
def _insert_events(rows: int) -> str:
    return "INSERT INTO events (offset, received, type, body) VALUES " + ",".join(["(?, ?, ?, ?)"] * rows)


@implementer(IJournal)
class SQLiteJournal(_JournalBase):
    """The embedded journal: one SQLite file in WAL mode.

    :param path: the database file; created with its directory's permissions if missing.
    :param synchronous: SQLite's ``synchronous`` setting.  ``FULL`` (default) makes an
        acknowledged batch survive a power cut; ``NORMAL`` survives a process crash only.
    :param reactor: runs the writer and reader threads' results back in the reactor thread.
    :param clock: when events are received (stored with them, for age retention) and when
        writes started failing; default ``reactor`` (the wall clock if it is no
        ``IReactorTime``).  Read in the reactor thread only.
    """

    def __init__(
        self,
        path: str,
        reactor: Any = None,
        retention: Retention | None = None,
        synchronous: str = "FULL",
        clock: IReactorTime | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        # A reactor that only runs threads' results (a test's) tells no time: the wall clock does.
        time_of: TimeSource = (
            clock if clock is not None else reactor if IReactorTime.providedBy(reactor) else WallClock()
        )
        self.path = path
        self._retention = retention or Retention()
        try:
            empty_file = os.path.isfile(path) and os.path.getsize(path) == 0
            self._writer_db = self._connect(synchronous)
            self._writer_db.executescript(_SCHEMA)
            epoch, created = self._load_epoch()
            head, earliest = self._bounds(self._writer_db)
            seqs = {
                (m, i): s
                for m, i, s in self._writer_db.execute(
                    "SELECT master, incarnation, last_seq FROM sources"
                )
            }
            self._reader_db = self._connect(synchronous)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal database {path!r}: {exc}") from exc
        if created and empty_file:
            # SQLite takes an empty file for a new database: say so, since this is usually a
            # journal lost (truncated, or restored as a placeholder) rather than a first start.
            self.log.warn(
                "journal file {path} exists but is empty (0 bytes): starting a new journal with "
                "epoch {epoch}; subscribers resuming from an older cursor will get an epoch gap",
                path=path, epoch=epoch,
            )
        super().__init__(epoch, head, earliest, seqs, time_of)
        for (master, incarnation), seq in seqs.items():
            self._seq.latest[master] = (incarnation, seq)
        #: How a group commit is put off to the end of the reactor turn (``None``: a reactor
        #: that only runs threads' results, a test's: at once).
        self._call_later: Callable[..., Any] | None = (
            reactor.callLater if IReactorTime.providedBy(reactor) else None
        )
        self._writer = ThreadPool(1, 1, "firehose-journal-writer")
        self._reader = ThreadPool(1, 1, "firehose-journal-reader")
        self._writer.start()
        self._reader.start()

    def _start_group(self) -> None:
        """Start the group commit at the end of this reactor turn, not at once: the batches of
        every request read in the same turn (several masters answered by the last commit send
        their next batches together) then share one commit and one fsync, instead of the first
        being committed alone and the others waiting for it.  No timer: a zero delay only
        orders the write after what the reactor has already read."""
        if self._call_later is None:
            self._write_pending()
        else:
            self._call_later(0, self._write_pending)

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise sqlite3.OperationalError(f"directory {directory!r} does not exist")
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def _load_epoch(self) -> tuple[str, bool]:
        """The stored epoch, or a new one; and whether it is new."""
        row = self._writer_db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        if row:
            return str(row[0]), False
        epoch = new_epoch()
        self._writer_db.execute("INSERT INTO meta VALUES ('epoch', ?)", (epoch,))
        return epoch, True

    @staticmethod
    def _bounds(db: sqlite3.Connection) -> tuple[int, int]:
        lo, hi = db.execute("SELECT MIN(offset), MAX(offset) FROM events").fetchone()
        if hi is None:
            (stored,) = db.execute(
                "SELECT COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key='head'), 0)"
            ).fetchone()
            return stored, stored + 1
        return hi, lo

    def _store(self, events: list[Event]) -> defer.Deferred[None]:
        # Every row is built here, ready to bind, so the writer thread holds the GIL only for
        # what sqlite3 itself needs (binding, between steps that release it).
        now = self._clock.seconds()
        rows: list[Any] = []
        for e in events:
            rows += (e.offset, now, e.type, e.encoded)
        last: dict[tuple[str, str], int] = {}
        for e in events:
            obj = e.obj
            last[(obj["master"], obj["incarnation"])] = obj["seq"]
        sources = [(m, i, seq, now) for (m, i), seq in last.items()]
        return deferToThreadPool(self._reactor, self._writer, self._store_sync, rows, sources)

    def _store_sync(self, rows: list[Any], sources: list[tuple[str, str, int, float]]) -> None:
        """Store the events, ``rows`` (offset, received, type, body, one after another, flat),
        and the masters' last seqs (``sources``: master, incarnation, seq, when) in one
        transaction.  The events go in multi-row INSERTs of up to :data:`_ROWS_PER_INSERT`
        rows: one statement step (and GIL release) per chunk, not per event."""
        if not rows:
            return
        db = self._writer_db
        db.execute("BEGIN IMMEDIATE")
        try:
            n, i = len(rows) // 4, 0
            while i < n:
                # Chunks of a power of two rows: a handful of distinct statements, all cached.
                size = min(n - i, _ROWS_PER_INSERT)
                size = 1 << (size.bit_length() - 1)
                db.execute(_insert_events(size), rows[4 * i : 4 * (i + size)])
                i += size
            db.executemany(
                "INSERT INTO sources VALUES (?, ?, ?, ?) ON CONFLICT (master, incarnation) "
                "DO UPDATE SET last_seq = excluded.last_seq, updated = excluded.updated",
                sources,
            )
            db.execute(
                "INSERT INTO meta VALUES ('head', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(rows[-4]),),
            )
            db.execute("COMMIT")
        except BaseException as exc:
            # SQLite may have rolled back already (a COMMIT that found the disk full does): a
            # second ROLLBACK would raise "no transaction is active" and hide the real error.
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error as rollback:
                    exc.add_note(f"and the rollback failed: {rollback}")
            raise

    def read(self, after: int, limit: int) -> defer.Deferred[list[Event]]:
        # ``head`` is read here, in the reactor thread: it only counts published events.
        return deferToThreadPool(self._reactor, self._reader, self._read_sync, after, limit, self.head)

    def _read_sync(self, after: int, limit: int, head: int) -> list[Event]:
        epoch = self.epoch
        return [
            Event(offset, format_cursor(epoch, offset), type_, body)
            for offset, type_, body in self._reader_db.execute(
                "SELECT offset, type, body FROM events WHERE offset > ? AND offset <= ? "
                "ORDER BY offset LIMIT ?",
                (after, head, limit),
            )
        ]

    def trim(self) -> defer.Deferred[int]:
        return trim_in_thread(self, self._writer)

    def _trim_sync(self, head: int, cutoff: float | None) -> tuple[int, int]:
        """Delete events received before ``cutoff`` and past ``max_events``."""
        db = self._writer_db
        removed = 0
        if cutoff is not None:
            cur = db.execute("DELETE FROM events WHERE received < ?", (cutoff,))
            removed += cur.rowcount
        if self._retention.max_events is not None:
            cur = db.execute("DELETE FROM events WHERE offset <= ?", (head - self._retention.max_events,))
            removed += cur.rowcount
        (lo,) = db.execute("SELECT MIN(offset) FROM events").fetchone()
        return removed, (lo if lo is not None else head + 1)

    def size_bytes(self) -> int:
        """Bytes on disk of the database and its write-ahead log."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return total

    @defer.inlineCallbacks
    def close(self) -> Any:
        yield self._when_idle()
        self._writer.stop()
        self._reader.stop()
        self._writer_db.close()
        self._reader_db.close()


class WallClock:
    """``seconds()`` from :func:`time.time`: the default clock of a journal used without a
    reactor (a :class:`MemoryJournal` in a user's test)."""

    def seconds(self) -> float:
        return _time.time()


def trim_in_thread(journal: Any, pool: ThreadPool) -> defer.Deferred[int]:
    """Apply ``journal``'s retention on ``pool``: ``journal._trim_sync(head, cutoff)`` removes
    what is past ``max_events`` or received before ``cutoff`` and returns ``(removed, the oldest
    offset kept)``; here, on the reactor thread, ``earliest`` moves up and the removal is logged.
    One copy for every journal that trims in a thread (SQLite, Redis)."""
    max_age = journal._retention.max_age
    cutoff = journal._clock.seconds() - max_age if max_age is not None else None
    d = deferToThreadPool(journal._reactor, pool, journal._trim_sync, journal.head, cutoff)

    def trimmed(result: tuple[int, int]) -> int:
        removed, earliest = result
        journal.earliest = max(journal.earliest, earliest)
        if removed:
            journal.log.info("retention removed {n} events; earliest offset now {e}", n=removed, e=journal.earliest)
        return int(removed)

    return d.addCallback(trimmed)


def new_epoch() -> str:
    return secrets.token_hex(4)
