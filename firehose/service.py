"""Build and run a firehose server from a :class:`Config`: journal, hub, site, listening port.

``FirehoseServer`` is what the CLI runs and what tests start in-process::

    server = FirehoseServer(Config(listen="tcp:0:interface=127.0.0.1", db=path,
                                   tokens={"m1": "secret"}))
    yield server.start()
    ... server.url ...
    yield server.stop()
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from firehose.hub import Hub
from firehose.ingest import IngestStats, MasterTokens
from firehose.journal import IJournal, MemoryJournal, Retention, SQLiteJournal
from firehose.limits import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_PER_ADDRESS,
    DEFAULT_REQUEST_TIMEOUT,
    ConnectionLimits,
    default_max_connections,
)
from firehose.schema import MASTER_NAME_PATTERN
from firehose.state import BuildState
from firehose.web import build_site
from firehose.webhooks import WebhookConfig, WebhookError, apply_config_table, make_dispatcher
from firehose.webhooks import mount as mount_webhooks

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
TOKENS_ENV = "FIREHOSE_MASTER_TOKENS"


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the configuration."""


@dataclass
class Config:
    """Everything a server needs.  The defaults are the embedded, single-node setup.

    :param db: SQLite journal file, or ``:memory:`` for a journal that dies with the process.
    :param tokens: master name -> bearer token it must present on ``/ingest``.
    """

    listen: str = DEFAULT_LISTEN
    db: str = "firehose.sqlite"
    tokens: dict[str, str] = field(default_factory=dict)
    max_body: int = 1024 * 1024
    retention: Retention = field(default_factory=Retention)
    synchronous: str = "FULL"
    #: How often retention runs, in seconds.
    trim_interval: float = 60.0
    page_size: int = 500
    max_pending: int = 1000
    #: Webhooks: admin token of /api/webhooks, hooks from the config file (see docs/client.md).
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
    #: Open connections in all; ``None``: 10,000 or 90% of the file descriptor limit if lower.
    max_connections: int | None = None
    #: Open connections per client address; 0: no limit (behind a proxy).
    max_connections_per_address: int = DEFAULT_MAX_PER_ADDRESS
    #: Seconds from a request's first byte until it must be received whole.
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    #: Seconds a keep-alive connection may wait between requests.
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT


def parse_token(text: str) -> tuple[str, str]:
    """``NAME=TOKEN`` -> ``(name, token)``, with a message that says what is wrong."""
    name, sep, token = text.partition("=")
    name, token = name.strip(), token.strip()
    if not sep or not name or not token:
        raise ConfigError(f"master token {text!r} must look like NAME=TOKEN")
    if not re.match(MASTER_NAME_PATTERN, name):
        raise ConfigError(f"master name {name!r} may only hold letters, digits, '.', '_' and '-'")
    return name, token


