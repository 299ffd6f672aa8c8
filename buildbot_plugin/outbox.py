"""Delivery of encoded events to the firehose server: batching, retry, disk spool.

The outbox owns every event from the moment it has a sequence number until the server has
acknowledged it (HTTP 200 means durable) or it is recorded as dropped.  Its invariants:

* **Order.** Events leave in sequence order.  The spool on disk always holds the *oldest*
  unacknowledged events and memory the newest, so delivery drains the spool first.
* **One request at a time.**  A batch is retried until acknowledged; a single delivery loop
  does everything (sending, spilling to disk, waiting), so nothing can overtake anything.
* **Bounded.**  Memory holds at most ``memory_max_bytes`` (the surplus spills to disk, and past
  twice that while a request is in flight new events are dropped); the spool holds at most
  ``spool_max_bytes``.  Every drop is logged loudly and recorded in ``dropped.jsonl`` as
  ``(master, incarnation, first_seq, last_seq)`` ranges.
* **Never on the caller's path.**  :meth:`Outbox.put` appends to a deque and returns; disk I/O
  happens in a thread (``run_in_thread``), network I/O in the reactor.
* **Failover.**  With several senders (one per node of one firehose), a batch that fails in a
  way another node may not (connection refused or reset, timeout, 5xx, 408, 429) is retried at
  once on the next one, round robin; only when every node has failed in a row does the loop
  back off.  A success keeps the outbox on that node (sticky: alternating would spread one
  master's batches over nodes for no gain).  The batch and its ``(incarnation, seq)`` are the
  same whichever node gets it, so order and dedup are unchanged: a batch the first node stored
  but did not acknowledge is dropped as a duplicate by the next one *if they share a journal*.

The spool is a directory of segment files (``<number>.jsonl``, one encoded event per line),
written whole to a temporary name and renamed, so a crash never leaves a torn segment.  It
survives a master restart: on start the outbox delivers what it finds there before anything new.
"""

from __future__ import annotations

import collections
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.python import log

from firehose.backoff import Backoff
from firehose.event import dumps, loads

#: ``sender(body) -> Deferred[(status code, response body)]``; failing means "not delivered".
Sender = Callable[[bytes], "defer.Deferred[tuple[int, bytes]]"]
#: ``run_in_thread(f, *args) -> Deferred`` of ``f(*args)`` run off the reactor thread.
RunInThread = Callable[..., "defer.Deferred[Any]"]

KIB = 1024
MIB = 1024 * KIB


@dataclass(slots=True)
class Item:
    """One encoded event waiting for delivery."""

    master: str
    incarnation: str
    seq: int
    body: bytes


@dataclass(slots=True)
class _Segment:
    """A spool file: its path and what it holds (for bounds and drop records)."""

    path: str
    count: int
    size: int


def _write_segment(directory: str, name: str, lines: list[bytes]) -> int:
    """Write a whole segment atomically (temporary file, fsync, rename); return its size."""
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, name + ".tmp")
    data = b"\n".join(lines) + b"\n"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(directory, name + ".jsonl"))
    return len(data)


def _read_segment(path: str) -> list[Item]:
    """Read a segment back; a line that does not decode is skipped (and logged)."""
    items = []
    with open(path, "rb") as fh:
        for raw in fh:
            raw = raw.rstrip(b"\n")
            if not raw:
                continue
            try:
                obj = loads(raw)
                items.append(Item(obj["master"], obj["incarnation"], int(obj["seq"]), raw))
            except (ValueError, KeyError, TypeError):
                log.msg(f"firehose: skipping an unreadable line in spool segment {path}")
    return items


def _scan_spool(directory: str) -> list[tuple[str, int, int]]:
    """List existing segments in order as ``(path, count, size)``; remove torn temporaries."""
    if not os.path.isdir(directory):
        return []
    out = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(".tmp"):
            os.unlink(path)
        elif name.endswith(".jsonl") and name[:-6].isdigit():
            with open(path, "rb") as fh:
                count = sum(1 for line in fh if line.strip())
            out.append((path, count, os.path.getsize(path)))
    return out


