"""Build and run a firehose server from a :class:`Config`: journal, hub, site, listening port.

``FirehoseServer`` is what the CLI runs and what tests start in-process::

    server = FirehoseServer(Config(listen="tcp:0:interface=127.0.0.1", db=path,
                                   tokens={"m1": "secret"}))
    yield server.start()
    ... server.url ...
    yield server.stop()
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from firehose import checkpoint
from firehose.checkpoint import Checkpointer, StateFeed

# Config and ConfigError are re-exported: ``FirehoseServer(Config(...))`` is how a server is
# embedded (this module's docstring); their home is firehose.config.
from firehose.config import Config, ConfigError, check_config, checkpoint_path  # noqa: F401
from firehose.hub import Hub, Pacing
from firehose.ingest import IngestStats, MasterTokens
from firehose.journal import IJournal, MemoryJournal, SQLiteJournal
from firehose.state import BuildState
from firehose.web import FirehoseSite, build_site
from firehose.webhooks.dispatcher import make_dispatcher

#: A checkpoint at least this large (bytes of state) is frozen out of the cyclic collector's
#: walks once loaded (see firehose.checkpoint); a small one is not worth it.
FREEZE_AFTER_LOADING = 1 << 20
#: Newest events the hub keeps to answer replays near the head from memory: a poll that comes
#: back a fan-out round late, a socket reconnecting (a round carries tens of events).
RECENT_EVENTS = 1024


class FirehoseServer:
    """One server: a journal, a hub and the HTTP site on one listening port."""

    log = Logger()

    def __init__(self, config: Config, reactor: Any = None) -> None:
        check_config(config)
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self.reactor = reactor
        self.port: Any = None
        self.journal: IJournal | None = None
        self.site: FirehoseSite | None = None
        self._trimmer: LoopingCall | None = None
        self.webhooks: Any = None
        self.feed: StateFeed | None = None
        self.checkpointer: Checkpointer | None = None

    def _open_journal(self) -> IJournal:
        if self.config.redis:
            # Imported here: redis-py is needed only by nodes that share a journal.
            from firehose.redis_journal import RedisJournal

            return RedisJournal(
                self.config.redis, self.reactor, self.config.retention,
                wait_replicas=self.config.redis_wait_replicas,
            )
        if self.config.db == ":memory:":
            return MemoryJournal(retention=self.config.retention, clock=self.reactor)
        return SQLiteJournal(
            self.config.db, self.reactor, self.config.retention, self.config.synchronous
        )

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Open the journal, bring the build state up (from its checkpoint, or warming up from
        the journal), and listen; fails with JournalError or CannotListenError."""
        config = self.config
        journal = self.journal = self._open_journal()
        self.hub = Hub(journal, page_size=config.page_size, max_pending=config.max_pending,
                       clock=self.reactor, pacing=Pacing(), recent=RECENT_EVENTS)
        try:
            feed = self.feed = yield self._state_feed(journal)
            self.state = feed.state
            replay = feed.to_replay
            caught_up = feed.start()
            if replay <= config.replay_before_listening:
                # A short replay (a checkpoint from a clean stop has none) is done before
                # listening: /api answers correctly from its first request.
                yield caught_up
            else:
                self.log.info(
                    "state: warming up in the background: {n:,} events to replay from the {source}; "
                    "/api answers 503 warming_up until it has caught up",
                    n=replay, source=feed.source,
                )
                caught_up.addCallback(self._warmed_up)
        except BaseException:
            if self.feed is not None:
                self.feed.stop()
            yield journal.close()
            raise
        self.ingest_stats = IngestStats()
        try:
            self.webhooks = make_dispatcher(self.hub, config.webhooks, config.db, self.reactor,
                                            redis_url=config.redis)
            site = self.site = build_site(
                hub=self.hub,
                journal=journal,
                state=self.state,
                tokens=MasterTokens(config.tokens),
                clock=self.reactor,
                max_body=config.max_body,
                ingest_stats=self.ingest_stats,
                warmup=feed,
                webhooks=self.webhooks,
                webhook_admin_token=config.webhooks.admin_token,
                max_connections=config.max_connections,
                max_connections_per_address=config.max_connections_per_address,
                request_timeout=config.request_timeout,
                idle_timeout=config.idle_timeout,
            )
            self.webhooks.load()
            endpoint = serverFromString(self.reactor, config.listen)
            self.port = yield endpoint.listen(site.connections)
        except BaseException:
            feed.stop()
            if self.webhooks is not None:
                yield self.webhooks.stop()
                self.webhooks = None
            yield journal.close()
            raise
        self.webhooks.start()
        def trim() -> Any:
            # A failure is logged and the next period tries again: a LoopingCall whose call
            # fails stops for good, and retention with it.
            return journal.trim().addErrback(lambda f: self.log.failure("retention failed", f))

        self._trimmer = LoopingCall(trim)
        self._trimmer.clock = self.reactor
        self._trimmer.start(config.trim_interval, now=True)
        if self.checkpointer is not None:
            self.checkpointer.start()
        self.log.info(
            "firehose listening on {url} (journal {db}, epoch {epoch}, {n} events, masters: {masters})",
            url=self.url,
            db=getattr(journal, "where", config.db),
            epoch=journal.epoch,
            n=journal.head - journal.earliest + 1,
            masters=", ".join(sorted(config.tokens)) or "none configured",
        )
        if feed.ready:
            self._log_ready(feed)
        return self

    @defer.inlineCallbacks
    def _state_feed(self, journal: IJournal) -> Any:
        """The build state to start from, and the feed that brings it to the head: the
        checkpoint if it continues this journal (logged either way), else an empty state
        replaying the newest :data:`~firehose.checkpoint.STATE_WINDOW` events."""
        path = checkpoint_path(self.config) if not isinstance(journal, MemoryJournal) else None
        found = None
        t0 = time.perf_counter()
        if path is not None:
            checkpoint.remove_leftovers(path)
            found, _ = yield checkpoint.restore(path, journal)
        if found is not None:
            self.log.info(
                "state: loaded the checkpoint {path} in {s:.2f} s (offset {offset}, {size:,} bytes, "
                "written {age:.0f} s ago); {n:,} events after it to replay",
                path=path, s=time.perf_counter() - t0, offset=found.offset, size=found.size,
                age=max(0.0, time.time() - found.written_at), n=max(0, journal.head - found.offset),
            )
            last = (found.offset, found.last) if found.last is not None else None
            if found.size >= FREEZE_AFTER_LOADING:
                # The loaded state lives long: out of the cyclic collector's walks (checkpoint.py).
                checkpoint.collect_and_freeze()
            feed = StateFeed(found.state, journal, self.reactor, start_after=found.offset,
                             source="checkpoint", last=last, freeze_gc=True)
        else:
            start = max(journal.earliest - 1, journal.head - checkpoint.STATE_WINDOW)
            feed = StateFeed(BuildState(), journal, self.reactor, start_after=start, source="journal",
                             freeze_gc=True)
        self.checkpointer = None
        if path is not None:
            self.checkpointer = Checkpointer(path, feed, journal, self.reactor, self.config.checkpoint_interval)
            if found is not None:
                self.checkpointer.saved_offset = found.offset
        return feed

    def _warmed_up(self, _: object) -> None:
        if self.feed is not None:
            self._log_ready(self.feed)
        if self.checkpointer is not None and self.config.checkpoint_interval > 0:
            # A crash now would cost the same warm-up again: checkpoint what it built.
            self.checkpointer.tick()

    def _log_ready(self, feed: StateFeed) -> None:
        self.log.info(
            "state: ready at offset {offset} ({n:,} events replayed from the {source} in {s:.2f} s)",
            offset=feed.state.offset, n=feed.replayed, source=feed.source,
            s=feed.progress()["elapsed"],
        )

    @property
    def url(self) -> str:
        """``http://host:port`` of the listening port (IPv6 hosts bracketed)."""
        address = self.port.getHost()
        host = address.host if ":" not in address.host else f"[{address.host}]"
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{address.port}"

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop listening, close client connections, then close the journal (pending writes finish)."""
        if self._trimmer is not None and self._trimmer.running:
            self._trimmer.stop()
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
        if self.webhooks is not None:
            yield self.webhooks.stop()
            self.webhooks = None
        self.hub.stop()
        for sub in list(self.hub.subscriptions):
            sub.close()
        if self.site is not None:
            yield self.site.connections.close_all()
        if self.feed is not None:
            self.feed.stop()
        if self.journal is not None:
            # Pending writes finish, and reach the state, before its checkpoint is written.
            yield self.journal.close()
            self.journal = None
        if self.checkpointer is not None:
            self.checkpointer.stop(save=True)
            self.checkpointer = None
