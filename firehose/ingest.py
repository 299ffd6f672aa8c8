"""``POST /ingest``: batches of events from masters, answered only once they are durable.

The checks run cheapest and most telling first: token, size, JSON, schema and limits (depth,
integer ranges, seq order: :func:`firehose.schema.validate_batch`), then whether every event
belongs to the master the token is for.  A rejected batch changes nothing: it never reaches the
journal, and everything the journal could choke on is checked before it gets there.  A 200
means the journal holds every event of the batch (or already held it: a retried batch is
answered the same way, its events counted as duplicates).
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from firehose._http import bearer_token, error_body, json_body
from firehose.cursor import format_cursor
from firehose.event import loads
from firehose.journal import AppendResult, IJournal, UnstorableBatch
from firehose.schema import SchemaError, validate_batch


class MasterTokens:
    """Which bearer token belongs to which master, compared in constant time."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = {m: t.encode("utf-8") for m, t in tokens.items()}

    def __contains__(self, master: str) -> bool:
        return master in self._tokens

    def __len__(self) -> int:
        return len(self._tokens)

    def master_for(self, token: str) -> str | None:
        """The master this token belongs to, or ``None``.  Every token is compared, always."""
        given = token.encode("utf-8")
        found = None
        for master, expected in self._tokens.items():
            if hmac.compare_digest(given, expected):
                found = master
        return found


class IngestStats:
    """Counters for /metrics: per master, and rejections by reason.  Plain values, written by
    :class:`IngestResource` and read by the metrics collector at scrape time."""

    def __init__(self) -> None:
        self.accepted: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.seq_gaps: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        #: Per master, the ``time`` of its newest event and when it arrived (the clock's time).
        self.last_event_time: dict[str, float] = {}
        self.last_received: dict[str, float] = {}


class IngestResource(Resource):
    """The ingest endpoint.

    :param max_body: the largest body accepted, in bytes (larger ones get 413 unread).
    :param clock: dates each master's last accepted batch (``stats.last_received``).
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self, journal: IJournal, tokens: MasterTokens, max_body: int, stats: IngestStats, clock: IReactorTime
    ) -> None:
        super().__init__()
        self.journal = journal
        self.tokens = tokens
        self.max_body = max_body
        self.stats = stats
        self.clock = clock

    def render_POST(self, request: Request) -> bytes | int:
        master = self._authenticate(request)
        if isinstance(master, bytes):
            return master
        # The site discards a body past the limit as it arrives (LimitedRequest); reading one
        # byte more than the limit catches it under any other request class too.
        body = request.content.read(self.max_body + 1) if request.content is not None else b""
        if getattr(request, "body_too_large", False) or len(body) > self.max_body:
            return self._reject(request, 413, "too_large", f"body larger than {self.max_body} bytes")
        try:
            batch = loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._reject(request, 400, "malformed_json", f"body is not JSON: {exc}")
        try:
            validate_batch(batch)
        except SchemaError as exc:
            return self._reject(request, 422, exc.code, str(exc))
        for i, event in enumerate(batch):
            if event["master"] != master:
                name = event["master"]
                why = (
                    f"token is for master {master!r}, not {name!r}"
                    if name in self.tokens
                    else f"unknown master {name!r}"
                )
                return self._reject(request, 403, "wrong_master", f"batch[{i}]: {why}")
        gone = _watch(request)
        d = self.journal.append(batch)
        d.addCallbacks(self._stored, self._failed, callbackArgs=(request, gone, master, batch),
                       errbackArgs=(request, gone))
        return NOT_DONE_YET

    def _authenticate(self, request: Request) -> str | bytes:
        """The master the bearer token belongs to, or the encoded 401/403 answer."""
        token = bearer_token(request)
        if token is None:
            request.setHeader(b"www-authenticate", b'Bearer realm="firehose"')
            return self._reject(request, 401, "unauthorized", "missing 'Authorization: Bearer <token>' header")
        if not len(self.tokens):
            return self._reject(request, 403, "no_masters", "this server has no master tokens configured")
        master = self.tokens.master_for(token)
        if master is None:
            request.setHeader(b"www-authenticate", b'Bearer realm="firehose", error="invalid_token"')
            return self._reject(request, 401, "unauthorized", "invalid token")
        return master

    def _reject(self, request: Request, code: int, error: str, message: str) -> bytes:
        self.stats.rejected[error] += 1
        self.log.info("ingest rejected ({code} {error}): {message}", code=code, error=error, message=message)
        return error_body(request, code, error, message)

    def _stored(
        self, result: AppendResult, request: Request, gone: Callable[[], bool], master: str, batch: list[Any]
    ) -> None:
        stats = self.stats
        stats.accepted[master] += len(result.accepted)
        stats.duplicates[master] += result.duplicates
        stats.seq_gaps[master] += result.seq_gaps
        stats.last_event_time[master] = max(
            stats.last_event_time.get(master, 0.0), max(e["time"] for e in batch)
        )
        stats.last_received[master] = self.clock.seconds()
        if result.seq_gaps:
            self.log.warn("master {master} skipped sequence numbers in {n} places", master=master, n=result.seq_gaps)
        last = format_cursor(self.journal.epoch, self.journal.head)
        body = json_body(
            request,
            200,
            {"accepted": len(result.accepted), "duplicates": result.duplicates, "cursor": last},
        )
        _finish(request, gone, body)

    def _failed(self, failure: Failure, request: Request, gone: Callable[[], bool]) -> None:
        """A batch the journal cannot store because of what it holds is the master's fault, for
        good: 422, which the plugin drops rather than retrying forever (the checks above should
        make this unreachable).  Anything else is the storage's fault, for now: 503 and retry."""
        if failure.check(UnstorableBatch):
            self.stats.rejected["unstorable"] += 1
            body = error_body(request, 422, "unstorable", failure.getErrorMessage())
        else:
            self.stats.rejected["unavailable"] += 1
            body = error_body(request, 503, "unavailable", f"journal unavailable: {failure.getErrorMessage()}")
            request.setHeader(b"retry-after", b"1")
        _finish(request, gone, body)


def _watch(request: Request) -> Callable[[], bool]:
    """Whether the client has gone away since: ``notifyFinish``'s errback (Twisted's public way
    to hear of a lost connection) sets the flag."""
    lost: list[Failure] = []
    request.notifyFinish().addErrback(lost.append)
    return lambda: bool(lost)


def _finish(request: Request, gone: Callable[[], bool], body: bytes) -> None:
    """Write and finish unless the client already went away (the write happened anyway)."""
    if request.finished or gone():
        return
    request.write(body)
    request.finish()