def _append_lines(path: str, lines: list[bytes]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "ab") as fh:
        fh.write(b"\n".join(lines) + b"\n")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _name(sender: Any, index: int) -> str:
    """How logs name a node: its URL when the sender has one (``HttpSender``), else its rank."""
    return str(getattr(sender, "url", None) or f"node #{index + 1}")


def _sync_thread(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args)


class Outbox:
    """Batches, sends, retries and spools encoded events; see the module docstring.

    :param sender: posts one batch body; see :data:`Sender`.  A sequence of senders (one per
        node of the same firehose) enables failover between them, in that order.
    :param spool_dir: directory of the disk spool (created when first needed) and of
        ``dropped.jsonl``.
    :param reactor: provides ``callLater`` and ``seconds`` (a ``Clock`` in tests).
    :param run_in_thread: runs blocking file I/O off the reactor thread; ``None`` runs it inline
        (tests).
    :param batch_max_bytes: a batch body stays under this (the server's default limit is 1 MiB).
    :param batch_max_events: at most this many events per batch.
    :param flush_interval: the shortest time between the starts of two requests while events
        keep coming: an idle outbox sends a partial batch at once (at the end of the reactor
        turn, so a burst converted in one turn goes as one batch); one that sent less than
        this ago lets the batch gather until then.  ``0`` sends whenever no request is in
        flight (events gather only while one is).
    :param memory_max_bytes: above this, the oldest events in memory spill to the spool.
    :param spool_max_bytes: the spool never grows past this; events that do not fit are dropped
        and recorded.
    :param spool_after: while the server is failing, events older than this spill to disk, so a
        crash during an outage loses at most this much.
    :param backoff_initial: first retry delay; doubles per failure up to ``backoff_max``, with
        jitter (each delay is between 50% and 100% of the nominal one: :class:`Backoff`).
    :param rand: the jitter's random source, ``[0, 1)`` (tests pass a constant).
    :param segment_max_bytes: size of one spool file.
    """

    def __init__(
        self,
        *,
        sender: Sender | Sequence[Sender],
        spool_dir: str,
        reactor: Any,
        run_in_thread: RunInThread | None = None,
        batch_max_bytes: int = 256 * KIB,
        batch_max_events: int = 1000,
        flush_interval: float = 0.01,
        memory_max_bytes: int = 16 * MIB,
        spool_max_bytes: int = 256 * MIB,
        spool_after: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        segment_max_bytes: int = MIB,
        rand: Callable[[], float] = random.random,
    ) -> None:
        #: One sender per node; :attr:`sender` is the one in use.
        self.senders: list[Sender] = [sender] if callable(sender) else list(sender)
        if not self.senders:
            raise ValueError("Outbox needs at least one sender")
        self._current = 0
        #: Nodes that failed in a row since the last success or backoff (failover round).
        self._round = 0
        self.spool_dir = spool_dir
        self.reactor = reactor
        self.run_in_thread: RunInThread = run_in_thread or _sync_thread
        self.batch_max_bytes = batch_max_bytes
        self.batch_max_events = batch_max_events
        self.flush_interval = flush_interval
        self.memory_max_bytes = memory_max_bytes
        self.spool_max_bytes = spool_max_bytes
        self.spool_after = spool_after
        self.segment_max_bytes = segment_max_bytes
        #: The delay after each failed delivery; reset by a delivery that succeeds.
        self.backoff = Backoff(backoff_initial, backoff_max, rand=rand)

        self._memory: collections.deque[tuple[Item, float]] = collections.deque()
        self._memory_bytes = 0
        self._segments: collections.deque[_Segment] = collections.deque()
        self._spool_bytes = 0
        self._next_segment = 0
        self._head: list[Item] | None = None  # loaded events of the first segment
        self._head_pos = 0
        self._drops: list[dict[str, Any]] = []

        self._failures = 0
        self._split: int | None = None
        self._running = False
        self._stopping = False
        self._stop_deadline: IDelayedCall | None = None
        self._waiter: defer.Deferred[None] | None = None
        self._wait_call: IDelayedCall | None = None
        self._waiting_for: str | None = None
        self._inflight: defer.Deferred[Any] | None = None
        self._loop: defer.Deferred[None] | None = None
        #: When the last acknowledged request started (``flush_interval`` counts from it; a
        #: failed batch is retried without it).
        self._last_send = float("-inf")
        self._sent_at = float("-inf")

        #: Counters, for heartbeats, logs and tests.
        self.stats: dict[str, int] = collections.defaultdict(int)

    # -- public API ----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events not yet acknowledged (memory plus spool)."""
        spooled = sum(s.count for s in self._segments) - self._head_pos
        return len(self._memory) + spooled

    @property
    def spooled(self) -> int:
        """Events on disk awaiting delivery."""
        return sum(s.count for s in self._segments) - self._head_pos

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    @property
    def sender(self) -> Sender:
        """The sender batches go to now (it stays the same until it fails)."""
        return self.senders[self._current]

    @sender.setter
    def sender(self, value: Sender) -> None:
        """Replace the sender in use (tests wrap it; a one-URL reporter swaps it on reconfig)."""
        self.senders[self._current] = value

    def set_senders(self, senders: Sequence[Sender]) -> None:
        """Use a new list of nodes (reconfig), starting from the first; the batch in flight,
        if any, finishes on the old one."""
        if not senders:
            raise ValueError("Outbox needs at least one sender")
        self.senders = list(senders)
        self._current = 0
        self._round = 0

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Find what a previous run left in the spool, then start delivering."""
        found = yield self.run_in_thread(_scan_spool, self.spool_dir)
        for path, count, size in found:
            self._segments.append(_Segment(path, count, size))
            self._spool_bytes += size
            self._next_segment = max(self._next_segment, int(os.path.basename(path)[:-6]) + 1)
        if found:
            log.msg(f"firehose: {self.spooled} events left in the spool by a previous run; delivering them first")
        self._running = True
        self._loop = self._run()
        self._loop.addErrback(log.err, "firehose: delivery loop failed")

    def put(self, item: Item) -> None:
        """Queue an event for delivery; never blocks and never does I/O."""
        size = len(item.body)
        if self._memory_bytes + size > 2 * self.memory_max_bytes:
            # Only while a request is in flight can memory grow past the soft limit; this is
            # the hard one.
            self._drop([item], "memory full")
            return
        self._memory.append((item, self.reactor.seconds()))
        self._memory_bytes += size
        self.stats["queued"] += 1
        if self._waiting_for in ("work", "flush") and self._memory_ready():
            self._wake()
        elif self._waiting_for == "work" and self._wait_call is None:
            # At the end of this reactor turn: the rest of a burst converted in this turn
            # goes in the same batch.
            self._wait_call = self.reactor.callLater(0, self._wake)

    def stop(self, timeout: float = 5.0) -> defer.Deferred[None]:
        """Deliver what can be delivered within ``timeout``, spool the rest, and stop.

        The returned Deferred fires when the loop has ended and everything unacknowledged is
        on disk.
        """
        if not self._running or self._loop is None:
            return defer.succeed(None)
        self._stopping = True
        self._stop_deadline = self.reactor.callLater(timeout, self._deadline)
        self._wake()
        d: defer.Deferred[None] = defer.Deferred()
        self._loop.addBoth(lambda _: d.callback(None))
        return d

    # -- the delivery loop ---------------------------------------------------------------------

    def _deadline(self) -> None:
        self._stop_deadline = None
        if self._inflight is not None:
            self._inflight.cancel()
        self._wake()

    def _timed_out(self) -> bool:
        return self._stopping and self._stop_deadline is None

    @defer.inlineCallbacks
    def _run(self) -> Any:
        try:
            while True:
                if self._drops:  # (each call of an inlineCallbacks helper costs a generator)
                    yield self._write_drops()
                if self._stopping and (
                    # Mid failover round (self._round > 0), the next node is still worth a try.
                    self._timed_out() or (self._failures and not self._round) or not self._memory or self._segments
                ):
                    # Memory is newer than the spool: at stop it goes behind it, on disk.
                    break
                if self._spill_needed():
                    yield self._spill(self._spill_count())
                    continue
                if self._segments:
                    batch = yield self._spool_batch()
                    if not batch:
                        continue
                    from_spool = True
                elif self._memory:
                    # Events that were already waiting when the last request started (a
                    # backlog) go at once; fresh ones gather until flush_interval after it.
                    fresh = self._memory[0][1] >= self._last_send
                    delay = self._last_send + self.flush_interval - self.reactor.seconds() if fresh else 0
                    if delay > 0 and not self._memory_ready() and not self._stopping:
                        yield self._wait(delay, "flush")
                        continue
                    batch = self._memory_batch()
                    from_spool = False
                else:
                    yield self._wait(None, "work")
                    continue
                outcome = yield self._send(batch)
                if outcome == "ok" or outcome == "dropped":
                    self._last_send = self._sent_at
                    self._ack(len(batch), from_spool)
                    if outcome == "ok":
                        self._failures = 0
                        self._round = 0
                        self.backoff.reset()
                        self._split = None
                        self.stats["delivered"] += len(batch)
                    if from_spool:
                        yield self._trim_head()
                elif outcome == "split":
                    self._split = max(1, len(batch) // 2)
                    self._last_send = float("-inf")
                else:
                    self._last_send = float("-inf")
                    self._failures += 1
                    if outcome == "failover" and len(self.senders) > 1:
                        self._round += 1
                        self._next_node()
                        if self._round < len(self.senders):
                            continue  # the next node, at once
                    self._round = 0
                    if self._stopping:
                        continue
                    if self._spill_needed():
                        yield self._spill(self._spill_count())
                    yield self._wait(self.backoff.next(), "backoff")
            # Stopping: everything still in memory goes to disk for the next run.
            if self._memory:
                yield self._spill(len(self._memory))
            yield self._write_drops()
        finally:
            self._running = False
            if self._stop_deadline is not None and self._stop_deadline.active():
                self._stop_deadline.cancel()
            self._stop_deadline = None

    def _next_node(self) -> None:
        """Move to the next sender (round robin) after a failure another node may not have."""
        before = self._current
        self._current = (self._current + 1) % len(self.senders)
        self.stats["failovers"] += 1
        if self._failures <= len(self.senders) or self._failures % 10 == 0:  # not a line per retry
            log.msg(f"firehose: failing over from {_name(self.senders[before], before)} "
                    f"to {_name(self.senders[self._current], self._current)}")

    def _wait(self, delay: float | None, reason: str) -> defer.Deferred[None]:
        """Sleep until ``delay`` passes (``None``: forever) or :meth:`_wake` is called."""
        self._waiter = defer.Deferred()
        self._waiting_for = reason
        if delay is not None:
            self._wait_call = self.reactor.callLater(delay, self._wake)
        return self._waiter

    def _wake(self) -> None:
        if self._wait_call is not None:
            if self._wait_call.active():
                self._wait_call.cancel()
            self._wait_call = None
        waiter, self._waiter = self._waiter, None
        self._waiting_for = None
        if waiter is not None:
            waiter.callback(None)

    def _limits(self) -> tuple[int, int]:
        events = self.batch_max_events if self._split is None else min(self._split, self.batch_max_events)
        return events, self.batch_max_bytes

    def _memory_ready(self) -> bool:
        """A full batch is waiting in memory, so there is no reason to wait."""
        return len(self._memory) >= self.batch_max_events or self._memory_bytes >= self.batch_max_bytes

    def _take(self, items: Any) -> list[Item]:
        max_events, max_bytes = self._limits()
        batch: list[Item] = []
        size = 2
        for item in items:
            if batch and (
                len(batch) >= max_events or size + len(item.body) + 1 > max_bytes or item.master != batch[0].master
            ):
                break
            batch.append(item)
            size += len(item.body) + 1
        return batch

    def _memory_batch(self) -> list[Item]:
        return self._take(item for item, _ in self._memory)

    @defer.inlineCallbacks
    def _spool_batch(self) -> Any:
        if self._head is None:
            seg = self._segments[0]
            try:
                self._head = yield self.run_in_thread(_read_segment, seg.path)
            except OSError as exc:
                log.msg(f"firehose: cannot read spool segment {seg.path}: {exc}; skipping it")
                self._head = []
            self._head_pos = 0
            if len(self._head) != seg.count:
                seg.count = len(self._head)
        if self._head_pos >= len(self._head):
            yield self._trim_head()
            return []
        return self._take(self._head[self._head_pos :])

    def _ack(self, n: int, from_spool: bool) -> None:
        if from_spool:
            self._head_pos += n
            return
        for _ in range(n):
            item, _t = self._memory.popleft()
            self._memory_bytes -= len(item.body)

    @defer.inlineCallbacks
    def _trim_head(self) -> Any:
        """Delete the first spool segment once all of it is acknowledged."""
        if self._head is not None and self._head_pos >= len(self._head) and self._segments:
            seg = self._segments.popleft()
            self._spool_bytes -= seg.size
            self._head, self._head_pos = None, 0
            yield self.run_in_thread(_unlink, seg.path)

    @defer.inlineCallbacks
    def _send(self, batch: list[Item]) -> Any:
        """Post one batch; returns ``ok``, ``dropped``, ``split``, ``failover`` (another node
        may do better: unreachable, timed out, 5xx, 408, 429) or ``retry`` (after a backoff,
        on the same node: every node of one firehose would give the same answer)."""
        body = b"[" + b",".join(item.body for item in batch) + b"]"
        self.stats["requests"] += 1
        self._sent_at = self.reactor.seconds()
        try:
            self._inflight = self.sender(body)
            code, text = yield self._inflight
        except defer.CancelledError:
            if self._timed_out():
                return "retry"  # cancelled by stop(): not the node's fault
            self._note_failure("request timed out", len(batch))
            return "failover"
        except Exception as exc:  # noqa: BLE001 - any transport error means: retry
            self._note_failure(f"cannot reach the server: {exc}", len(batch))
            return "failover"
        finally:
            self._inflight = None
        if code == 200:
            if self._failures:
                log.msg(
                    f"firehose: server reachable again at {_name(self.sender, self._current)}; "
                    f"delivery resumed ({self.pending} pending)"
                )
            return "ok"
        message = text[:500].decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        if code == 413:
            if len(batch) > 1:
                return "split"
            self._drop(batch, "event larger than the server accepts (413)")
            return "dropped"
        if code in (400, 422):
            log.msg(f"firehose: the server rejected a batch ({code}): {message}; dropping it")
            self._drop(batch, f"rejected by the server ({code}): {message[:200]}")
            return "dropped"
        if code in (401, 403):
            self.stats["auth_failures"] += 1
            log.msg(
                f"firehose: ERROR: the server refused this master's credentials ({code}: {message}). "
                "Check the reporter's token and master_name; events are kept and retried."
            )
            return "retry"
        self._note_failure(f"server answered {code}: {message}", len(batch))
        return "failover" if code >= 500 or code in (408, 429) else "retry"

    def _note_failure(self, why: str, n: int) -> None:
        self.stats["failures"] += 1
        if not self._failures or self._failures % 10 == 0:
            log.msg(
                f"firehose: delivery of {n} events to {_name(self.sender, self._current)} failed ({why}); "
                f"retrying, {self.pending} pending"
            )

    # -- spool -------------------------------------------------------------------------------------

    def _spill_needed(self) -> bool:
        if not self._memory:
            return False
        if self._memory_bytes > self.memory_max_bytes:
            return True
        if self._segments and len(self._memory) >= self.batch_max_events:
            # Disk already holds older events: keep newer ones from piling up in memory.
            return self._failures > 0
        return self._failures > 0 and self.reactor.seconds() - self._memory[0][1] >= self.spool_after

    def _spill_count(self) -> int:
        if self._memory_bytes > self.memory_max_bytes:
            target = self.memory_max_bytes // 2
            n, size = 0, self._memory_bytes
            for item, _ in self._memory:
                if size <= target:
                    break
                size -= len(item.body)
                n += 1
            return n
        return len(self._memory)

    @defer.inlineCallbacks
    def _spill(self, n: int) -> Any:
        """Move the ``n`` oldest events in memory to new segments on disk, in order."""
        items = []
        for _ in range(n):
            item, _t = self._memory.popleft()
            self._memory_bytes -= len(item.body)
            items.append(item)
        while items:
            room = self.spool_max_bytes - self._spool_bytes
            chunk: list[Item] = []
            size = 0
            for item in items:
                grow = len(item.body) + 1
                if chunk and size + grow > self.segment_max_bytes:
                    break
                if size + grow > room:
                    break
                chunk.append(item)
                size += grow
            if not chunk:
                log.msg(f"firehose: ERROR: spool full ({self._spool_bytes} bytes in {self.spool_dir})")
                self._drop(items, "spool full")
                return
            items = items[len(chunk) :]
            name = f"{self._next_segment:012d}"
            self._next_segment += 1
            try:
                written = yield self.run_in_thread(_write_segment, self.spool_dir, name, [i.body for i in chunk])
            except OSError as exc:
                log.msg(f"firehose: ERROR: cannot write the spool in {self.spool_dir}: {exc}")
                self._drop(chunk + items, f"spool write failed: {exc}")
                return
            self._segments.append(_Segment(os.path.join(self.spool_dir, name + ".jsonl"), len(chunk), written))
            self._spool_bytes += written
            self.stats["spooled"] += len(chunk)

    # -- drop records --------------------------------------------------------------------------

    def _drop(self, items: list[Item], reason: str) -> None:
        """Record dropped events as contiguous ranges (written to ``dropped.jsonl`` by the loop)."""
        self.stats["dropped"] += len(items)
        now = self.reactor.seconds()
        for item in items:
            last = self._drops[-1] if self._drops else None
            if (
                last is not None
                and last["reason"] == reason
                and last["master"] == item.master
                and last["incarnation"] == item.incarnation
                and last["last_seq"] + 1 == item.seq
            ):
                last["last_seq"] = item.seq
                last["count"] += 1
                continue
            self._drops.append(
                {
                    "time": now,
                    "reason": reason,
                    "master": item.master,
                    "incarnation": item.incarnation,
                    "first_seq": item.seq,
                    "last_seq": item.seq,
                    "count": 1,
                }
            )
        if self._waiting_for in ("work", "flush"):
            self._wake()

    def record_unsequenced_drop(self, reason: str, count: int = 1) -> None:
        """Record events lost before they got a sequence number (e.g. an invalid event)."""
        self.stats["dropped_unsequenced"] += count
        self._drops.append({"time": self.reactor.seconds(), "reason": reason, "count": count})

    @defer.inlineCallbacks
    def _write_drops(self) -> Any:
        if not self._drops:
            return
        drops, self._drops = self._drops, []
        for d in drops:
            if "first_seq" in d:
                log.msg(
                    f"firehose: ERROR: DROPPED {d['count']} events of {d['master']} incarnation "
                    f"{d['incarnation']} seq {d['first_seq']}..{d['last_seq']}: {d['reason']}"
                )
        lines = [dumps(d) for d in drops]
        try:
            yield self.run_in_thread(_append_lines, os.path.join(self.spool_dir, "dropped.jsonl"), lines)
        except OSError as exc:
            log.msg(f"firehose: cannot record drops in {self.spool_dir}: {exc}")
