"""How the build state gets to the journal's head at start: a checkpoint file, then the events
after it; or, without a usable checkpoint, a replay of the journal in slices while the server
already serves (``/api`` answers 503 ``warming_up`` until it is done).

**The checkpoint** is the :class:`~firehose.state.BuildState` written next to the journal
(``<db>.state``) with the journal's epoch and the offset it reflects: at every clean stop, and
every ``checkpoint_interval`` seconds while running.  Pickling a full state takes a few hundred
milliseconds (20,000 builds: ~0.25 s), far too long for the reactor thread, so the periodic
checkpoint is written by a forked child (:func:`os.fork`, the way Redis writes its snapshots):
the fork itself takes a few milliseconds (4 to 16 ms with a full state), the child pickles its copy-on-write view of the state
at that instant, writes it and exits; the server goes on meanwhile.  A clean stop writes in the
process itself (nothing is left to serve).  Every write is atomic: a temporary file in the same
directory, ``fsync``, ``rename``, ``fsync`` of the directory; a crash at any point leaves the
previous checkpoint or the new one, never half of one.

A checkpoint is used only when every check passes, and otherwise ignored with a log line that
says why (never a crash):

* the file is whole: magic line, a JSON header, a payload of the length and SHA-256 the header
  names (a truncated, corrupt or foreign file fails here);
* its ``key`` is this server's :func:`state_key`: a hash of the format number, the Python
  version and the source of ``firehose/state.py`` and of the firehose modules it imports from
  (``pushes.py``, ...), so any change to the state's shape (a new field, a new meaning)
  invalidates old checkpoints without anyone having to remember to;
* it is of this journal's epoch, its offset is neither ahead of the head nor before the oldest
  retained event (the events after it must all be in the journal), and it is at most
  :data:`STATE_WINDOW` events behind (replaying more would take longer than a rebuild);
* the journal's event at its offset is the one the state last applied (master, incarnation and
  seq; unique within an epoch), so a journal that lost its last events and numbered new ones
  in their place (``synchronous = NORMAL`` and a power cut) is not mistaken for the same history.

**Why pickle.** The state is nested dicts, ordered dicts, deques, sets and tuples (dict keys
included) whose insertion order matters; JSON would need a conversion both ways that costs more
than pickling and must be kept in step with every change to ``state.py``.  The file is the
server's own, in its data directory, created with mode 0600; whoever can write there can
already replace the journal.  Even so it is read with an unpickler that only resolves the
container types the state is made of and the classes defined in ``firehose.state`` and
``firehose.pushes``, so a foreign file cannot make the server run anything but those.

**Warming up** (:class:`StateFeed`): the state follows the journal live from the moment the
feed starts (it is a journal listener), while it reads the journal from its offset in pages and
applies them in slices of about 10 ms a reactor turn, so ingest and fan-out keep running.  Live
events are buffered until the replay has reached the offset the buffer starts at; then the
buffer is applied (``BuildState.apply`` drops what the replay already applied, by offset) and
the feed is :attr:`~StateFeed.ready`.  No event is applied twice or skipped, and all in offset
order.  The buffer is bounded: past :attr:`StateFeed.max_buffer` events it is dropped and the
replay reads those events from the journal instead.

**The cyclic garbage collector.** Building a state makes hundreds of thousands of containers
that live long; each full collection walks all of them (replaying 200,000 events made a dozen
full collections, about 3 s of CPU in all, each a pause of the reactor of up to a second).  So
the server freezes them (:func:`gc.freeze`) as it goes: after each full page of a warm-up and
after loading a large checkpoint.  Frozen objects are still freed when nothing refers to them
(the state holds no reference cycles); they are only no longer walked by the collector.  The
price is that a reference cycle alive at a freeze and garbage later is never collected, and a
page being applied is in such cycles (freezing inside the page's own call kept every page: 1 GB
after a 200,000-event warm-up).  So the freeze runs a reactor turn after the page, once nothing
refers to it, right after a collection of what the last freeze left unfrozen (the page's
garbage, a few milliseconds).  A warm-up takes about 40% less CPU, and no collection pauses the
reactor for long.

**Other journals.** ``:memory:`` has no checkpoint (nothing survives the process).  With
``--redis`` each node keeps its own checkpoint (``<db>.state``, ``--db`` then naming only where
local files go) of the shared stream, keyed by its epoch: any node's checkpoint is valid for
every node of the same stream, and a new epoch (an emptied Redis) makes it stale.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

import firehose.state
from firehose.event import Event
from firehose.files import write_atomically
from firehose.journal import IJournal
from firehose.state import BuildState

#: The file's format; bump it when the file layout (not the state) changes.
FORMAT = 1
MAGIC = b"FIREHOSE-STATE-CHECKPOINT\n"
#: Events the state is rebuilt from without a checkpoint (``BuildState.rebuild``'s window); a
#: checkpoint further behind the head than this is not worth replaying from.
STATE_WINDOW = 200_000
#: Events applied between two looks at the clock within a slice.
_CHUNK = 100
#: Largest header line read (the header is a small JSON object).
_MAX_HEADER = 64 * 1024

#: An event's identity within an epoch: (master, incarnation, seq); dedup makes it unique.
EventKey = tuple[str, str, int]

log = Logger(namespace="firehose.checkpoint")


class CheckpointRejected(Exception):
    """A checkpoint that is not used; the message says why, for the log."""


def _state_modules() -> list[Any]:
    """``firehose.state`` and the firehose modules it takes names from (``firehose.pushes``
    holds the pushlog's cells): the code that decides what a state holds."""
    found = {"firehose.state": firehose.state}
    for value in vars(firehose.state).values():
        name = value.__name__ if isinstance(value, type(firehose)) else getattr(value, "__module__", None)
        if isinstance(name, str) and name.startswith("firehose.") and name in sys.modules:
            found.setdefault(name, sys.modules[name])
    return [found[name] for name in sorted(found)]


def _state_source() -> bytes:
    parts = []
    for module in _state_modules():
        path = getattr(module, "__file__", None)
        try:
            source = Path(path).read_bytes() if path else b""
        except OSError:
            source = b""
        if not source:
            return b""
        parts.append(module.__name__.encode() + b"\n" + source)
    return b"\0".join(parts)


def state_key(source: bytes | None = None) -> str:
    """The key a checkpoint must carry to be read by this server: the format, the Python
    version and the source of ``firehose/state.py`` and of the firehose modules it imports
    from, hashed.  Without the source (an installation of bytecode only) the package version
    stands in for it."""
    if source is None:
        source = _state_source() or f"firehose {firehose.__version__}".encode()
    h = hashlib.sha256()
    h.update(f"firehose state checkpoint format {FORMAT}\n".encode())
    h.update(f"python {sys.version_info[0]}.{sys.version_info[1]}\n".encode())
    h.update(source)
    return h.hexdigest()


def event_key(event: Event) -> EventKey:
    obj = event.obj
    return (str(obj["master"]), str(obj["incarnation"]), int(obj["seq"]))


@dataclass
class Checkpoint:
    """A checkpoint as read back: the state and what it reflects."""

    state: BuildState
    epoch: str
    #: The state's offset: every event up to it is applied, none after.
    offset: int
    #: The event at :attr:`offset`, when the state's last applied event is there.
    last: EventKey | None
    written_at: float
    size: int


# -- the file ----------------------------------------------------------------------------------


def write(path: str, state: BuildState, epoch: str, last: tuple[int, EventKey] | None,
          key: str | None = None, clock: Callable[[], float] = time.time) -> int:
    """Write ``state`` to ``path`` atomically; return the bytes written.

    :param last: ``(offset, event key)`` of the last event applied to the state; recorded
        only if that offset is the state's (otherwise the state moved past it with no event).
    """
    offset = int(state.offset)
    was_enabled = gc.isenabled()
    gc.disable()  # pickling allocates nothing worth collecting; a collection would only cost
    try:
        payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        if was_enabled:
            gc.enable()
    header = {
        "format": FORMAT,
        "key": key or state_key(),
        "epoch": epoch,
        "offset": offset,
        "last": list(last[1]) if last is not None and last[0] == offset else None,
        "written_at": clock(),
        "length": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    head = MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n"
    return write_atomically(path, (head, payload), tmp=f"{path}.tmp-{os.getpid()}")


#: Modules whose own classes a checkpoint may hold: those that define the state's data (not,
#: say, ``firehose.journal``, whose classes open files when called).
_STATE_CLASS_MODULES = frozenset({"firehose.state", "firehose.pushes"})


class _Unpickler(pickle.Unpickler):
    """Resolves only what a state is made of: standard containers and the classes defined in
    ``firehose.state`` and ``firehose.pushes``.  Anything else (a foreign pickle's ``os.system``) is refused."""

    _ALLOWED = {
        ("collections", "OrderedDict"), ("collections", "deque"), ("collections", "defaultdict"),
        ("collections", "Counter"), ("builtins", "set"), ("builtins", "frozenset"),
        ("builtins", "bytearray"), ("builtins", "complex"), ("builtins", "slice"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if module in _STATE_CLASS_MODULES and module in sys.modules:
            found = getattr(sys.modules[module], name, None)
            if isinstance(found, type) and found.__module__ == module:
                return found
        raise pickle.UnpicklingError(f"refusing {module}.{name}: not part of a build state")


def _header(f: Any) -> dict[str, Any]:
    if f.read(len(MAGIC)) != MAGIC:
        raise CheckpointRejected("not a firehose state checkpoint (no magic line)")
    line = f.readline(_MAX_HEADER)
    if not line.endswith(b"\n"):
        raise CheckpointRejected("truncated: the header line is incomplete")
    try:
        header = json.loads(line)
    except ValueError:
        raise CheckpointRejected("corrupt: the header is not JSON") from None
    if not isinstance(header, dict):
        raise CheckpointRejected("corrupt: the header is not a JSON object")
    if header.get("format") != FORMAT:
        raise CheckpointRejected(f"written in format {header.get('format')!r}; this server reads format {FORMAT}")
    types: dict[str, type | tuple[type, ...]] = {
        "key": str, "epoch": str, "offset": int, "length": int, "sha256": str, "written_at": (int, float),
    }
    for name, kind in types.items():
        if not isinstance(header.get(name), kind) or isinstance(header.get(name), bool):
            raise CheckpointRejected(f"corrupt: the header's {name!r} is missing or of the wrong type")
    last = header.get("last")
    if last is not None and not (
        isinstance(last, list) and len(last) == 3 and isinstance(last[0], str) and isinstance(last[1], str)
        and isinstance(last[2], int)
    ):
        raise CheckpointRejected("corrupt: the header's 'last' is not [master, incarnation, seq]")
    return header


def read(path: str, key: str | None = None) -> Checkpoint:
    """Read and check the checkpoint at ``path``.

    :raises FileNotFoundError: there is none.
    :raises CheckpointRejected: it cannot be used (the message says why).
    """
    try:
        with open(path, "rb") as f:
            header = _header(f)
            if header["key"] != (key or state_key()):
                raise CheckpointRejected(
                    "written by another version of the build state (firehose/state.py or Python changed)")
            left = os.fstat(f.fileno()).st_size - f.tell()
            if header["length"] != left:
                raise CheckpointRejected(f"truncated or padded: {left} bytes of state, the header says "
                                         f"{header['length']}")
            payload = f.read(left + 1)
    except (FileNotFoundError, CheckpointRejected):
        raise
    except OSError as exc:
        raise CheckpointRejected(f"cannot be read: {exc}") from None
    if len(payload) != header["length"]:
        raise CheckpointRejected(f"truncated or padded: {len(payload)} bytes of state, the header says "
                                 f"{header['length']}")
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise CheckpointRejected("corrupt: its SHA-256 does not match the header's")
    was_enabled = gc.isenabled()
    # Loading makes hundreds of thousands of small containers: with the collector on, its
    # passes over them take longer than the loading itself (0.30 s instead of 0.08 s).
    gc.disable()
    try:
        state = _Unpickler(io.BytesIO(payload)).load()
    except Exception as exc:
        raise CheckpointRejected(f"its state cannot be loaded: {type(exc).__name__}: {exc}") from None
    finally:
        if was_enabled:
            gc.enable()
    if not isinstance(state, BuildState):
        raise CheckpointRejected(f"holds a {type(state).__name__}, not a BuildState")
    if getattr(state, "offset", None) != header["offset"]:
        raise CheckpointRejected(f"its state is at offset {getattr(state, 'offset', None)}, the header says "
                                 f"{header['offset']}")
    last = header["last"]
    return Checkpoint(state, header["epoch"], header["offset"], (last[0], last[1], last[2]) if last else None,
                      float(header["written_at"]), len(payload))


def remove_leftovers(path: str) -> None:
    """Remove temporary files of writes that never finished (a process killed while writing)."""
    directory = Path(os.path.abspath(path)).parent
    prefix = os.path.basename(path) + ".tmp-"
    try:
        names = [p for p in directory.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for p in names:
        try:
            p.unlink()
        except OSError:
            pass


@defer.inlineCallbacks
def restore(path: str, journal: IJournal, window: int = STATE_WINDOW, key: str | None = None) -> Any:
    """The checkpoint at ``path`` if it can continue ``journal``, else ``None``; what was found
    is logged either way.  Fires with ``(checkpoint or None, why)``; never fails."""
    try:
        found = read(path, key)
    except FileNotFoundError:
        return None, "no checkpoint"
    except CheckpointRejected as exc:
        return _ignored(path, str(exc))
    except Exception as exc:  # nothing about a checkpoint may stop the server from starting
        return _ignored(path, f"cannot be read: {type(exc).__name__}: {exc}")
    head, earliest = journal.head, journal.earliest
    if found.epoch != journal.epoch:
        return _ignored(path, f"it is of epoch {found.epoch}, the journal's is {journal.epoch}")
    if found.offset > head:
        return _ignored(path, f"it is at offset {found.offset}, ahead of the journal's head {head}")
    if found.offset < earliest - 1:
        return _ignored(path, f"it is at offset {found.offset}, and retention removed events after it "
                              f"(the oldest retained is {earliest})")
    if head - found.offset > window:
        return _ignored(path, f"it is {head - found.offset:,} events behind the head: rebuilding from the "
                              f"newest {window:,} is quicker")
    if found.last is not None and found.offset >= earliest:
        try:
            events = yield journal.read(found.offset - 1, 1)
        except Exception as exc:
            return _ignored(path, f"the journal's event at offset {found.offset} cannot be read: {exc}")
        if events and events[0].offset == found.offset and event_key(events[0]) != found.last:
            return _ignored(path, f"the journal's event at offset {found.offset} is not the one the state "
                                  f"applied: the journal was rewritten after it")
    return found, "ok"


def _ignored(path: str, why: str) -> tuple[None, str]:
    log.warn("state: ignoring the checkpoint {path}: {why}; rebuilding the state from the journal",
             path=path, why=why)
    return None, why


# -- warming up --------------------------------------------------------------------------------


def collect_and_freeze() -> None:
    """Collect what the last freeze left unfrozen, then freeze what survives (see the module's
    docstring): only garbage-free, long-lived objects leave the collector's reach."""
    gc.collect()
    gc.freeze()


class StateFeed:
    """Brings a :class:`BuildState` from its offset to the journal's head, then keeps it there.

    :param start_after: the journal offset to replay from: the checkpoint's, or the start of
        the window (``max(earliest - 1, head - STATE_WINDOW)``).
    :param source: ``"checkpoint"`` or ``"journal"``, for ``/health`` and the log.
    :param slice_seconds: the longest a slice of replay may run before the reactor's next turn.
    :param timer: the clock slices are measured with (a monotonic one).
    :param freeze_gc: after each full page, move every object then alive out of the cyclic
        collector's reach (:func:`gc.freeze`), as the server does (see the module docstring);
        a short replay (a small journal, a test's) freezes nothing.
    """

    def __init__(
        self,
        state: BuildState,
        journal: IJournal,
        clock: IReactorTime,
        *,
        start_after: int,
        source: str,
        page: int = 2_000,
        slice_seconds: float = 0.01,
        max_buffer: int = 50_000,
        timer: Callable[[], float] = time.perf_counter,
        last: tuple[int, EventKey] | None = None,
        freeze_gc: bool = False,
    ) -> None:
        self.state = state
        self.freeze_gc = freeze_gc
        self.journal = journal
        self.clock = clock
        self.source = source
        self.page = page
        self.slice_seconds = slice_seconds
        self.max_buffer = max_buffer
        self._timer = timer
        #: ``(offset, key)`` of the last event applied (checkpoints record it).
        self.last = last
        #: True once the state has caught up with the journal: every answer is then correct.
        self.ready = False
        #: Events replayed from the journal and the buffer so far.
        self.replayed = 0
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self._t0 = 0.0
        self._after = start_after
        self._start_after = start_after
        #: Live events that arrived before the state caught up: all of those after _buffer_from.
        self._buffer: list[Event] = []
        self._buffer_from = 0
        self.dropped = 0
        self._stopped = False
        self._later: IDelayedCall | None = None
        self._waiting: list[defer.Deferred[None]] = []

    @property
    def to_replay(self) -> int:
        """Events between where the replay starts and the head (an estimate: retention may
        have removed some)."""
        return max(0, self.journal.head - max(self._start_after, self.journal.earliest - 1))

    def start(self) -> defer.Deferred[None]:
        """Follow the journal and start replaying; fires once :attr:`ready`."""
        self.started_at = self.clock.seconds()
        self._t0 = self._timer()
        # Listening first: every event after this head reaches the buffer, every one up to it
        # is in the journal for the replay to read.
        self._buffer_from = self.journal.head
        self.journal.listen(self._live)
        self._read_next()
        return self.when_ready()

    def when_ready(self) -> defer.Deferred[None]:
        if self.ready:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d

    def stop(self) -> None:
        """Stop replaying (the server is stopping).  Live events are still applied if ready."""
        self._stopped = True
        if self._later is not None and self._later.active():
            self._later.cancel()
        self._later = None

    def progress(self) -> dict[str, Any]:
        """How far the warm-up is, for ``/health`` and the 503 answers."""
        head = self.journal.head
        remaining = max(0, head - self.state.offset)
        done = self.replayed
        elapsed = (self._timer() - self._t0) if self.started_at is not None else 0.0
        total = done + remaining
        return {
            "source": self.source,
            "replayed": done,
            "remaining": remaining,
            "percent": round(100.0 * done / total, 1) if total else 100.0,
            "elapsed": round(elapsed, 3),
        }

    def retry_after(self) -> int:
        """Whole seconds until the state is likely ready (1 to 30), from the rate so far."""
        p = self.progress()
        rate = p["replayed"] / p["elapsed"] if p["elapsed"] > 0 and p["replayed"] else 0.0
        if rate <= 0:
            return 1
        return int(min(30, max(1, -(-p["remaining"] // rate))))

    # Live events.

    def _live(self, events: list[Event]) -> None:
        if self.ready:
            self._apply(events)
            return
        self._buffer.extend(events)
        if len(self._buffer) > self.max_buffer:
            # The replay will read these from the journal: memory stays bounded.
            self.dropped += len(self._buffer)
            self._buffer_from = self._buffer[-1].offset
            self._buffer = []

    # The replay.

    def _read_next(self) -> None:
        if self._stopped:
            return
        issued_head = self.journal.head
        d = self.journal.read(self._after, self.page)
        d.addCallbacks(self._got_page, self._read_failed, callbackArgs=(issued_head,))

    def _read_failed(self, failure: Any) -> None:
        if self._stopped:
            return
        log.failure("state: reading the journal to warm up failed; trying again in 1 s", failure)
        self._later = self.clock.callLater(1.0, self._read_next)

    def _got_page(self, events: list[Event], issued_head: int) -> None:
        if self._stopped:
            return
        self._apply_sliced(events, lambda: self._page_done(events, issued_head))

    def _page_done(self, events: list[Event], issued_head: int) -> None:
        if self.freeze_gc and len(events) >= self.page:
            self.clock.callLater(0, collect_and_freeze)
        if events:
            self._after = max(self._after, events[-1].offset)
        if len(events) < self.page:
            # Every event up to issued_head was read (or is gone with retention): the state
            # reflects that head even where no event is retained, as BuildState.rebuild does.
            self._after = max(self._after, issued_head)
            if self.state.offset < issued_head:
                self.state.offset = issued_head
        if self.state.offset >= self._buffer_from:
            self._drain()
        else:
            self._read_next()

    def _drain(self) -> None:
        """Apply the buffered live events; ready when none is left."""
        if self._stopped:
            return
        if self.state.offset < self._buffer_from:
            # The buffer was dropped since: read what it held from the journal.
            self._after = max(self._after, self.state.offset)
            self._read_next()
            return
        if not self._buffer:
            self._become_ready()
            return
        batch, self._buffer = self._buffer, []
        self._apply_sliced(batch, self._drain)

    def _become_ready(self) -> None:
        self.ready = True
        self.ready_at = self.clock.seconds()
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def _apply_sliced(self, events: list[Event], then: Callable[[], None]) -> None:
        """Apply ``events`` a slice per reactor turn, then call ``then`` (on a later turn, so a
        replay of many pages never nests calls)."""
        position = 0

        def step() -> None:
            nonlocal position
            self._later = None
            if self._stopped:
                return
            deadline = self._timer() + self.slice_seconds
            while position < len(events):
                chunk = events[position:position + _CHUNK]
                position += len(chunk)
                self._apply(chunk)
                self.replayed += len(chunk)
                if self._timer() >= deadline:
                    break
            self._later = self.clock.callLater(0, step if position < len(events) else then)

        step()

    def _apply(self, events: list[Event]) -> None:
        """Apply ``events``; one that makes the state raise is logged and skipped alone (the
        state's offset has moved past it, so applying the list again resumes after it)."""
        state = self.state
        for _attempt in range(len(events) + 1):
            try:
                state.apply(events)
                break
            except Exception:
                log.failure("state: applying the event at offset {offset} failed; skipping it", offset=state.offset)
        if events and events[-1].offset == state.offset:
            self.last = (state.offset, event_key(events[-1]))


# -- writing checkpoints -----------------------------------------------------------------------


class Checkpointer:
    """Writes the feed's state to ``path``: :meth:`save` now (at a clean stop), and every
    ``interval`` seconds in a forked child while running (:meth:`start`).

    :param fork: write periodic checkpoints in a forked child (the default where the platform
        has ``fork``); ``False`` writes them in the process (tests; a small state).
    """

    #: Seconds between two looks at whether the child has exited.
    POLL = 0.05

    def __init__(
        self,
        path: str,
        feed: StateFeed,
        journal: IJournal,
        clock: IReactorTime,
        interval: float,
        fork: bool | None = None,
        key: str | None = None,
    ) -> None:
        self.path = path
        self.feed = feed
        self.journal = journal
        self.clock = clock
        self.interval = interval
        self.fork = hasattr(os, "fork") if fork is None else fork
        self.key = key or state_key()
        #: Offset of the newest checkpoint written (or loaded): nothing to write until it moves.
        self.saved_offset: int | None = None
        self.written = 0
        #: How long the last fork took: the only pause a periodic checkpoint makes.
        self.fork_seconds = 0.0
        self.fork_cpu_seconds = 0.0
        self._loop: LoopingCall | None = None
        self._child: tuple[int, int, float] | None = None  # pid, offset, when started
        self._poll: IDelayedCall | None = None

    def start(self) -> None:
        if self.interval > 0:
            self._loop = LoopingCall(self.tick)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False)

    def tick(self) -> None:
        """Write a checkpoint in the background if the state is ready and moved since the last."""
        state = self.feed.state
        if not self.feed.ready or self._child is not None or state.offset == self.saved_offset:
            return
        if not self.fork:
            self.save()
            return
        try:
            self._fork()
        except Exception:
            log.failure("state: cannot start the background checkpoint; the next period tries again")

    def _fork(self) -> None:
        state, epoch, last = self.feed.state, self.journal.epoch, self.feed.last
        offset = state.offset
        t0, c0 = time.perf_counter(), time.thread_time()
        pid = os.fork()
        if pid == 0:  # the child: write, and leave without running anything of the server's
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                gc.disable()
                write(self.path, state, epoch, last, self.key)
                code = 0
            except BaseException as exc:
                try:
                    os.write(2, f"firehose: background state checkpoint failed: {exc!r}\n".encode())
                except BaseException:
                    pass
            finally:
                os._exit(code)
        self.fork_seconds = time.perf_counter() - t0
        self.fork_cpu_seconds = time.thread_time() - c0
        self._child = (pid, offset, self.clock.seconds())
        self._poll = self.clock.callLater(self.POLL, self._reap)

    def _reap(self) -> None:
        self._poll = None
        if self._child is None:
            return
        pid, offset, started = self._child
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 1 << 8
        if not done:
            self._poll = self.clock.callLater(self.POLL, self._reap)
            return
        self._child = None
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            self.saved_offset = offset
            self.written += 1
            log.info("state: checkpoint written to {path} in the background (offset {offset}, {s:.2f} s; "
                     "the server paused {fork:.1f} ms to fork, {cpu:.1f} ms of CPU)",
                     path=self.path, offset=offset, s=self.clock.seconds() - started, fork=self.fork_seconds * 1e3,
                     cpu=self.fork_cpu_seconds * 1e3)
        else:
            log.warn("state: the background checkpoint failed (status {status}); the next period tries again",
                     status=status)
            try:
                os.unlink(f"{self.path}.tmp-{pid}")
            except OSError:
                pass

    def save(self) -> bool:
        """Write the checkpoint now, in this process; False (logged) if it could not be."""
        state = self.feed.state
        t0 = time.perf_counter()
        try:
            size = write(self.path, state, self.journal.epoch, self.feed.last, self.key)
        except Exception:
            log.failure("state: cannot write the checkpoint {path}", path=self.path)
            return False
        self.saved_offset = state.offset
        self.written += 1
        log.info("state: checkpoint written to {path} (offset {offset}, {size:,} bytes, {s:.2f} s)",
                 path=self.path, offset=state.offset, size=size, s=time.perf_counter() - t0)
        return True

    def stop(self, save: bool = True) -> None:
        """Stop the periodic checkpoints (ending a child still writing: the one written now
        supersedes it), then write one if ``save``."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = None
        if self._child is not None:
            pid = self._child[0]
            self._child = None
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
            try:
                os.unlink(f"{self.path}.tmp-{pid}")
            except OSError:
                pass
        if save:
            self.save()
