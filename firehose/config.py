"""The server's configuration: its fields and defaults, the config file, the environment, the checks.

One home for every setting, so the CLI (``firehose serve --help``, reading flags and the file)
and the server read the same defaults.  Nothing here imports Twisted: the CLI's client commands
and a user's own tools import this module without paying for the server (autobahn, the site).

Precedence is the CLI's business (:func:`firehose.cli.config_from_args`): environment, then
config file, then flags.  This module reads each source and checks the result.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from firehose.schema import MASTER_NAME_PATTERN
from firehose.webhooks.errors import WebhookError
from firehose.webhooks.hooks import check_filter, check_format, check_previous_secrets, check_secret
from firehose.webhooks.urls import parse_networks, parse_url

#: Where the server listens by default: loopback only, so nothing is exposed by accident.
DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
#: The SQLite journal file used when none is configured.
DEFAULT_DB = "firehose.sqlite"
#: Largest ingest body accepted, in bytes.
DEFAULT_MAX_BODY = 1024 * 1024
#: ``max_connections`` is at most this, and at most 90% of the file descriptor soft limit.
DEFAULT_MAX_CONNECTIONS = 10_000
#: Open connections one client address may hold (0: no limit).
DEFAULT_MAX_PER_ADDRESS = 256
#: Seconds from a request's first byte until it must be received whole (line, headers, body).
DEFAULT_REQUEST_TIMEOUT = 10.0
#: Seconds a keep-alive connection may stay quiet between requests (Twisted's default too).
DEFAULT_IDLE_TIMEOUT = 60.0
#: Seconds between checkpoints of the build state while running (0: only at a clean stop).
DEFAULT_CHECKPOINT_INTERVAL = 300.0
#: Events the build state may have to replay for the server to still catch up before it
#: listens (about a quarter of a second); with more, it listens at once and warms up.
DEFAULT_REPLAY_BEFORE_LISTENING = 5_000

#: Master tokens from the environment, ``"m1=tok1,m2=tok2"`` (keeps them out of ``ps``).
TOKENS_ENV = "FIREHOSE_MASTER_TOKENS"
#: The bearer token of ``/api/webhooks`` from the environment.
ADMIN_TOKEN_ENV = "FIREHOSE_WEBHOOK_ADMIN_TOKEN"


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the configuration."""


@dataclass(frozen=True)
class Retention:
    """How much history to keep; ``None`` means no limit on that axis.

    :param max_age: seconds an event is kept after it was received.
    :param max_events: events kept at most (the oldest go first).
    """

    max_age: float | None = 7 * 24 * 3600.0
    max_events: int | None = 10_000_000


@dataclass
class WebhookConfig:
    """The ``[webhooks]`` part of the server configuration.

    :param admin_token: bearer token of ``/api/webhooks``; without one the API answers 403.
    :param hooks: hooks defined in the config file: ``{name: {"url", "secret", "filter",
        "previous_secrets", "format"}}``.
    :param state_path: the JSON state file; default ``<db>.webhooks.json`` (nothing is kept
        with a ``:memory:`` journal).
    :param max_failures: consecutive failed deliveries before a hook is disabled.
    :param timeout: seconds a delivery may take in all: resolving, connecting, the answer.
    :param allow_networks: CIDR networks receivers may be in although they are refused by
        default (loopback, private, link-local...), e.g. ``["127.0.0.0/8"]``.
    """

    admin_token: str | None = None
    hooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    state_path: str | None = None
    max_failures: int = 10
    retry_initial: float = 1.0
    retry_max: float = 300.0
    timeout: float = 10.0
    batch_size: int = 100
    allow_networks: list[str] = field(default_factory=list)


_WEBHOOK_KEYS = {"admin_token", "hooks", "state_path", "max_failures", "retry_initial", "retry_max",
                 "timeout", "batch_size", "allow_networks"}


