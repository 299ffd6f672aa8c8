"""The HTTP site: which resource answers which path, the site-wide body limit, and the listening
factory that counts and limits connections.

:func:`build_site` is the one place the site is assembled: it is given every part it mounts
(hub, journal, state, tokens, stats, the webhook dispatcher) and the clock, and builds nothing a
caller would have to feed.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import os
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site, UnsupportedMethod
from twisted.web.static import File

from firehose import __version__
from firehose._http import allow_cors, error_body, json_body
from firehose.api import ApiResource
from firehose.checkpoint import StateFeed
from firehose.config import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_PER_ADDRESS,
    DEFAULT_REQUEST_TIMEOUT,
)
from firehose.hub import Hub
from firehose.ingest import IngestResource, IngestStats, MasterTokens
from firehose.journal import IJournal
from firehose.limits import ConnectionLimits, DeadlineChannel, default_max_connections
from firehose.metrics import FirehoseCollector, MetricsResource
from firehose.schema import BATCH_SCHEMA, DELIVERED_SCHEMA
from firehose.specs import asyncapi, openapi
from firehose.state import BuildState
from firehose.transports.longpoll import PollResource
from firehose.transports.sse import SSEResource
from firehose.transports.websocket import websocket_resource
from firehose.webhooks.api import WebhookAPI
from firehose.webhooks.dispatcher import WebhookDispatcher


class _JSONResource(Resource):
    """A GET answered with a JSON document computed at request time."""

    isLeaf = True

    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make

    def render_GET(self, request: Request) -> bytes:
        allow_cors(request)
        doc = self.make()
        # A node that cannot store answers 503, so a load balancer takes it out of rotation.
        return json_body(request, 503 if doc.get("status") == "degraded" else 200, doc)


class _WarmingUp(Resource):
    """What a question to the build state answers while it warms up: 503 ``warming_up``."""

    isLeaf = True

    def __init__(self, feed: StateFeed) -> None:
        super().__init__()
        self.feed = feed

    def render(self, request: Request) -> bytes:
        allow_cors(request)
        progress = self.feed.progress()
        retry = self.feed.retry_after()
        request.setHeader(b"retry-after", str(retry).encode())
        message = (
            f"the build state is warming up: {progress['replayed']:,} events replayed from the "
            f"{progress['source']}, about {progress['remaining']:,} to go; /api answers once it has "
            f"caught up (retry in {retry} s); ingest and the streams work meanwhile"
        )
        return json_body(request, 503, {"error": "warming_up", "message": message, "progress": progress})


class _WarmingGate(Resource):
    """``/api`` while the build state warms up: every question the state answers is a 503
    ``warming_up`` (:class:`_WarmingUp`); what does not read the state (``/api/webhooks``) and
    CORS preflights go through.  Once the feed is ready, everything goes to ``/api`` itself."""

    #: Children of /api that do not read the build state.
    STATELESS = frozenset({b"webhooks"})

    def __init__(self, api: Resource, feed: StateFeed) -> None:
        super().__init__()
        self.api = api
        self.feed = feed
        self.warming = _WarmingUp(feed)

    def _open(self, request: Request, path: bytes | None = None) -> bool:
        return self.feed.ready or request.method == b"OPTIONS" or path in self.STATELESS

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        if self._open(request, path):
            return self.api.getChildWithDefault(path, request)
        return self.warming

    def render(self, request: Request) -> Any:
        if self._open(request):
            return self.api.render(request)
        return self.warming.render(request)


class _JSONNotFound(Resource):
    """What any unknown path answers, whatever the method: a 404 with the JSON error body."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        path = request.path.decode("utf-8", "replace")[:200]
        return error_body(request, 404, "not_found", f"nothing at {path}: see /openapi.json for every endpoint")


#: Methods HTTP defines: one a resource does not take is a 405; any other method a 501.
_HTTP_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT"})


class _JSONMethodErrors:
    """Stands in for the resource being rendered so that a method it does not take gets a JSON
    405 (or 501 for a method HTTP does not know) instead of twisted.web's HTML page."""

    def __init__(self, resource: Any) -> None:
        self.resource = resource

    def render(self, request: Request) -> Any:
        try:
            return self.resource.render(request)
        except UnsupportedMethod as exc:
            methods: list[Any] = list(exc.allowedMethods)
            allowed = [m for m in methods if isinstance(m, bytes)]
            if request.method == b"HEAD" and b"GET" in allowed:
                raise  # twisted.web answers HEAD with GET's headers
            method = request.method.decode("ascii", "replace")[:20]
            if request.method not in _HTTP_METHODS:
                return error_body(request, 501, "not_implemented", f"method {method} is not implemented")
            request.setHeader(b"allow", b", ".join(allowed))
            names = ", ".join(name.decode() for name in allowed)
            return error_body(request, 405, "method_not_allowed", f"{method} is not allowed here: use {names}")


