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
and trims in a small reader pool, and one reader thread per node runs ``XREAD BLOCK`` from the
last ID it delivered, handing each batch to the reactor with ``callFromThread``.
"""

from __future__ import annotations

import threading
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
# ARGV: epoch, received, then per event: master, incarnation, seq, type, body.
# Returns {'ok', off1, prev1, off2, prev2, ...} (off 0: a duplicate), {'epoch', current} or {'lost'}.
_APPEND = """
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then
  return {'epoch', current or ''}
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {'lost'}
end
local function above(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local out = {'ok'}
local mine = {}
for i = 3, #ARGV, 5 do
  local master, inc, seq = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local field = #master .. ':' .. master .. inc
  local last = mine[field] or redis.call('HGET', KEYS[4], field) or '0'
  if above(seq, last) then
    local off = redis.call('INCR', KEYS[2])
    redis.call('XADD', KEYS[3], off .. '-0', 't', ARGV[i + 3], 'm', master, 'i', inc, 's', seq,
               'r', ARGV[2], 'b', ARGV[i + 4])
    redis.call('HSET', KEYS[4], field, seq)
    redis.call('HSET', KEYS[5], master, inc)
    mine[field] = seq
    out[#out + 1] = off
    out[#out + 1] = last
  else
    out[#out + 1] = 0
    out[#out + 1] = last
  end
end
return out
"""

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
        self._pending: list[tuple[list[dict[str, Any]], list[bytes], defer.Deferred[AppendResult]]] = []
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
        except Exception as exc:
            return defer.fail(UnstorableBatch(f"the journal cannot store this batch: {exc}"))
        if self._replaced is not None:
            return defer.fail(JournalError(self._replaced))
        self._pending.append((events, bodies, d))
        if not self._writing:
            self._write_pending()
        return d

    def _write_pending(self) -> None:
        group, self._pending = self._pending, []
        self._writing = True
        args: list[Any] = [self.epoch, repr(self._clock.seconds())]
        for events, bodies, _ in group:
            for ev, body in zip(events, bodies, strict=True):
                args += [ev["master"], ev["incarnation"], str(ev["seq"]), ev["type"], body]
        d = deferToThreadPool(self._reactor, self._writer, self._store_sync, args)
        d.addBoth(self._written, group)

    def _store_sync(self, args: list[Any]) -> tuple[list[Any], int | None]:
        """Run the script; then ``WAIT`` for the replicas if asked.  Off the reactor thread."""
        reply = self._append_script(keys=self._keys, args=args, client=self._writer_redis)
        acked = None
        if self.wait_replicas and reply and reply[0] == b"ok":
            acked = int(self._writer_redis.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms))
        return reply, acked

    def _written(
        self,
        outcome: tuple[list[Any], int | None] | Failure,
        group: list[tuple[list[dict[str, Any]], list[bytes], defer.Deferred[AppendResult]]],
    ) -> None:
        try:
            self._answer(outcome, group)
        except Exception:
            self.log.failure("Redis journal: answering a write failed")
            for _, _, bd in group:
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

    def _answer(
        self,
        outcome: tuple[list[Any], int | None] | Failure,
        group: list[tuple[list[dict[str, Any]], list[bytes], defer.Deferred[AppendResult]]],
    ) -> None:
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
            reply: list[Any] = []
            acked = None
        else:
            reply, acked = outcome
            status = reply[0].decode() if reply else "?"
            if status == "epoch":
                self._stream_replaced(reply[1].decode())
                error = JournalError(self._replaced or "the shared stream was replaced")
            elif status == "lost":
                self._stream_replaced("")
                error = JournalError(self._replaced or "the shared stream was lost")
        if error is not None:
            for _, _, bd in group:
                bd.errback(error)
            return
        self.write_health.succeeded()
        self._write_lost_link = False
        short = acked is not None and acked < self.wait_replicas
        if short:
            why = f"WAIT: {acked} of {self.wait_replicas} replicas acknowledged within {self.wait_timeout_ms} ms"
            self._last_error = why
            self.write_health.failed(why, self._clock.seconds())
        pos = 1
        for events, bodies, bd in group:
            result = AppendResult()
            for ev, body in zip(events, bodies, strict=True):
                offset, prev = int(reply[pos]), int(reply[pos + 1])
                pos += 2
                if not offset:
                    result.duplicates += 1
                    continue
                if ev["seq"] != prev + 1:
                    result.seq_gaps += 1
                obj = {"id": format_cursor(self.epoch, offset), **{k: ev[k] for k in
                       ("type", "master", "incarnation", "seq", "time", "data")}}
                result.accepted.append(_event(self.epoch, offset, ev["type"], body, obj))
                self._stream_head = max(self._stream_head, offset)
            if short:
                # Stored, but not on enough replicas: not acknowledged.  The retry is a duplicate.
                bd.errback(JournalError(f"journal write not replicated: {why}; the batch is stored, a retry is safe"))
            elif not result.accepted or result.accepted[-1].offset <= self.head:
                bd.callback(result)
            else:
                self._waiting.append((result.accepted[-1].offset, bd, result))

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
        """``XREAD BLOCK`` from the last delivered ID; each batch goes to the reactor.  On a
        connection error: back off and resume from the same ID, so nothing is skipped."""
        last = head
        backoff = Backoff(initial=0.1, maximum=5.0)
        r = self._loop_redis
        try:
            while not self._stopping.is_set():
                try:
                    if self._loop_client_id is None:
                        self._loop_client_id = int(r.client_id())
                        self._reactor.callFromThread(self._link_up, None)
                    reply = r.xread({self._stream: f"{last}-0"}, count=READ_COUNT, block=BLOCK_MS)
                    backoff.reset()
                    entries = reply[0][1] if reply else []
                    known = None
                    if not entries or len(entries) == READ_COUNT:
                        # Idle, or behind: learn the stream head (lag) and check the epoch.
                        epoch, counter = r.mget(self._keys[0], self._keys[1])
                        if epoch is None or epoch.decode() != self.epoch:
                            self._reactor.callFromThread(self._stream_replaced, epoch.decode() if epoch else "")
                        known = int(counter) if counter is not None else None
                    if not entries:
                        self._reactor.callFromThread(self._link_up, known)
                        continue
                    epoch_ = self.epoch
                    events = []
                    seqs = []
                    for entry_id, f in entries:
                        offset = _offset(entry_id)
                        events.append(_event(epoch_, offset, f[b"t"].decode(), f[b"b"]))
                        seqs.append((f[b"m"].decode(), f[b"i"].decode(), int(f[b"s"])))
                    last = events[-1].offset
                    self._in_flight.acquire()
                    self._reactor.callFromThread(self._deliver, events, seqs, known)
                except redis.RedisError as exc:
                    if self._stopping.is_set():
                        break
                    self._loop_client_id = None
                    self._reactor.callFromThread(self._link_down, str(exc) or type(exc).__name__)
                    r.close()
                    self._stopping.wait(backoff.next())
        finally:
            self._reactor.callFromThread(self._loop_done.callback, None)

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
