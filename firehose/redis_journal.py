"""The shared journal: several firehose nodes on one Redis Stream (issue #12).

Every node appends to, and fans out from, the same stream, so all nodes share one epoch, one
offset (cursor) space and one order.  The journal is the bus: a node's hub hears only what its
reader loop reads back from the stream, whichever node appended it, exactly as a single node's
hub hears only what its journal committed.

Keys (``<prefix>`` is ``key_prefix``, default ``firehose``):

``<prefix>:epoch``
    the epoch (a string); created with the counter, never changed while the counter lives.
``<prefix>:head``
    the offset counter: the last offset given (``INCR``).  Created (at 0) with the epoch, so
    an epoch without a counter means the data was lost, and a new epoch starts.
``<prefix>:stream``
    the events.  Entry ID ``<offset>-0``: Redis's ID order *is* offset order, and a range read
    by offset is an ``XRANGE`` by ID.  Fields: ``t`` type, ``m`` master, ``i`` incarnation,
    ``s`` seq, ``r`` when received (for age retention; IDs are offsets, not times) and ``b``
    the event encoded without its ``id`` (each node prefixes the ``id`` it derives from the
    epoch and the offset, which gives the same bytes as :meth:`Event.build`).
``<prefix>:seqs``
    hash ``<len(master)>:<master><incarnation>`` -> last accepted seq: the dedup state.
``<prefix>:latest``
    hash master -> its newest incarnation, for :meth:`last_seqs` after a restart.

One Lua script stores a group of batches atomically: per event it dedups against ``seqs``
(seqs compared as decimal strings, so 64-bit seqs stay exact in Lua's doubles), ``INCR``\\ s the
counter and ``XADD``\\ s the entry with its explicit ID.  Two nodes given the same retried batch
at the same moment therefore store it once: Redis runs one script at a time.  The script also
checks the caller's epoch, so a node never writes into a stream that replaced its own.

Nothing blocks the reactor: the script runs in a one-thread writer pool (batches that arrive
while a write is in flight go into the next call, as in :class:`SQLiteJournal`), range reads
and trims in a small reader pool, and one reader thread per node follows the stream from the
last offset it delivered, handing each batch to the reactor with ``callFromThread``.

A node does not read its own events back: parsing a stream entry in redis-py (pure Python
without hiredis) and decoding the event again cost more than everything else the node does
with it.  The writer thread keeps the events of each script call (their offsets are one
consecutive run) and the reader loop, which waits with ``XREAD BLOCK`` for one entry only,
hands a run on from memory when the stream reaches it; it reads from the stream only the other
nodes' entries (and its own that it no longer keeps).  Either way the listeners get the same
bytes, in offset order.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from firehose.backoff import Backoff
from firehose.config import Retention
from firehose.cursor import format_cursor
from firehose.event import Event, dumps
from firehose.journal import (
    AppendResult,
    IJournal,
    JournalError,
    Listener,
    TimeSource,
    UnstorableBatch,
    WallClock,
    WriteHealth,
    new_epoch,
    trim_in_thread,
)

#: Events per ``XREAD`` of the reader loop and per page of an age trim.
READ_COUNT = 1000
#: How long one ``XREAD BLOCK`` waits (ms): also how often an idle reader checks the epoch.
BLOCK_MS = 2000
#: Pages of the oldest entries an age trim looks at per call (the next call goes on).
TRIM_PAGES = 100

# KEYS: epoch, head, stream, seqs, latest.  ARGV: [1] "new" epoch candidate.
# Returns {epoch, created (0/1), head}.
_OPEN = """
local epoch = redis.call('GET', KEYS[1])
local head = redis.call('GET', KEYS[2])
if epoch and head then
  return {epoch, 0, head}
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], '0')
return {ARGV[1], 1, '0'}
"""

# KEYS: epoch, head, stream, seqs, latest.
# ARGV: epoch, received, then the group's events in two strings: the byte lengths of each
# event's master, incarnation, seq, type and body (five numbers an event, space-separated), and
# those fields back to back.  Two arguments, not five an event: what the client packs and Redis
# parses per argument was most of the node's cost of a write.  Every length is read, and checked
# against the data, before anything is written, so malformed arguments write nothing.
# Per event one XADD; the counter, the seqs and the masters' incarnations are written once at
# the end (the script is atomic: nobody sees them in between).
# Returns {'ok', "off1 prev1 off2 prev2 ..."} (off 0: a duplicate; prev: the last seq before),
# {'epoch', current} or {'lost'}.
_APPEND = """
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then
  return {'epoch', current or ''}
