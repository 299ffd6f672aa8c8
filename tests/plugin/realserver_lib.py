"""Helpers for plugin tests against the REAL firehose server (not :class:`StubIngest`).

* :class:`RealServer`: a :class:`firehose.service.FirehoseServer` on 127.0.0.1 with an SQLite
  journal, in the test's reactor.  ``stop()`` then ``start()`` is a server restart on the same
  port and the same journal.  It reads back what it stored: the whole stream through
  ``/poll`` pages (:meth:`RealServer.read_all`) and the raw journal files
  (:meth:`RealServer.journal_bytes`).
* :class:`WSSubscriber`: an autobahn WebSocket client of ``/ws`` that subscribes
  (``since=earliest`` by default), records every event and control message, and - when the
  server goes away - reconnects and resumes from the id of the last event it saw, as a real
  subscriber would.
* :func:`start_master` / :func:`force_build`: in-process real Buildbot masters
  (``TestedRealMaster`` of ``RunMasterBase``), several per test if needed.
* :func:`check_stream`: the invariants every stream of plugin events must satisfy.

Every wait is bounded; waiting is polling a condition (``plugin_testlib.wait_for``), never a sleep.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterable
from typing import Any

from buildbot.test.util.integration import TestedRealMaster
from twisted.internet import defer, reactor

from firehose.config import Config
from firehose.schema import validate_event
from firehose.service import FirehoseServer

from .plugin_testlib import quiet_warnings, wait_for

quiet_warnings()  # after importing buildbot.test (see plugin_testlib.quiet_warnings)

from autobahn.twisted.websocket import (  # noqa: E402
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)

# -----------------------------------------------------------------------------------------------
# The server
# -----------------------------------------------------------------------------------------------


class RealServer:
    """The real firehose server, in-process, restartable on the same port and journal.

    :param db: path of the SQLite journal.
    :param tokens: master name -> ingest token.
    """

    def __init__(self, db: str, tokens: dict[str, str]) -> None:
        self.db = db
        self.tokens = dict(tokens)
        self.portnum = 0
        self.server: FirehoseServer | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.portnum}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.portnum}/ws"

    @property
    def running(self) -> bool:
        return self.server is not None

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Start (the first time on a free port, then always on that same port)."""
        assert self.server is None, "already running"
        server = FirehoseServer(
            Config(listen=f"tcp:{self.portnum}:interface=127.0.0.1", db=self.db, tokens=self.tokens),
            reactor,
        )
        yield server.start()
        self.server = server
        self.portnum = server.port.getHost().port
        self.starts += 1
        return self

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop listening, drop every connection (ingest and subscribers), close the journal."""
        server, self.server = self.server, None
        if server is not None:
            yield server.stop()

    # -- reading back ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def get_json(self, path: str, **params: Any) -> Any:
        """GET ``path`` (with query ``params``) on the server; the JSON answer (must be 200)."""
        from twisted.web.client import Agent, HTTPConnectionPool, readBody

        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, pool=pool)
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        response = yield agent.request(b"GET", f"{self.url}{path}{query}".encode())
        body = yield readBody(response)
        assert response.code == 200, (path, response.code, body[:500])
        return json.loads(body)

    @defer.inlineCallbacks
    def read_all(self) -> Any:
        """Every event the journal holds, in stream order, read as a subscriber would: ``/poll``
        pages from ``since=earliest`` up to the head cursor ``/health`` reports."""
        health = yield self.get_json("/health")
        head = health["cursor"]
        events: list[dict[str, Any]] = []
        cursor = "earliest"
        for _ in range(10_000):
            if events and events[-1]["id"] == head:
                return events
            if head == health["earliest"]:
                return events  # an empty journal
            # A short hold rather than timeout=0: events follow the cursor, so the answer is
            # immediate anyway; see tests/e2e/conftest.py Poller.assert_nothing_more.
            page = yield self.get_json("/poll", since=cursor, limit=1000, timeout=5)
            assert "gap" not in page, page
            events.extend(page["events"])
            cursor = page["cursor"]
        raise AssertionError("reading the journal did not reach its head")

    def journal_bytes(self) -> bytes:
        """The raw bytes of the journal files (database and write-ahead log)."""
        out = b""
        for suffix in ("", "-wal"):
            try:
                with open(self.db + suffix, "rb") as fh:
                    out += fh.read()
            except FileNotFoundError:
                pass
        return out


# -----------------------------------------------------------------------------------------------
# A WebSocket subscriber
# -----------------------------------------------------------------------------------------------


class _Protocol(WebSocketClientProtocol):
    owner: WSSubscriber

    def onOpen(self) -> None:
        self.owner._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.owner._message(json.loads(payload))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.owner._closed(self)


class _Factory(WebSocketClientFactory):
    protocol = _Protocol
    noisy = False

    def __init__(self, owner: WSSubscriber, url: str) -> None:
        super().__init__(url)
        self.owner = owner

    def buildProtocol(self, addr: Any) -> Any:
        proto = super().buildProtocol(addr)
        proto.owner = self.owner
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.owner._closed(None)


class WSSubscriber:
    """A WebSocket subscriber of ``/ws``: ``{"cmd": "subscribe", "since": ..., "filter": ...}``.

    ``events`` are the events received, in order; ``control`` the other messages (``subscribed``,
    ``gap``, ``error``...).  When the connection is lost (server restart) it reconnects every
    ``retry`` seconds, at most ``max_reconnects`` times in all, and resumes after the last event
    it received - so across a restart it must still see every event exactly once.
    """

    def __init__(
        self,
        ws_url: str,
        since: str | None = "earliest",
        filter: dict[str, Any] | None = None,
        retry: float = 0.1,
        max_reconnects: int = 1000,
    ) -> None:
        self.ws_url = ws_url
        self.since = since
        self.filter = filter or {}
        self.retry = retry
        self.max_reconnects = max_reconnects
        self.events: list[dict[str, Any]] = []
        self.control: list[dict[str, Any]] = []
        self.connections = 0
        self.attempts = 0
        self._proto: _Protocol | None = None
        self._stopped = False
        self._retry_call: Any = None
        self._closed_waiters: list[defer.Deferred[None]] = []
        self._connecting = False

    # -- API -------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Connect and subscribe; fires once the first ``subscribed`` acknowledgement arrived."""
        self._connect()
        yield wait_for(lambda: self.subscriptions, what="WebSocket subscribed")
        return self

    @property
    def subscriptions(self) -> int:
        return sum(1 for m in self.control if m.get("type") == "subscribed")

    @property
    def connected(self) -> bool:
        return self._proto is not None

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] in types]

    def of_master(self, master: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["master"] == master]

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Close the socket and stop reconnecting; fires when the connection is gone."""
        self._stopped = True
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        proto = self._proto
        if proto is not None or self._connecting:
            d: defer.Deferred[None] = defer.Deferred()
            self._closed_waiters.append(d)
            if proto is not None:
                proto.dropConnection(abort=True)
            yield d

    # -- internals -------------------------------------------------------------------------------

    def _connect(self) -> None:
        self._retry_call = None
        if self._stopped:
            return
        self.attempts += 1
        if self.attempts > self.max_reconnects:
            raise AssertionError(f"WebSocket: gave up after {self.max_reconnects} connection attempts")
        factory = _Factory(self, self.ws_url)
        factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=10, closeHandshakeTimeout=1)
        self._connecting = True
        connectWS(factory, timeout=10)

    def _opened(self, proto: _Protocol) -> None:
        self._connecting = False
        self._proto = proto
        if self._stopped:  # stop() came while connecting: it waits for this connection to end
            proto.dropConnection(abort=True)
            return
        self.connections += 1
        since = self.events[-1]["id"] if self.events else self.since
        proto.sendMessage(json.dumps({"cmd": "subscribe", "since": since, "filter": self.filter}).encode())

    def _message(self, msg: dict[str, Any]) -> None:
        if "." in str(msg.get("type", "")):
            self.events.append(msg)
        else:
            self.control.append(msg)

    def _closed(self, proto: _Protocol | None) -> None:
        if proto is not None and proto is not self._proto and self._proto is not None:
            return
        self._proto = None
        self._connecting = False
        if self._stopped:
            waiters, self._closed_waiters = self._closed_waiters, []
            for d in waiters:
                d.callback(None)
            return
        if self._retry_call is None:
            self._retry_call = reactor.callLater(self.retry, self._connect)


# -----------------------------------------------------------------------------------------------
# In-process masters
# -----------------------------------------------------------------------------------------------


_REACTOR_STOP = reactor.stop


@defer.inlineCallbacks
def start_master(case: Any, config_dict: dict[str, Any], basedir: str, proto: str = "null") -> Any:
    """Start a real master (``RunMasterBase``'s ``TestedRealMaster``) with a worker ``local1``;
    returns the ``TestedRealMaster`` (``.master`` is the ``BuildMaster``, ``.shutdown()`` stops
    it).  Several may run in one test."""
    if reactor.stop is not _REACTOR_STOP:
        # TestedRealMaster autospecs reactor.stop to patch it, which fails on the mock that a
        # previous master of this test left there (trial's patch undoes both, in order).
        case.patch(reactor, "stop", _REACTOR_STOP)
    tested = TestedRealMaster()
    yield tested.setup_master(case, reactor, config_dict, proto=proto, basedir=basedir)
    return tested


def reporter_of(master: Any) -> Any:
    """The master's running ``FirehoseReporter`` service."""
    return master.service_manager.namedServices["FirehoseReporter"]


@defer.inlineCallbacks
def builderid(master: Any, name: str) -> Any:
    builders = yield master.data.get(("builders",))
    return next(b["builderid"] for b in builders if b["name"] == name)


@defer.inlineCallbacks
def force_build(master: Any, builder: str, **params: Any) -> Any:
    """Force a build on ``builder`` through scheduler ``force`` and wait until its buildset
    completes; returns ``{"bsid", "builds": [build dicts]}``."""
    bid = yield builderid(master, builder)
    result = yield run_buildset(master, lambda: master.data.control(
        "force", {"builderid": bid, **params}, ("forceschedulers", "force")))
    return result


@defer.inlineCallbacks
def run_buildset(master: Any, trigger: Any) -> Any:
    """Call ``trigger()`` (which must create one buildset) and wait until that buildset
    completes; returns ``{"bsid", "builds": [...]}`` with the data API's build dicts."""
    from buildbot.data import resultspec

    done: defer.Deferred[Any] = defer.Deferred()
    first: list[int] = []

    def on_new(_: Any, data: Any) -> None:
        if not first:
            first.append(data["bsid"])

    def on_complete(_: Any, data: Any) -> None:
        if first and data["bsid"] == first[0] and not done.called:
            done.callback(data)

    new_consumer = yield master.mq.startConsuming(on_new, ("buildsets", None, "new"))
    complete_consumer = yield master.mq.startConsuming(on_complete, ("buildsets", None, "complete"))
    try:
        yield trigger()
        buildset = yield done
    finally:
        new_consumer.stopConsuming()
        complete_consumer.stopConsuming()
    requests = yield master.data.get(
        ("buildrequests",), filters=[resultspec.Filter("buildsetid", "eq", [buildset["bsid"]])]
    )
    builds: list[Any] = []
    for br in requests:
        found = yield master.data.get(
            ("builds",), filters=[resultspec.Filter("buildrequestid", "eq", [br["buildrequestid"]])]
        )
        builds.extend(found)
    return {"bsid": buildset["bsid"], "builds": builds}


# -----------------------------------------------------------------------------------------------
# Stream invariants
# -----------------------------------------------------------------------------------------------


def seqs_by_source(events: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[int]]:
    """``(master, incarnation) -> [seq, ...]`` in stream order."""
    out: dict[tuple[str, str], list[int]] = {}
    for e in events:
        out.setdefault((e["master"], e["incarnation"]), []).append(e["seq"])
    return out


def check_stream(case: Any, events: list[dict[str, Any]], complete: bool = True) -> None:
    """What every stream of plugin events must satisfy, per master and incarnation:

    * each event is valid and carries a stream ``id``; ids are strictly increasing;
    * ``seq`` is ``1..N``, in order, without a hole or a repeat (``complete``; otherwise it is
      contiguous from wherever it starts);
    * every build announced is announced once, finished at most once, and its ``build.started``
      precedes all of its step/log events and its ``build.finished``, which is its last event;
    * a build's request was submitted (and claimed) before ``build.started``.
    """
    offsets = []
    for e in events:
        validate_event({k: e[k] for k in ("master", "incarnation", "seq", "type", "time", "data")})
        offsets.append(int(e["id"].rpartition(":")[2]))
    case.assertEqual(offsets, sorted(set(offsets)), "stream ids strictly increase")
    for (master, inc), seqs in seqs_by_source(events).items():
        start = 1 if complete else seqs[0]
        case.assertEqual(seqs, list(range(start, start + len(seqs))), f"{master}/{inc}: seq 1..N, no hole/repeat")
    for (master, inc), evs in _by_source(events).items():
        builds: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        requests: dict[int, dict[str, int]] = {}
        for i, e in enumerate(evs):
            d = e["data"]
            if e["type"].startswith(("build.", "step.", "log.")) and isinstance(d.get("buildid"), int):
                builds.setdefault(d["buildid"], []).append((i, e))
            if e["type"].startswith("request."):
                requests.setdefault(d["buildrequestid"], {}).setdefault(e["type"], i)
        for buildid, mine in builds.items():
            types = [e["type"] for _, e in mine]
            what = f"{master}/{inc} build {buildid}: {types}"
            case.assertEqual(types[0], "build.started", what)
            case.assertEqual(types.count("build.started"), 1, what)
            case.assertLessEqual(types.count("build.finished"), 1, what)
            if "build.finished" in types:
                case.assertEqual(types[-1], "build.finished", what)
            start_index = mine[0][0]
            brid = mine[0][1]["data"].get("buildrequestid")
            if brid in requests:  # (a build of the master.started snapshot has no request here)
                seen = requests[brid]
                case.assertLess(seen.get("request.submitted", -1), start_index, what)
                case.assertIn("request.submitted", seen, what)
                case.assertLess(seen.get("request.claimed", 10**9), start_index, what)


def _by_source(events: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in events:
        out.setdefault((e["master"], e["incarnation"]), []).append(e)
    return out


def spool_segments(spool_dir: str) -> list[str]:
    """The spool's segment files (not ``dropped.jsonl``)."""
    if not os.path.isdir(spool_dir):
        return []
    return sorted(n for n in os.listdir(spool_dir) if n.endswith(".jsonl") and n[:-6].isdigit())