def apply_config_table(table: Mapping[str, Any], config: WebhookConfig) -> WebhookConfig:
    """Overlay the ``[webhooks]`` TOML table; raises :class:`WebhookError` naming a bad key.

    ```toml
    [webhooks]
    admin_token = "..."
    max_failures = 10
    allow_networks = ["10.1.0.0/16"]   # receivers inside; refused by default
    [webhooks.hooks.try-results]
    url = "https://ci-bot.example/firehose"
    secret = "..."
    filter = {type = "build.finished", builder = "try-*"}
    ```
    """
    unknown = set(table) - _WEBHOOK_KEYS
    if unknown:
        raise WebhookError(f"[webhooks]: unknown keys {sorted(unknown)}; known: {sorted(_WEBHOOK_KEYS)}")
    for key in ("admin_token", "state_path"):
        if key in table:
            setattr(config, key, str(table[key]))
    for key in ("max_failures", "batch_size"):
        if key in table:
            setattr(config, key, int(table[key]))
    for key in ("retry_initial", "retry_max", "timeout"):
        if key in table:
            setattr(config, key, float(table[key]))
    if "allow_networks" in table:
        parse_networks(table["allow_networks"])
        config.allow_networks += [str(n) for n in table["allow_networks"]]
    for name, spec in (table.get("hooks") or {}).items():
        if not isinstance(spec, Mapping):
            raise WebhookError(f"[webhooks.hooks.{name}] must be a table with url, secret, filter")
        extra = set(spec) - {"url", "secret", "filter", "previous_secrets", "format"}
        if extra:
            raise WebhookError(f"[webhooks.hooks.{name}]: unknown keys {sorted(extra)}")
        if not spec.get("secret"):
            raise WebhookError(f"[webhooks.hooks.{name}] needs a 'secret'")
        try:
            # Its address is checked when the dispatcher loads, once flags have added networks.
            parse_url(spec.get("url"))
            check_filter(spec.get("filter"))
            check_secret(str(spec["secret"]), min_length=1)
            check_previous_secrets(spec.get("previous_secrets", []), min_length=1)
            check_format(spec.get("format"))
        except WebhookError as exc:
            raise WebhookError(f"[webhooks.hooks.{name}]: {exc}") from None
        config.hooks[str(name)] = dict(spec)
    return config


@dataclass
class Config:
    """Everything a server needs.  The defaults are the embedded, single-node setup.

    :param db: SQLite journal file, or ``:memory:`` for a journal that dies with the process.
    :param tokens: master name -> bearer token it must present on ``/ingest``.
    """

    listen: str = DEFAULT_LISTEN
    db: str = DEFAULT_DB
    tokens: dict[str, str] = field(default_factory=dict)
    max_body: int = DEFAULT_MAX_BODY
    retention: Retention = field(default_factory=Retention)
    synchronous: str = "FULL"
    #: ``redis://HOST:PORT/DB``: the shared journal of several nodes (issue #12) instead of ``db``.
    redis: str | None = None
    #: With ``redis``: replicas that must acknowledge each write (``WAIT``) before a 200.
    redis_wait_replicas: int = 0
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
    #: Keep a checkpoint of the build state (:func:`checkpoint_path`), so a restart need not rebuild it.
    checkpoint: bool = True
    #: Seconds between checkpoints while running (written by a forked child); 0: only at a clean stop.
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL
    #: The checkpoint file; ``None``: ``<db>.state`` (none for a ``:memory:`` journal).
    state_path: str | None = None
    #: With at most this many events to replay into the state the server catches up before it
    #: listens; with more it listens at once and ``/api`` answers 503 ``warming_up`` meanwhile.
    replay_before_listening: int = DEFAULT_REPLAY_BEFORE_LISTENING


def checkpoint_path(config: Config) -> str | None:
    """Where the build state's checkpoint is kept: ``state_path``, or ``<db>.state`` next to the
    journal; ``None`` when checkpoints are off or the journal is ``:memory:`` (with ``--redis``,
    ``db`` only names where the node's local files go)."""
    if not config.checkpoint:
        return None
    if config.state_path:
        return config.state_path
    if config.db == ":memory:":
        return None
    return f"{config.db}.state"


def parse_token(text: str) -> tuple[str, str]:
    """``NAME=TOKEN`` -> ``(name, token)``, with a message that says what is wrong."""
    name, sep, token = text.partition("=")
    name, token = name.strip(), token.strip()
    if not sep or not name or not token:
        raise ConfigError(f"master token {text!r} must look like NAME=TOKEN")
    if not re.match(MASTER_NAME_PATTERN, name):
        raise ConfigError(f"master name {name!r} may only hold letters, digits, '.', '_' and '-'")
    return name, token