class _StaticFiles(File):
    """The dashboard's files: regular files whose real path is inside the folder, nothing else.

    twisted.web's ``File`` follows a symlink wherever it points, lists a directory without an
    index, and answers a name holding a NUL byte (``%00``) with a 500 (``os.stat`` raises
    ``ValueError``): each of these is a 404 here.
    """

    childNotFound = _JSONNotFound()  # type: ignore[assignment]

    def getChild(self, path: bytes, request: Request) -> Resource:
        if b"\x00" in path:
            return self.childNotFound
        child = super().getChild(path, request)
        if isinstance(child, File) and not self._serves(child.path):
            return self.childNotFound
        return child

    def _serves(self, path: str | bytes) -> bool:
        folder = os.path.realpath(self.path)
        real = os.path.realpath(path)
        if isinstance(real, bytes):
            real = os.fsdecode(real)
        return os.path.isfile(real) and os.path.commonpath([folder, real]) == folder


def static_resource(folder: str) -> File:
    """The resource serving ``folder`` (the package's ``static/``; a copy in tests)."""
    static = _StaticFiles(folder)
    static.indexNames = ["index.html"]
    return static


class _Root(Resource):
    """Named children first; any other first path segment is a file of the static folder."""

    def __init__(self, static: Resource) -> None:
        super().__init__()
        self.static = static

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self.static.getChild(b"index.html", request)
        return self.static.getChild(path, request)


class LimitedRequest(Request):
    """A request whose body is discarded, and flagged, past the site's ``max_body`` bytes.

    twisted.web would otherwise buffer a body of any size before the resource sees it.
    """

    body_too_large = False
    _received = 0

    def _limit(self) -> int:
        return int(getattr(self.channel, "site").max_body)  # noqa: B009 (set by Site)

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            self.body_too_large = True
        # In memory, always: twisted.web would put a body over 100 kB (or any chunked one) in a
        # temporary file, written on the reactor thread; the limit bounds the memory instead.
        self.content = io.BytesIO()

    def render(self, resrc: Any) -> None:
        """Render ``resrc``, a method it does not take answered in JSON (see _JSONMethodErrors)."""
        super().render(_JSONMethodErrors(resrc))

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._received += len(data)
        if self._received > self._limit():
            self.body_too_large = True
            self.content = io.BytesIO()
            return
        super().handleContentChunk(data)


class FirehoseSite(Site):
    """The site, with a deadline for each request to arrive whole (:class:`DeadlineChannel`).

    :param request_timeout: seconds from a request's first byte until it must be received
        (line, headers and body); past it the client gets a 408.  ``None``: no deadline.
    :param idle_timeout: seconds a keep-alive connection may wait between requests (Twisted's
        ``timeOut``; it never applies while a request is being answered).
    :param reactor: the clock of both.
    """

    #: The factory to listen with: this site behind the connection limits (see :func:`build_site`).
    connections: ConnectionLimits

    requestFactory = LimitedRequest
    # HTTP/1.1 only (h2 is no dependency): the plain channel, so every connection has the deadline.
    protocol = DeadlineChannel  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        resource: Resource,
        max_body: int,
        *,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        reactor: IReactorTime | None = None,
    ) -> None:
        super().__init__(resource, timeout=idle_timeout, reactor=reactor)
        self.max_body = max_body
        self.request_timeout = request_timeout

    def log(self, request: Any) -> None:
        """No access log: ingest and polls would drown what matters."""


def cache_content_type_parsing() -> None:
    """Remember twisted.web's reading of a ``Content-Type`` (an ``email`` message built per
    POST to learn whether the body is a form: a third of a single-event ingest request's CPU).

    ``twisted.web.http._parseContentType`` is private, a pure function of the header's bytes
    returning bytes; a bounded cache (64 values, least recently used out) keeps it pure and a
    client's header values cannot grow it.  tests/unit/test_fast_path.py checks it against the
    installed Twisted (capped in setup.py).  Idempotent.
    """
    parse = http._parseContentType
    if not hasattr(parse, "cache_info"):
        http._parseContentType = functools.lru_cache(maxsize=64)(parse)


