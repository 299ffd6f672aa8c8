"""The ``firehose`` command.

Exit codes of ``serve``: 0 clean stop, 1 runtime failure (port busy, journal unusable), 2 bad
usage or config.  ``tail``, ``wait`` and ``query`` are in :mod:`firehose.cli_tools` (their exit
codes are in its docstring and their ``--help``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from firehose import __version__

# firehose.config imports nothing of Twisted, so the client commands stay fast to start;
# firehose.service (autobahn and the whole site) is imported only to serve.
from firehose.config import (
    ADMIN_TOKEN_ENV,
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_DB,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LISTEN,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_ADDRESS,
    DEFAULT_REQUEST_TIMEOUT,
    TOKENS_ENV,
    Config,
    ConfigError,
    Retention,
    check_config,
    check_limit,
    load_config_file,
    parse_token,
    tokens_from_env,
)


def _parser() -> argparse.ArgumentParser:
    retention = Retention()
    parser = argparse.ArgumentParser(prog="firehose", description="A live event firehose for Buildbot.")
    parser.add_argument("--version", action="version", version=f"firehose {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the firehose server: ingest from masters, journal, fan out to subscribers.",
        epilog=f"Master tokens may also come from the environment: {TOKENS_ENV}='m1=tok1,m2=tok2'. "
        "Command-line values override the config file, which overrides the environment.",
    )
    serve.add_argument("--listen", metavar="ENDPOINT", help=f"Twisted endpoint string (default {DEFAULT_LISTEN})")
    serve.add_argument("--db", metavar="PATH", help=f"SQLite journal file (default {DEFAULT_DB}; ':memory:' keeps nothing)")
    serve.add_argument(
        "--master-token", metavar="NAME=TOKEN", action="append", default=[],
        help="allow master NAME to ingest with bearer TOKEN (repeatable)",
    )
    serve.add_argument("--config", metavar="FILE", help="TOML config file (see docs/server.md)")
    serve.add_argument("--max-body", metavar="BYTES", type=int, help=f"largest ingest body accepted (default {_size(DEFAULT_MAX_BODY)})")
    serve.add_argument("--retention-days", metavar="DAYS", type=float, help=f"drop events older than this (default {_days(retention.max_age)})")
    serve.add_argument("--retention-events", metavar="N", type=int, help=f"keep at most N events (default {_count(retention.max_events)})")
    serve.add_argument(
        "--redis", metavar="URL",
        help="share one journal with other nodes on Redis Streams, redis://HOST:PORT/DB (instead of --db; "
        "see docs/server.md for the persistence settings that make a 200 durable)",
    )
    serve.add_argument(
        "--redis-wait-replicas", metavar="N", type=int,
        help="with --redis: acknowledge a batch only once N Redis replicas have it (WAIT)",
    )
    serve.add_argument(
        "--synchronous", choices=["FULL", "NORMAL"],
        help="FULL (default): an acknowledged batch survives a power cut; NORMAL: a process crash only",
    )
    serve.add_argument(
        "--webhook-admin-token", metavar="TOKEN",
        help=f"bearer token of the webhook API /api/webhooks (or {ADMIN_TOKEN_ENV}; "
        "without one the API is off)",
    )
    serve.add_argument(
        "--webhook-allow-network", metavar="CIDR", action="append", default=[],
        help="let webhooks reach this network although it is refused by default (loopback, private, "
        "link-local...), e.g. 127.0.0.0/8 (repeatable)",
    )
    state = serve.add_argument_group("build state", "the /api view's checkpoint (see docs/server.md#start-up)")
    state.add_argument(
        "--checkpoint-interval", metavar="SECONDS", type=float,
        help="write a checkpoint of the build state this often while running, besides at every clean "
        f"stop (default {DEFAULT_CHECKPOINT_INTERVAL:g}; 0: only at a clean stop)",
    )
    state.add_argument(
        "--no-checkpoint", action="store_true", default=None,
        help="keep no checkpoint: every start rebuilds the state from the journal",
    )
    limits = serve.add_argument_group("limits", "what one client may hold (see docs/server.md#limits)")
    limits.add_argument(
        "--max-connections", metavar="N", type=int,
        help=f"open connections in all; past it: 503 (default {DEFAULT_MAX_CONNECTIONS:,}, "
        "or 90%% of the open file limit)",
    )
    limits.add_argument(
        "--max-connections-per-address", metavar="N", type=int,
        help=f"open connections per client address; past it: 429 (default {DEFAULT_MAX_PER_ADDRESS}; "
        "0: no limit, for a proxy)",
    )
    limits.add_argument(
        "--request-timeout", metavar="SECONDS", type=float,
        help="a request (line, headers, body) must arrive within this of its first byte; past it: 408 "
        f"(default {DEFAULT_REQUEST_TIMEOUT:g})",
    )
    limits.add_argument(
        "--idle-timeout", metavar="SECONDS", type=float,
        help=f"close a keep-alive connection quiet between requests for this long (default {DEFAULT_IDLE_TIMEOUT:g})",
    )
    from firehose.cli_tools import add_commands

    add_commands(commands)
    return parser


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n:,} bytes"


def _days(seconds: float | None) -> str:
    return "none" if seconds is None else f"{seconds / 86400:g}"


def _count(n: int | None) -> str:
    return "none" if n is None else f"{n:,}"


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """Environment, then config file, then flags: each later one wins."""
    config = Config(tokens=tokens_from_env(environ))
    config.webhooks.admin_token = (environ if environ is not None else os.environ).get(ADMIN_TOKEN_ENV) or None
    if args.config:
        load_config_file(args.config, config)
    if args.listen:
        config.listen = args.listen
    if args.db:
        config.db = args.db
    for item in args.master_token:
        name, token = parse_token(item)
        config.tokens[name] = token
    if args.max_body is not None:
        if args.max_body < 1024:
            raise ConfigError("--max-body must be at least 1024 bytes")
        config.max_body = args.max_body
    if args.retention_days is not None or args.retention_events is not None:
        config.retention = Retention(
            max_age=args.retention_days * 86400 if args.retention_days is not None else config.retention.max_age,
            max_events=args.retention_events if args.retention_events is not None else config.retention.max_events,
        )
    if args.synchronous:
        config.synchronous = args.synchronous
    if getattr(args, "redis", None):
        config.redis = args.redis
    if getattr(args, "redis_wait_replicas", None) is not None:
        if args.redis_wait_replicas < 0:
            raise ConfigError("--redis-wait-replicas must be 0 or more")
        config.redis_wait_replicas = args.redis_wait_replicas
    if getattr(args, "webhook_admin_token", None):
        config.webhooks.admin_token = args.webhook_admin_token
    config.webhooks.allow_networks += getattr(args, "webhook_allow_network", None) or []
    for key in ("max_connections", "max_connections_per_address", "request_timeout", "idle_timeout"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(config, key, check_limit("--" + key.replace("_", "-"), key, value))
    if getattr(args, "checkpoint_interval", None) is not None:
        if not args.checkpoint_interval >= 0:
            raise ConfigError("--checkpoint-interval must be 0 or more seconds")
        config.checkpoint_interval = args.checkpoint_interval
    if getattr(args, "no_checkpoint", None):
        config.checkpoint = False
    return check_config(config)


def _serve(config: Config) -> int:
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from firehose.journal import JournalError
    from firehose.service import FirehoseServer

    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    server = FirehoseServer(config, reactor)
    outcome: dict[str, Any] = {"code": 0}

    def failed(failure: Any) -> None:
        if failure.check(CannotListenError):
            exc = failure.value
            print(f"firehose: cannot listen on {config.listen}: {exc.socketError}"
                  " (is another server using that port? choose another with --listen)", file=sys.stderr)
        elif failure.check(JournalError, ConfigError):
            print(f"firehose: {failure.getErrorMessage()}", file=sys.stderr)
        else:
            print(f"firehose: failed to start: {failure.getErrorMessage()}", file=sys.stderr)
        outcome["code"] = 1
        reactor.stop()

    def started(_: object) -> None:
        print(f"firehose: serving on {server.url}  (dashboard {server.url}/, stream {server.url}/sse)",
              file=sys.stderr, flush=True)
        reactor.addSystemEventTrigger("before", "shutdown", server.stop)

    def start() -> None:
        d = server.start()
        d.addCallbacks(started, failed)

    reactor.callWhenRunning(start)
    reactor.run()
    return int(outcome["code"])


def main(argv: Sequence[str] | None = None) -> int:
    from firehose.cli_tools import parse_args

    parser = _parser()
    args = parse_args(parser, argv)
    if args.command == "serve":
        try:
            config = config_from_args(args)
        except ConfigError as exc:
            print(f"firehose: {exc}", file=sys.stderr)
            return 2
        return _serve(config)
    if args.command in ("tail", "wait", "query"):
        from firehose.cli_tools import run

        return run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