def tokens_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Tokens from ``FIREHOSE_MASTER_TOKENS="m1=tok1,m2=tok2"`` (keeps them out of ``ps``)."""
    raw = (environ if environ is not None else os.environ).get(TOKENS_ENV, "")
    return dict(parse_token(t) for t in raw.split(",") if t.strip())


def load_config_file(path: str, config: Config) -> Config:
    """Overlay a TOML file on ``config``.  Keys: ``listen``, ``db``, ``max_body``, ``synchronous``,
    ``redis``, ``redis_wait_replicas``,
    ``[masters]`` (name = token), ``[retention]`` (``max_age_days``, ``max_events``),
    ``[limits]`` (``max_connections``, ``max_connections_per_address``, ``request_timeout``,
    ``idle_timeout``), ``[state]`` (``checkpoint``, ``checkpoint_interval``, ``path``,
    ``replay_before_listening``), ``[webhooks]`` (:func:`apply_config_table`)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    known = {"listen", "db", "max_body", "synchronous", "masters", "retention", "webhooks", "limits",
             "redis", "redis_wait_replicas", "state"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"config file {path!r}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    for key in ("listen", "db", "synchronous"):
        if key in data:
            setattr(config, key, str(data[key]))
    if "max_body" in data:
        config.max_body = int(data["max_body"])
    if "redis" in data:
        config.redis = str(data["redis"])
    if "redis_wait_replicas" in data:
        config.redis_wait_replicas = int(data["redis_wait_replicas"])
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
        except (TypeError, ValueError) as exc:  # WebhookError is a ValueError
            raise ConfigError(f"config file {path!r}: {exc}") from None
    for table, apply in (("limits", _apply_limits), ("state", _apply_state)):
        if table in data:
            try:
                apply(data[table], config)
            except ConfigError as exc:
                raise ConfigError(f"config file {path!r}: {exc}") from None
    return config


#: ``[state]`` keys: the ``Config`` field each sets.
STATE_KEYS = {"checkpoint": "checkpoint", "checkpoint_interval": "checkpoint_interval", "path": "state_path",
              "replay_before_listening": "replay_before_listening"}


def _apply_state(table: Any, config: Config) -> None:
    if not isinstance(table, dict):
        raise ConfigError("[state] must be a table")
    unknown = set(table) - set(STATE_KEYS)
    if unknown:
        raise ConfigError(f"[state]: unknown keys {sorted(unknown)}; known: {sorted(STATE_KEYS)}")
    for key, value in table.items():
        if key == "checkpoint" and not isinstance(value, bool):
            raise ConfigError(f"[state] checkpoint must be true or false, not {value!r}")
        if key == "path" and (not isinstance(value, str) or not value):
            raise ConfigError(f"[state] path must be a file name, not {value!r}")
        setattr(config, STATE_KEYS[key], value)
    _check_state(config, "[state] ")


def _check_state(config: Config, where: str = "") -> None:
    interval = config.checkpoint_interval
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0:
        raise ConfigError(f"{where}checkpoint_interval must be a number of seconds, 0 or more, not {interval!r}")
    config.checkpoint_interval = float(interval)
    replay = config.replay_before_listening
    if isinstance(replay, bool) or not isinstance(replay, int) or replay < 0:
        raise ConfigError(f"{where}replay_before_listening must be an integer, 0 or more, not {replay!r}")


#: ``[limits]`` keys (also ``Config`` fields): type, least value, whether the least is allowed.
LIMITS: dict[str, tuple[type, float, bool]] = {
    "max_connections": (int, 1, True),
    "max_connections_per_address": (int, 0, True),
    "request_timeout": (float, 0, False),
    "idle_timeout": (float, 0, False),
}


def _apply_limits(table: Any, config: Config) -> None:
    if not isinstance(table, dict):
        raise ConfigError("[limits] must be a table")
    unknown = set(table) - set(LIMITS)
    if unknown:
        raise ConfigError(f"[limits]: unknown keys {sorted(unknown)}; known: {sorted(LIMITS)}")
    for key, value in table.items():
        setattr(config, key, check_limit(f"[limits] {key}", key, value))


def check_limit(where: str, key: str, value: Any) -> Any:
    """A connection limit's value, checked: an int (or, for a timeout, a number) of at least its
    minimum; ``where`` names it in the error (the config key or the flag)."""
    kind, least, inclusive = LIMITS[key]
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
    for key in LIMITS:
        value = getattr(config, key)
        if value is not None or key != "max_connections":
            check_limit(key, key, value)
    _check_state(config)
    return config