def build_site(
    *,
    hub: Hub,
    journal: IJournal,
    tokens: MasterTokens,
    clock: IReactorTime,
    state: BuildState | None = None,
    warmup: StateFeed | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    ingest_stats: IngestStats | None = None,
    webhooks: WebhookDispatcher | None = None,
    webhook_admin_token: str | None = None,
    max_connections: int | None = None,
    max_connections_per_address: int = DEFAULT_MAX_PER_ADDRESS,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
) -> FirehoseSite:
    """Assemble every endpoint into one site; listen with its :attr:`~FirehoseSite.connections`.

    :param clock: every timer and "now" of the site: request deadlines, idle timeouts,
        long-poll and SSE timers, WebSocket timers, ingest and metrics times.
    :param state: the build state ``/api`` answers from, fed by its owner (rebuilt from the
        journal and listening to it); without one there is no ``/api`` (a site for ingest and
        streams only, as in some tests).
    :param warmup: the feed bringing ``state`` to the journal's head: until it is ready, ``/api``
        answers 503 ``warming_up`` and ``/health`` says so.  ``None``: the state is complete.
    :param ingest_stats: the counters ingest writes and ``/metrics`` reads; new ones if ``None``.
    :param webhooks: the dispatcher, if the server runs webhooks: its API at ``/api/webhooks``
        (answering only ``webhook_admin_token``; 403 without one), its counts in ``/metrics``.
    :param max_connections: open connections in all; ``None``: :func:`default_max_connections`.
    """
    cache_content_type_parsing()
    ingest_stats = ingest_stats if ingest_stats is not None else IngestStats()
    static = static_resource(str(importlib.resources.files("firehose") / "static"))
    root = _Root(static)
    root.putChild(b"ingest", IngestResource(journal, tokens, max_body, ingest_stats, clock))
    root.putChild(b"ws", websocket_resource(hub, clock))
    root.putChild(b"sse", SSEResource(hub, clock))
    root.putChild(b"poll", PollResource(hub, clock))
    if state is not None or webhooks is not None:
        api = ApiResource(state, hub, clock) if state is not None else Resource()
        if webhooks is not None:
            api.putChild(b"webhooks", WebhookAPI(webhooks, webhook_admin_token))
        root.putChild(b"api", _WarmingGate(api, warmup) if warmup is not None and state is not None else api)
    root.putChild(b"schema", _JSONResource(lambda: {"batch": BATCH_SCHEMA, "event": DELIVERED_SCHEMA}))
    root.putChild(b"health", _JSONResource(lambda: _health(hub, journal, warmup)))
    root.putChild(b"openapi.json", _JSONResource(openapi))
    root.putChild(b"asyncapi.json", _JSONResource(asyncapi))
    site = FirehoseSite(root, max_body, request_timeout=request_timeout, idle_timeout=idle_timeout, reactor=clock)
    site.connections = ConnectionLimits(
        site, max_connections or default_max_connections(), max_connections_per_address, clock
    )
    # Only an on-disk journal has a size (IJournal does not promise one).
    journal_bytes = getattr(journal, "size_bytes", lambda: 0)
    collector = FirehoseCollector(
        hub, journal, ingest_stats, journal_bytes, clock=clock, connections=site.connections, webhooks=webhooks,
        warmup=warmup,
    )
    root.putChild(b"metrics", MetricsResource(collector))
    return site


def _health(hub: Hub, journal: IJournal, warmup: StateFeed | None = None) -> dict[str, Any]:
    """The node's health.  ``degraded`` while the journal cannot be written (a full disk, say):
    such a node acknowledges no batch, so a load balancer should take it out of service.

    A node whose build state is warming up is ``ok`` all the same (it ingests and streams, so a
    load balancer should keep it); ``state`` says ``warming_up``, with the progress, until
    ``/api`` answers."""
    writes = journal.write_health
    problem: dict[str, Any] = {}
    if not writes.writable:
        problem = {"reason": f"journal cannot be written: {writes.error}", "since": writes.since}
    return {
        "status": "degraded" if problem else "ok",
        **problem,
        "version": __version__,
        "epoch": journal.epoch,
        "cursor": hub.head_cursor,
        "earliest": hub.cursor(journal.earliest - 1),
        "subscribers": dict(hub.stats.subscribers),
        "masters": {m: {"incarnation": i, "last_seq": s} for m, (i, s) in journal.last_seqs().items()},
        # The shared journal's Redis link: connected, this node's lag, the last error.
        **({"redis": journal.link()} if hasattr(journal, "link") else {}),
        **({"state": _state_health(hub, warmup)} if warmup is not None else {}),
    }


def _state_health(hub: Hub, feed: StateFeed) -> dict[str, Any]:
    """The build state's part of ``/health``: ``ready`` (``/api`` answers) or ``warming_up``."""
    if feed.ready:
        return {"status": "ready", "cursor": hub.cursor(feed.state.offset), "source": feed.source}
    return {"status": "warming_up", "cursor": hub.cursor(feed.state.offset), "progress": feed.progress()}

