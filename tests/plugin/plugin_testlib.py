"""Shared helpers of the plugin tests: an ingest server stand-in and polling helpers.

``StubIngest`` implements the ``POST /ingest`` contract (bearer token, batch schema, dedup by
``(master, incarnation, seq)``) on a real loopback socket.  Tests that need "a firehose server"
use it through the small interface below (``url``, ``token``, ``events``, ``stop``, ``start``), so
the real server can be swapped in as one fixture without touching the tests.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.protocols import policies
from twisted.web import resource, server

from buildbot_plugin.outbox import Outbox
from firehose.event import dumps, loads
from firehose.schema import SchemaError, validate_batch

TOKEN = "test-token-1234"


class TempDirMixin:
    """Trial's ``mktemp`` writes under the current directory (the repo); use /tmp instead."""

    _tmp_root: str | None = None
    _tmp_count = 0

    def mktemp(self) -> str:
        import shutil
        import tempfile

        if self._tmp_root is None:
            self._tmp_root = tempfile.mkdtemp(prefix="firehose-plugin-")
            self.addCleanup(shutil.rmtree, self._tmp_root, True)  # type: ignore[attr-defined]
        self._tmp_count += 1
        return os.path.join(self._tmp_root, f"t{self._tmp_count}")


def quiet_warnings() -> None:
    """Undo ``buildbot.test``'s global ``filterwarnings('error')`` (see the notes)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning)


class _Ingest(resource.Resource):
    isLeaf = True

    def __init__(self, owner: StubIngest) -> None:
        super().__init__()
        self.owner = owner

    def render_POST(self, request: Any) -> bytes:
        o = self.owner
        o.requests += 1
        if o.fail_with is not None:
            request.setResponseCode(o.fail_with)
            return b'{"error":"unavailable"}'
        auth = request.getHeader("authorization") or ""
        if auth != f"Bearer {o.token}":
            request.setResponseCode(401)
            return b'{"error":"unauthorized"}'
        body = request.content.read()
        if len(body) > o.max_body:
            request.setResponseCode(413)
            return b'{"error":"too_large"}'
        try:
            batch = validate_batch(loads(body))
        except ValueError as exc:
            code = 422 if isinstance(exc, SchemaError) else 400
            o.rejected.append(str(exc))
            request.setResponseCode(code)
            return dumps({"error": "schema", "message": str(exc)})
        masters = {e["master"] for e in batch}
        assert len(masters) == 1, masters
        o.batches.append(batch)
        accepted = dups = 0
        for e in batch:
            k = (e["master"], e["incarnation"], e["seq"])
            if k in o.seen:
                dups += 1
                continue
            o.seen.add(k)
            o.events.append(e)
            accepted += 1
        request.setHeader("content-type", "application/json")
        return dumps({"accepted": accepted, "duplicates": dups, "cursor": f"0:{len(o.events)}"})


class StubIngest:
    """A recording ``/ingest`` endpoint on 127.0.0.1 (the real server's contract, in memory)."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.events: list[dict[str, Any]] = []
        self.batches: list[list[dict[str, Any]]] = []
        self.rejected: list[str] = []
        self.seen: set[tuple[str, str, int]] = set()
        self.requests = 0
        self.fail_with: int | None = None
        self.max_body = 1024 * 1024
        self.port: Any = None
        self._factory: Any = None
        self.portnum = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.portnum}"

    def start(self) -> None:
        """Listen (again, on the same port after a :meth:`stop`)."""
        site = server.Site(_Ingest(self))
        site.noisy = False
        self._factory = policies.WrappingFactory(site)
        self._factory.noisy = False
        self.port = reactor.listenTCP(self.portnum, self._factory, interface="127.0.0.1")
        self.portnum = self.port.getHost().port

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop listening and drop open connections (the server is "away")."""
        port, self.port = self.port, None
        if port is not None:
            yield port.stopListening()
        for proto in list(self._factory.protocols):
            proto.transport.abortConnection()

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] in types]


@defer.inlineCallbacks
def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` on the reactor until true; fail after ``timeout`` seconds.

    Used only to wait for another party (a server, a process), never as synchronisation
    inside one component.
    """
    steps = int(timeout / 0.02)
    for _ in range(steps):
        value = predicate()
        if value:
            return value
        yield task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


def make_outbox(clock: task.Clock, sender: Any, tmp_path: Any, **kw: Any) -> Outbox:
    """A started Outbox on ``clock`` posting through ``sender``, spooling under ``tmp_path``,
    with no jitter (``rand`` always 1.0)."""
    ob = Outbox(sender=sender, spool_dir=str(tmp_path / "spool"), reactor=clock, rand=lambda: 1.0, **kw)
    ob.start()
    return ob


def finish_outbox(ob: Outbox, clock: task.Clock) -> None:
    """Stop ``ob`` within its 1 s deadline; assert it stopped and left no delayed call."""
    d = ob.stop(timeout=1.0)
    clock.advance(1.0)
    assert d.called
    assert clock.getDelayedCalls() == []