def tokens_from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Tokens from ``FIREHOSE_MASTER_TOKENS="m1=tok1,m2=tok2"`` (keeps them out of ``ps``)."""
    raw = (environ if environ is not None else os.environ).get(TOKENS_ENV, "")
    return dict(parse_token(t) for t in raw.split(",") if t.strip())


def load_config_file(path: str, config: Config) -> Config:
    """Overlay a TOML file on ``config``.  Keys: ``listen``, ``db``, ``max_body``, ``synchronous``,
    ``[masters]`` (name = token), ``[retention]`` (``max_age_days``, ``max_events``),
    ``[limits]`` (``max_connections``, ``max_connections_per_address``, ``request_timeout``,
    ``idle_timeout``)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    known = {"listen", "db", "max_body", "synchronous", "masters", "retention", "webhooks", "limits"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"config file {path!r}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    for key in ("listen", "db", "synchronous"):
        if key in data:
            setattr(config, key, str(data[key]))
    if "max_body" in data:
        config.max_body = int(data["max_body"])
    for name, token in (data.get("masters") or {}).items():
        n, t = parse_token(f"{name}={token}")
        config.tokens[n] = t
    retention = data.get("retention") or {}
    if retention:
        days = retention.get("max_age_days", None)
        config.retention = Retention(
            max_age=float(days) * 86400 if days is not None else None,
            max_events=int(retention["max_events"]) if "max_events" in retention else None,
        )
    if "webhooks" in data:
        try:
            apply_config_table(data["webhooks"], config.webhooks)
        except (WebhookError, TypeError, ValueError) as exc:
            raise ConfigError(f"config file {path!r}: {exc}") from None
    if "limits" in data:
        try:
            _apply_limits(data["limits"], config)
        except ConfigError as exc:
            raise ConfigError(f"config file {path!r}: {exc}") from None
    return config


#: ``[limits]`` keys (also ``Config`` fields): type, least value, whether the least is allowed.
_LIMITS: dict[str, tuple[type, float, bool]] = {
    "max_connections": (int, 1, True),
    "max_connections_per_address": (int, 0, True),
    "request_timeout": (float, 0, False),
    "idle_timeout": (float, 0, False),
}


def _apply_limits(table: Any, config: Config) -> None:
    if not isinstance(table, dict):
        raise ConfigError("[limits] must be a table")
    unknown = set(table) - set(_LIMITS)
    if unknown:
        raise ConfigError(f"[limits]: unknown keys {sorted(unknown)}; known: {sorted(_LIMITS)}")
    for key, value in table.items():
        setattr(config, key, check_limit(f"[limits] {key}", key, value))


def check_limit(where: str, key: str, value: Any) -> Any:
    """A connection limit's value, checked: an int (or, for a timeout, a number) of at least its
    minimum; ``where`` names it in the error (the config key or the flag)."""
    kind, least, inclusive = _LIMITS[key]
    ok_type = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
    if isinstance(value, bool) or not ok_type:
        raise ConfigError(f"{where} must be {'a number' if kind is float else 'an integer'}, not {value!r}")
    if value < least or (value == least and not inclusive):
        raise ConfigError(f"{where} must be {'at least' if inclusive else 'more than'} {least:g}")
    return kind(value)


def check_config(config: Config) -> Config:
    """Refuse what would only fail later: two masters sharing a token (the server could not tell
    them apart, so one of them would be refused forever), a connection limit that is no limit."""
    owners: dict[str, str] = {}
    for master, token in sorted(config.tokens.items()):
        if token in owners:
            raise ConfigError(f"masters {owners[token]!r} and {master!r} have the same token: give each its own")
        owners[token] = master
    for key in _LIMITS:
        value = getattr(config, key)
        if value is not None or key != "max_connections":
            check_limit(key, key, value)
    return config


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
        self._trimmer: LoopingCall | None = None
        self.webhooks: Any = None

    def _open_journal(self) -> IJournal:
        if self.config.db == ":memory:":
            return MemoryJournal(retention=self.config.retention)
        return SQLiteJournal(
            self.config.db, self.reactor, self.config.retention, self.config.synchronous
        )

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Open the journal and listen; fails with JournalError or CannotListenError."""
        config = self.config
        journal = self.journal = self._open_journal()
        self.hub = Hub(journal, page_size=config.page_size, max_pending=config.max_pending)
        self.state = BuildState()
        try:
            # Before listening: no event can arrive between the rebuild and following live.
            yield self.state.rebuild(journal)
        except BaseException:
            yield journal.close()
            raise
        self.ingest_stats = IngestStats()
        self.site = build_site(
            hub=self.hub,
            journal=journal,
            tokens=MasterTokens(config.tokens),
            clock=self.reactor,
            max_body=config.max_body,
            ingest_stats=self.ingest_stats,
            journal_bytes=getattr(journal, "size_bytes", lambda: 0),
            state=self.state,
        )
        self.site.reactor = self.reactor  # the clock of the request deadline and idle timeout
        self.site.request_timeout = config.request_timeout
        self.site.timeOut = config.idle_timeout
        self._connections = ConnectionLimits(
            self.site,
            config.max_connections or default_max_connections(),
            config.max_connections_per_address,
            self.reactor,
        )
        try:
            self.webhooks = make_dispatcher(self.hub, config.webhooks, config.db, self.reactor)
            mount_webhooks(self.site.resource, self.webhooks, config.webhooks.admin_token)
            self.webhooks.load()
            endpoint = serverFromString(self.reactor, config.listen)
            self.port = yield endpoint.listen(self._connections)
        except BaseException:
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
        self.log.info(
            "firehose listening on {url} (journal {db}, epoch {epoch}, {n} events, masters: {masters})",
            url=self.url,
            db=config.db,
            epoch=journal.epoch,
            n=journal.head - journal.earliest + 1,
            masters=", ".join(sorted(config.tokens)) or "none configured",
        )
        return self

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
        for sub in list(self.hub.subscriptions):
            sub.close()
        yield self._connections.close_all()
        if self.journal is not None:
            yield self.journal.close()
            self.journal = None
