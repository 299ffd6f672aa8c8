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
from typing import TYPE_CHECKING, Any

from firehose import __version__

if TYPE_CHECKING:
    from firehose.service import Config

# Kept in step with firehose.service, which the client commands never import (it is slow to
# import: it brings autobahn and the whole site).
DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
TOKENS_ENV = "FIREHOSE_MASTER_TOKENS"


def _parser() -> argparse.ArgumentParser:
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
    serve.add_argument("--db", metavar="PATH", help="SQLite journal file (default firehose.sqlite; ':memory:' keeps nothing)")
    serve.add_argument(
        "--master-token", metavar="NAME=TOKEN", action="append", default=[],
        help="allow master NAME to ingest with bearer TOKEN (repeatable)",
    )
    serve.add_argument("--config", metavar="FILE", help="TOML config file (see docs/server.md)")
    serve.add_argument("--max-body", metavar="BYTES", type=int, help="largest ingest body accepted (default 1 MiB)")
    serve.add_argument("--retention-days", metavar="DAYS", type=float, help="drop events older than this (default 7)")
    serve.add_argument("--retention-events", metavar="N", type=int, help="keep at most N events (default 10,000,000)")
    serve.add_argument(
        "--synchronous", choices=["FULL", "NORMAL"],
        help="FULL (default): an acknowledged batch survives a power cut; NORMAL: a process crash only",
    )
    serve.add_argument(
        "--webhook-admin-token", metavar="TOKEN",
        help="bearer token of the webhook API /api/webhooks (or FIREHOSE_WEBHOOK_ADMIN_TOKEN; "
        "without one the API is off)",
    )
    serve.add_argument(
        "--webhook-allow-network", metavar="CIDR", action="append", default=[],
        help="let webhooks reach this network although it is refused by default (loopback, private, "
        "link-local...), e.g. 127.0.0.0/8 (repeatable)",
    )
    limits = serve.add_argument_group("limits", "what one client may hold (see docs/server.md#limits)")
    limits.add_argument(
        "--max-connections", metavar="N", type=int,
        help="open connections in all; past it: 503 (default 10,000, or 90%% of the open file limit)",
    )
    limits.add_argument(
        "--max-connections-per-address", metavar="N", type=int,
        help="open connections per client address; past it: 429 (default 256; 0: no limit, for a proxy)",
    )
    limits.add_argument(
        "--request-timeout", metavar="SECONDS", type=float,
        help="a request (line, headers, body) must arrive within this of its first byte; past it: 408 (default 10)",
    )
    limits.add_argument(
        "--idle-timeout", metavar="SECONDS", type=float,
        help="close a keep-alive connection quiet between requests for this long (default 60)",
    )
    from firehose.cli_tools import add_commands

    add_commands(commands)
    return parser


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """Environment, then config file, then flags: each later one wins."""
    from firehose.journal import Retention
    from firehose.service import (
        Config,
        ConfigError,
        check_config,
        check_limit,
        load_config_file,
        parse_token,
        tokens_from_env,
    )

    config = Config(tokens=tokens_from_env(environ))
    from firehose.webhooks import ADMIN_TOKEN_ENV

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
    if getattr(args, "webhook_admin_token", None):
        config.webhooks.admin_token = args.webhook_admin_token
    config.webhooks.allow_networks += getattr(args, "webhook_allow_network", None) or []
    for key in ("max_connections", "max_connections_per_address", "request_timeout", "idle_timeout"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(config, key, check_limit("--" + key.replace("_", "-"), key, value))
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
    from firehose.service import ConfigError, FirehoseServer

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
        from firehose.service import ConfigError

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
