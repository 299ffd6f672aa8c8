"""Where hooks and their delivery state (cursor, failures) are kept between runs.

Two stores with one shape (``load``, ``save``, ``close``): in memory (tests, ``:memory:``
journals) and a JSON file next to the journal, written atomically in a thread, never on the
reactor.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from firehose.files import write_atomically
from firehose.webhooks.errors import WebhookError


class HookStore(Protocol):
    """What the dispatcher needs of a store."""

    def load(self) -> dict[str, dict[str, Any]]:
        """Every stored hook's record, by id (called once, before the server listens)."""

    def save(self, state: dict[str, dict[str, Any]]) -> defer.Deferred[None]:
        """Keep ``state`` (every hook's record); fires once it is stored."""

    def close(self) -> defer.Deferred[None]:
        """Finish pending saves and release what the store holds."""


class MemoryHookStore:
    """Keeps hook state in memory (tests, ``:memory:`` journals)."""

    def __init__(self, initial: dict[str, dict[str, Any]] | None = None) -> None:
        self.state: dict[str, dict[str, Any]] = dict(initial or {})
        self.saves = 0

    def load(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self.state.items()}

    def save(self, state: dict[str, dict[str, Any]]) -> defer.Deferred[None]:
        self.state = state
        self.saves += 1
        return defer.succeed(None)

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)


class JSONFileHookStore:
    """Hook state in a JSON file, replaced atomically (write, fsync, rename) in a thread.

    Saves are coalesced: while one write runs, later states replace each other and only the
    newest is written next.  The file holds the hooks' secrets, so it is created mode 0600.
    """

    log = Logger()

    def __init__(self, path: str, reactor: Any) -> None:
        self.path = path
        self.reactor = reactor
        self._pool = ThreadPool(1, 1, "firehose-webhook-state")
        self._pool.start()
        self._writing = False
        self._next: dict[str, dict[str, Any]] | None = None
        self._idle: list[defer.Deferred[None]] = []

    def load(self) -> dict[str, dict[str, Any]]:
        """Read the file (once, at start-up, before the server listens)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise WebhookError(f"cannot read webhook state {self.path!r}: {exc}") from None
        return dict(data.get("hooks", {}))

    def save(self, state: dict[str, dict[str, Any]]) -> defer.Deferred[None]:
        self._next = state
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        if not self._writing:
            self._write_next()
        return d

    def _write_next(self) -> None:
        state, self._next = self._next, None
        waiting, self._idle = self._idle, []
        self._writing = True
        d = deferToThreadPool(self.reactor, self._pool, write_json_atomically, self.path, {"hooks": state})

        def done(result: Any) -> None:
            self._writing = False
            if hasattr(result, "getErrorMessage"):
                self.log.error("cannot save webhook state to {path}: {e}", path=self.path,
                               e=result.getErrorMessage())
            if self._next is not None:
                self._write_next()
            else:
                waiting.extend(self._idle)
                self._idle = []
            for w in waiting:
                w.callback(None)

        d.addBoth(done)

    def close(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.succeed(None)
        if self._writing or self._next is not None:
            d = defer.Deferred()
            self._idle.append(d)
        d.addBoth(lambda _: self._pool.stop())
        return d


def write_json_atomically(path: str, obj: Any) -> None:
    """Write ``obj`` to ``path`` so that a crash leaves either the old or the new file."""
    write_atomically(path, [json.dumps(obj, indent=1, sort_keys=True).encode()])