end
local head = redis.call('GET', KEYS[2])
if not head then
  return {'lost'}
end
head = tonumber(head)
local function above(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local lens, data = {}, ARGV[4]
local total = 0
for n in string.gmatch(ARGV[3], '%d+') do
  n = tonumber(n)
  lens[#lens + 1] = n
  total = total + n
end
if #lens % 5 ~= 0 or total ~= #data or string.find(ARGV[3], '[^%d ]') then
  return redis.error_reply('firehose: malformed batch')
end
local out, last_seq, changed, latest, masters = {}, {}, {}, {}, {}
local p = 1
for i = 1, #lens, 5 do
  local master = string.sub(data, p, p + lens[i] - 1)
  p = p + lens[i]
  local inc = string.sub(data, p, p + lens[i + 1] - 1)
  p = p + lens[i + 1]
  local seq = string.sub(data, p, p + lens[i + 2] - 1)
  p = p + lens[i + 2]
  local kind = string.sub(data, p, p + lens[i + 3] - 1)
  p = p + lens[i + 3]
  local field = #master .. ':' .. master .. inc
  local last = last_seq[field]
  if not last then
    last = redis.call('HGET', KEYS[4], field) or '0'
    last_seq[field] = last
  end
  if above(seq, last) then
    head = head + 1
    redis.call('XADD', KEYS[3], string.format('%d-0', head), 't', kind, 'm', master, 'i', inc, 's', seq,
               'r', ARGV[2], 'b', string.sub(data, p, p + lens[i + 4] - 1))
    last_seq[field] = seq
    changed[field] = true
    if not latest[master] then masters[#masters + 1] = master end
    latest[master] = inc
    out[#out + 1] = string.format('%d', head)
  else
    out[#out + 1] = '0'
  end
  out[#out + 1] = last
  p = p + lens[i + 4]
end
if #masters > 0 then
  redis.call('SET', KEYS[2], string.format('%d', head))
  for field in pairs(changed) do
    redis.call('HSET', KEYS[4], field, last_seq[field])
  end
  for _, master in ipairs(masters) do
    redis.call('HSET', KEYS[5], master, latest[master])
  end
end
return {'ok', table.concat(out, ' ')}
"""

#: Events of this node's own writes kept for the reader loop (see ``_own_written``).
OWN_MAX = 100_000


class _Pending:
    """A batch waiting for the writer: its events, their bodies, and the script's two
    arguments for it (lengths and data, see ``_APPEND``)."""

    __slots__ = ("events", "bodies", "lens", "data", "d")

    def __init__(
        self, events: list[dict[str, Any]], bodies: list[bytes], lens: bytes, data: bytes,
        d: defer.Deferred[AppendResult],
    ) -> None:
        self.events, self.bodies, self.lens, self.data, self.d = events, bodies, lens, data, d


class _Stored:
    """What the writer thread made of one script call: its status (``ok``, ``epoch``,
    ``lost``), the epoch Redis holds when it is not ours, each batch's result, and how many
    replicas acknowledged (``None``: not asked)."""

    __slots__ = ("status", "current", "results", "acked")

    def __init__(self, status: str, current: str, results: list[AppendResult], acked: int | None) -> None:
        self.status, self.current, self.results, self.acked = status, current, results, acked


_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def _body(ev: dict[str, Any]) -> bytes:
    """The event encoded without its ``id``, keys in :meth:`Event.build`'s order."""
    return dumps(
        {
            "type": ev["type"],
            "master": ev["master"],
            "incarnation": ev["incarnation"],
            "seq": ev["seq"],
            "time": ev["time"],
            "data": ev["data"],
        }
    )


def _packed(ev: dict[str, Any], body: bytes) -> tuple[bytes, bytes]:
    """One event as the script reads it: the byte lengths of its master, incarnation, seq, type
    and body, and those fields back to back."""
    master, inc = ev["master"].encode(), ev["incarnation"].encode()
    seq, type_ = str(ev["seq"]).encode(), ev["type"].encode()
    return (
        b"%d %d %d %d %d " % (len(master), len(inc), len(seq), len(type_), len(body)),
        b"".join((master, inc, seq, type_, body)),
    )


def _event(epoch: str, offset: int, type_: str, body: bytes, obj: dict[str, Any] | None = None) -> Event:
    """The delivered event: ``{"id": cursor, ...body}``, the bytes :meth:`Event.build` makes."""
    cursor = format_cursor(epoch, offset)
    encoded = b'{"id":"' + cursor.encode() + b'",' + body[1:]
    return Event(offset, cursor, type_, encoded, obj)


def _offset(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


@implementer(IJournal)
class RedisJournal:
    """A journal on a Redis Stream shared by every node that opens the same ``url``.

    :param url: ``redis://HOST:PORT/DB`` (``rediss://`` for TLS; a password in the URL works).
    :param reactor: runs the threads' results in the reactor thread; default the global one.
    :param retention: applied by :meth:`trim` with ``XTRIM MINID``.
    :param wait_replicas: after each write, ``WAIT`` for this many replicas to acknowledge it;
        fewer within ``wait_timeout_ms`` and the batch is not acknowledged (ingest answers
        503) although it is stored: the master's retry is then a duplicate, which is dropped.
    :param wait_timeout_ms: how long ``WAIT`` may take.
    :param key_prefix: the keys' prefix: nodes with the same prefix share a stream.
    :param clock: when events are received (age retention) and write failures started.
    :raises JournalError: Redis cannot be reached when the journal is opened.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        reactor: Any = None,
        retention: Retention | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        key_prefix: str = "firehose",
        clock: IReactorTime | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        self._clock: TimeSource = (
            clock if clock is not None else reactor if IReactorTime.providedBy(reactor) else WallClock()
        )
        self.url = url
        self._retention = retention or Retention()
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        p = key_prefix
        self._keys = [f"{p}:epoch", f"{p}:head", f"{p}:stream", f"{p}:seqs", f"{p}:latest"]
        self._stream = self._keys[2]
        no_retry = Retry(NoBackoff(), 0)
        # The writer's own connection: WAIT counts the writes of the connection it is sent on.
        # Typed Any: redis-py's reply types are unions of every RESP shape.
        self._writer_redis: Any = redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=10 + wait_timeout_ms / 1000,
            retry=no_retry, single_connection_client=True,
        )
        self._redis: Any = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10, retry=no_retry)
        self._append_script = self._writer_redis.register_script(_APPEND)
        try:
            epoch, created, head = self._open_sync()
            earliest = self._first_offset_sync(head)
            latest, _ = self._load_seqs_sync()
        except redis.RedisError as exc:
            self._writer_redis.close()
            self._redis.close()
            raise JournalError(f"cannot open the Redis journal at {_redact(url)}: {exc}") from exc
        if created:
            self.log.info("Redis journal at {url}: new epoch {epoch}", url=_redact(url), epoch=epoch)
        self.epoch: str = epoch
        self.head: int = head
        self.earliest: int = earliest
        self._latest = latest
        self.write_health = WriteHealth()
        self._listeners: list[Listener] = []
        self._pending: list[_Pending] = []
        self._writing = False
        self._idle: list[defer.Deferred[None]] = []
        #: (last offset of a stored batch, its Deferred, its result): fired once delivered.
        self._waiting: list[tuple[int, defer.Deferred[AppendResult], AppendResult]] = []
        #: The stream's head as last learnt (the counter): lag = this - head.
        self._stream_head = head
        self._connected = True
        #: The last write failed for an unreachable Redis (not for what Redis answered).
        self._write_lost_link = False
        self._last_error: str | None = None
        #: Set when the stream this node follows was replaced (another epoch): fatal until restart.
        self._replaced: str | None = None
        self._writer = ThreadPool(1, 1, "firehose-redis-writer")
        self._readers = ThreadPool(1, 4, "firehose-redis-reader")
        self._writer.start()
        self._readers.start()
        self._stopping = threading.Event()
        #: Runs of this node's stored events not yet delivered (writer -> reader loop), guarded
        #: with the count of script calls in flight by ``_own_cond``.
        self._own: deque[list[Event]] = deque()
        self._own_count = 0
        self._writes_in_flight = 0
        self._own_cond = threading.Condition()
        #: Batches handed to the reactor and not yet delivered: bounds what the loop holds.
        self._in_flight = threading.Semaphore(2)
        self._loop_done: defer.Deferred[None] = defer.Deferred()
        self._loop_redis: Any = redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=BLOCK_MS / 1000 + 10, retry=no_retry
        )
        self._loop_client_id: int | None = None
        self._loop = threading.Thread(target=self._read_loop, args=(head,), name="firehose-redis-loop", daemon=True)
        self._loop.start()

    # -- opening -------------------------------------------------------------------------

    def _open_sync(self) -> tuple[str, bool, int]:
        """The shared epoch and head; a new epoch if there is none or its counter is gone
        (``FLUSHALL``, a replaced or restored-empty Redis): old cursors then get an epoch gap."""
        epoch, created, head = self._redis.eval(_OPEN, len(self._keys), *self._keys, new_epoch())
        return epoch.decode(), bool(created), int(head)

    def _first_offset_sync(self, head: int) -> int:
        first = self._redis.xrange(self._stream, "-", "+", count=1)
        return _offset(first[0][0]) if first else head + 1

    def _load_seqs_sync(self) -> tuple[dict[str, tuple[str, int]], dict[tuple[str, str], int]]:
        seqs: dict[tuple[str, str], int] = {}
        for field, seq in self._redis.hgetall(self._keys[3]).items():
            text = field.decode()
            n, _, rest = text.partition(":")
            seqs[(rest[: int(n)], rest[int(n):])] = int(seq)
        latest: dict[str, tuple[str, int]] = {}
        for master, inc in self._redis.hgetall(self._keys[4]).items():
            m, i = master.decode(), inc.decode()
            latest[m] = (i, seqs.get((m, i), 0))
        return latest, seqs

    # -- IJournal ------------------------------------------------------------------------

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def last_seqs(self) -> dict[str, tuple[str, int]]:
        return dict(self._latest)

    def append(self, batch: Sequence[dict[str, Any]]) -> defer.Deferred[AppendResult]:
        """Store ``batch`` through the script; fires once this node's listeners have heard
        every event it accepted (so "listeners before append" holds as in every journal)."""
        d: defer.Deferred[AppendResult] = defer.Deferred()
        events = list(batch)
        try:
            bodies = [_body(ev) for ev in events]
            packed = [_packed(ev, body) for ev, body in zip(events, bodies, strict=True)]
            lens, data = b"".join([p[0] for p in packed]), b"".join([p[1] for p in packed])
        except Exception as exc:
            return defer.fail(UnstorableBatch(f"the journal cannot store this batch: {exc}"))
        if self._replaced is not None:
            return defer.fail(JournalError(self._replaced))
        self._pending.append(_Pending(events, bodies, lens, data, d))
        if not self._writing:
            self._write_pending()
        return d

    def _write_pending(self) -> None:
        group, self._pending = self._pending, []
        self._writing = True
        args = [self.epoch, repr(self._clock.seconds()), b"".join([p.lens for p in group]),
                b"".join([p.data for p in group])]
        d = deferToThreadPool(self._reactor, self._writer, self._store_sync, args, group)
        d.addBoth(self._written, group)

    def _store_sync(self, args: list[Any], group: list[_Pending]) -> _Stored:
        """Run the script, read its answer into each batch's result, and tell the reader loop
        which offsets are this node's (:meth:`_own_written`); then ``WAIT`` for the replicas if
        asked.  Off the reactor thread."""
        with self._own_cond:
            self._writes_in_flight += 1
        try:
            reply = self._append_script(keys=self._keys, args=args, client=self._writer_redis)
            status = reply[0].decode() if reply else "?"
            if status != "ok":
                return _Stored(status, reply[1].decode() if len(reply) > 1 else "", [], None)
            results = self._results(reply[1].split(), group)
            self._own_written([e for r in results for e in r.accepted])
        finally:
            with self._own_cond:
                self._writes_in_flight -= 1
                self._own_cond.notify_all()
        acked = None
        if self.wait_replicas:
            acked = int(self._writer_redis.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms))
        return _Stored(status, "", results, acked)

    def _results(self, numbers: list[bytes], group: list[_Pending]) -> list[AppendResult]:
        """Each batch's result from the script's ``offset prev`` pairs: its accepted events (the
        same objects the listeners will be handed), duplicates and seq gaps."""
        epoch = self.epoch
        results = []
        pos = 0
        for pending in group:
            result = AppendResult()
            for ev, body in zip(pending.events, pending.bodies, strict=True):
                offset, prev = int(numbers[pos]), int(numbers[pos + 1])
                pos += 2
                if not offset:
                    result.duplicates += 1
                    continue
                if ev["seq"] != prev + 1:
                    result.seq_gaps += 1
                cursor = format_cursor(epoch, offset)
                obj = {"id": cursor, "type": ev["type"], "master": ev["master"], "incarnation": ev["incarnation"],
                       "seq": ev["seq"], "time": ev["time"], "data": ev["data"]}
                result.accepted.append(
                    Event(offset, cursor, ev["type"], b'{"id":"' + cursor.encode() + b'",' + body[1:], obj)
                )
            results.append(result)
        if pos != len(numbers):
            raise JournalError(f"the append script answered {len(numbers)} numbers for {pos // 2} events")
        return results

    def _written(self, outcome: _Stored | Failure, group: list[_Pending]) -> None:
        try:
            self._answer(outcome, group)
        except Exception:
            self.log.failure("Redis journal: answering a write failed")
            for p in group:
                if not p.d.called:
                    p.d.errback(JournalError("journal write failed: internal error"))
        finally:
            self._writing = False
            if self._pending:
                self._write_pending()
            else:
                idle, self._idle = self._idle, []
                for w in idle:
                    w.callback(None)

    def _answer(self, outcome: _Stored | Failure, group: list[_Pending]) -> None:
        error: JournalError | None = None
        if isinstance(outcome, Failure):
            why = outcome.getErrorMessage() or repr(outcome.value)
            if outcome.check(*_CONNECTION_ERRORS):
                self._link_down(why)
                self._write_lost_link = True
            else:
                self.log.failure("Redis journal write failed; batch not acknowledged", outcome)
            self._last_error = why
            self.write_health.failed(why, self._clock.seconds())
            error = JournalError(f"journal write failed: Redis: {why}")
        elif outcome.status == "epoch":
            self._stream_replaced(outcome.current)
            error = JournalError(self._replaced or "the shared stream was replaced")
        elif outcome.status == "lost":
            self._stream_replaced("")
            error = JournalError(self._replaced or "the shared stream was lost")
        elif outcome.status != "ok":
            error = JournalError(f"journal write failed: the append script answered {outcome.status!r}")
        if error is not None:
            for p in group:
                p.d.errback(error)
            return
        assert not isinstance(outcome, Failure)
        self.write_health.succeeded()
        self._write_lost_link = False
        acked = outcome.acked
        short = acked is not None and acked < self.wait_replicas
        if short:
            why = f"WAIT: {acked} of {self.wait_replicas} replicas acknowledged within {self.wait_timeout_ms} ms"
            self._last_error = why
            self.write_health.failed(why, self._clock.seconds())
        for p, result in zip(group, outcome.results, strict=True):
            if result.accepted:
                self._stream_head = max(self._stream_head, result.accepted[-1].offset)
            if short:
                # Stored, but not on enough replicas: not acknowledged.  The retry is a duplicate.
                p.d.errback(JournalError(f"journal write not replicated: {why}; the batch is stored, a retry is safe"))
            elif not result.accepted or result.accepted[-1].offset <= self.head:
                p.d.callback(result)
            else:
                self._waiting.append((result.accepted[-1].offset, p.d, result))

    # -- this node's own events, handed to the reader loop -----------------------------------

    def _own_written(self, events: list[Event]) -> None:
        """Keep the events this node just stored (writer thread): the reader loop delivers them
        from here rather than reading and decoding them back from the stream.  One script call's
        accepted events have consecutive offsets (``INCR`` in one atomic script), so they are
        one run.  Bounded: past :data:`OWN_MAX` events the oldest runs are dropped, and the loop
        reads those from the stream instead (always correct, only slower)."""
        if not events:
            return
        with self._own_cond:
            self._own.append(events)
            self._own_count += len(events)
            while self._own_count > OWN_MAX and len(self._own) > 1:
                self._own_count -= len(self._own.popleft())

    def _own_after(self, last: int) -> list[Event] | None:
        """This node's events that follow offset ``last`` directly, if the writer kept them
        (reader thread); runs the loop has already passed are dropped."""
        with self._own_cond:
            own = self._own
            while own and own[0][-1].offset <= last:
                self._own_count -= len(own.popleft())
            if own and own[0][0].offset <= last + 1:
                run = own.popleft()
                self._own_count -= len(run)
                return [e for e in run if e.offset > last] if run[0].offset <= last else run
            return None

    def _own_bound(self, offset: int) -> int | None:
        """Where this node's next run starts, for ``offset``, the first entry after the loop's
        position (reader thread): the first offset of the first kept run that ends at or after
        ``offset`` (``None``: none), once no write of this node is in flight (until then a run
        that holds ``offset`` may not be known yet).  ``offset`` is this node's own if the
        answer is ``<= offset``; else the other nodes' entries end before the answer."""
        with self._own_cond:
            while self._writes_in_flight and not self._stopping.is_set():
                if any(run[0].offset <= offset <= run[-1].offset for run in self._own):
                    break
                self._own_cond.wait(1.0)
            starts = [run[0].offset for run in self._own if run[-1].offset >= offset]
            return min(starts) if starts else None

    def read(self, after: int, limit: int) -> defer.Deferred[list[Event]]:
        # ``head`` is read here, in the reactor thread: only events this node delivered.
        head = self.head
        if after >= head or limit <= 0:
            return defer.succeed([])
        d = deferToThreadPool(self._reactor, self._readers, self._read_sync, after, limit, head)

        def seen(events: list[Event]) -> list[Event]:
            # Another node's trim shows as a hole at the start of a read: follow it.
            if events and events[0].offset > after + 1 and after + 1 >= self.earliest:
                self.earliest = events[0].offset
            return events

        return d.addCallback(seen)

    def _read_sync(self, after: int, limit: int, head: int) -> list[Event]:
        epoch = self.epoch
        return [
            _event(epoch, _offset(entry_id), fields[b"t"].decode(), fields[b"b"])
            for entry_id, fields in self._redis.xrange(self._stream, f"{after + 1}-0", f"{head}-0", count=limit)
        ]

    def trim(self) -> defer.Deferred[int]:
        return trim_in_thread(self, self._readers)

    def _trim_sync(self, head: int, cutoff: float | None) -> tuple[int, int]:
        """``XTRIM MINID`` past ``max_events``, then up to the first entry received at or after
        ``cutoff`` (looking at :data:`TRIM_PAGES` pages of the oldest at most)."""
        r = self._redis
        removed = 0
        keep = self._retention.max_events
        if keep is not None and head - keep >= 1:
            removed += int(r.xtrim(self._stream, minid=f"{head - keep + 1}-0", approximate=False))
        if cutoff is not None:
            start = "-"
            for _ in range(TRIM_PAGES):
                page = r.xrange(self._stream, start, f"{head}-0", count=READ_COUNT)
                young = next((i for i, (_, f) in enumerate(page) if float(f[b"r"]) >= cutoff), None)
                if young is not None:
                    if young:
                        removed += int(r.xtrim(self._stream, minid=page[young][0], approximate=False))
                    break
                if not page:
                    break
                last = _offset(page[-1][0])
                removed += int(r.xtrim(self._stream, minid=f"{last + 1}-0", approximate=False))
                if len(page) < READ_COUNT:
                    break
                start = f"{last + 1}-0"
        return removed, self._first_offset_sync(head)

    def close(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._close())

    async def _close(self) -> None:
        await self._when_idle()
        self._stopping.set()
        # Wake the reader's XREAD BLOCK now rather than at its timeout; again, until the loop
        # is done, in case it was between two calls (an unblock reaches only a blocked client).
        while not self._loop_done.called:
            client_id = self._loop_client_id
            if client_id is not None:
                try:
                    await deferToThreadPool(self._reactor, self._readers, self._redis.client_unblock, client_id)
                except Exception:
                    pass
            if self._loop_done.called:
                break
            if not IReactorTime.providedBy(self._reactor):
                await self._loop_done  # no timer to poll with: the block's timeout bounds this
                break
            await task.deferLater(self._reactor, 0.05, lambda: None)
        await self._loop_done
        for _, bd, _ in self._waiting:
            bd.errback(JournalError("the journal closed before the batch was delivered"))
        self._waiting = []
        self._writer.stop()
        self._readers.stop()
        for client in (self._writer_redis, self._redis, self._loop_redis):
            client.close()

    def _when_idle(self) -> defer.Deferred[None]:
        if not self._writing:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        return d

    # -- the reader loop (its own thread) --------------------------------------------------

    def _read_loop(self, head: int) -> None:
        """Follow the stream from the last delivered offset; each batch goes to the reactor.

        This node's own events are not read back: the writer keeps them (:meth:`_own_written`)
        and the loop hands them on when the stream reaches them.  So the loop waits with
        ``XREAD BLOCK`` for one entry only; when that entry is this node's (known once no write
        of this node is in flight) its run is delivered from memory, otherwise the other nodes'
        entries are read up to this node's next run.  On a connection error: back off and
        resume from the same offset, so nothing is skipped."""
        last = head
        backoff = Backoff(initial=0.1, maximum=5.0)
        r = self._loop_redis
        try:
            while not self._stopping.is_set():
                try:
                    own = self._own_after(last)
                    if own:
                        last = own[-1].offset
                        self._hand_over(own, [(e.obj["master"], e.obj["incarnation"], e.obj["seq"]) for e in own],
                                        None)
                        continue
                    if self._loop_client_id is None:
                        self._loop_client_id = int(r.client_id())
                        self._reactor.callFromThread(self._link_up, None)
                    reply = r.xread({self._stream: f"{last}-0"}, count=1, block=BLOCK_MS)
                    backoff.reset()
                    entries = reply[0][1] if reply else []
                    if not entries:
                        # Idle: learn the stream head (lag) and check the epoch.
                        self._reactor.callFromThread(self._link_up, self._check_epoch(r))
                        continue
                    first = _offset(entries[0][0])
                    mine = self._own_bound(first)
                    if mine is not None and mine <= first:
                        # ``first`` is in this node's run, delivered from memory at the top of
                        # the loop (nothing lies between ``last`` and the run: trimmed if anything).
                        last = max(last, mine - 1)
                        continue
                    end = f"{mine - 1}-0" if mine is not None else "+"
                    page = r.xrange(self._stream, f"{first}-0", end, count=READ_COUNT)
                    if not page:
                        continue
                    known = self._check_epoch(r) if len(page) == READ_COUNT else None
                    epoch_ = self.epoch
                    events = []
                    seqs = []
                    for entry_id, f in page:
                        events.append(_event(epoch_, _offset(entry_id), f[b"t"].decode(), f[b"b"]))
                        seqs.append((f[b"m"].decode(), f[b"i"].decode(), int(f[b"s"])))
                    last = events[-1].offset
                    self._hand_over(events, seqs, known)
                except redis.RedisError as exc:
                    if self._stopping.is_set():
                        break
                    self._loop_client_id = None
                    self._reactor.callFromThread(self._link_down, str(exc) or type(exc).__name__)
                    r.close()
                    self._stopping.wait(backoff.next())
        finally:
            self._reactor.callFromThread(self._loop_done.callback, None)

    def _hand_over(self, events: list[Event], seqs: list[tuple[str, str, int]], known: int | None) -> None:
        """Hand a batch to the reactor (reader thread); at most two are in the reactor's hands
        at a time, which bounds what the loop holds."""
        self._in_flight.acquire()
        self._reactor.callFromThread(self._deliver, events, seqs, known)

    def _check_epoch(self, r: Any) -> int | None:
        """The stream head (the counter), and a replaced stream reported (reader thread)."""
        epoch, counter = r.mget(self._keys[0], self._keys[1])
        if epoch is None or epoch.decode() != self.epoch:
            self._reactor.callFromThread(self._stream_replaced, epoch.decode() if epoch else "")
        return int(counter) if counter is not None else None

    # -- in the reactor thread ---------------------------------------------------------------

    def _deliver(self, events: list[Event], seqs: list[tuple[str, str, int]], known: int | None) -> None:
        """Hand a batch read from the stream to the listeners, in offset order, then answer
        the appends it completes."""
        try:
            fresh = [e for e in events if e.offset > self.head]
            if not fresh:
                return
            for (master, inc, seq), e in zip(seqs, events, strict=True):
                if e.offset > self.head:
                    self._latest[master] = (inc, seq)
            self.head = fresh[-1].offset
            self._stream_head = max(self._stream_head, self.head, known or 0)
            if self.earliest > fresh[0].offset:
                self.earliest = fresh[0].offset
            self._link_up(None)
            for listener in self._listeners:
                try:
                    listener(fresh)
                except Exception:
                    self.log.failure("journal listener failed")
            done = [w for w in self._waiting if w[0] <= self.head]
            if done:
                self._waiting = [w for w in self._waiting if w[0] > self.head]
                for _, bd, result in done:
                    bd.callback(result)
        finally:
            self._in_flight.release()

    def _link_up(self, known: int | None) -> None:
        if known is not None:
            self._stream_head = max(known, self.head)
        if not self._connected:
            self.log.info("Redis journal: the link to {url} is back", url=_redact(self.url))
        self._connected = True
        if self._write_lost_link:
            # The last write failed only because Redis was unreachable: Redis answering again is
            # the proof that writes can reach it, so the node is healthy again without waiting
            # for an ingest (which a load balancer checking /health would never send it).
            self._write_lost_link = False
            self.write_health.succeeded()

    def _link_down(self, why: str) -> None:
        """The reader (or the writer) lost Redis: appends waiting for delivery are answered
        503 now (their batches may be stored: the retry is then a duplicate)."""
        if self._connected:
            self.log.warn("Redis journal: lost the link to {url}: {why}", url=_redact(self.url), why=why)
        self._connected = False
        self._last_error = why
        waiting, self._waiting = self._waiting, []
        for _, bd, _ in waiting:
            bd.errback(JournalError(f"Redis link lost before the batch was delivered ({why}); a retry is safe"))

    def _stream_replaced(self, current: str) -> None:
        if self._replaced is not None:
            return
        now = f"epoch {current}" if current else "no epoch"
        self._replaced = (
            f"the shared Redis stream of epoch {self.epoch} is gone ({now} in Redis: flushed or "
            "replaced): restart this node to join the new stream"
        )
        self.log.error("Redis journal: {why}", why=self._replaced)
        self._last_error = self._replaced
        self.write_health.failed(self._replaced, self._clock.seconds())

    @property
    def where(self) -> str:
        """The stream, for the start-up log line (password left out)."""
        return f"Redis {_redact(self.url)}"

    def link(self) -> dict[str, Any]:
        """The Redis link for ``/health`` and ``/metrics``: connected, this node's lag behind
        the stream head (events), the last error."""
        return {
            "connected": self._connected and self._replaced is None,
            "lag": max(0, self._stream_head - self.head),
            "last_error": self._last_error,
            "url": _redact(self.url),
        }


def _redact(url: str) -> str:
    """``url`` without a password, for logs and ``/health``."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
