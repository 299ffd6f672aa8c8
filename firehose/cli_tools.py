"""``firehose tail``, ``firehose wait`` and ``firehose query``: the client side of the command.

Exit codes (also in ``--help``):

* ``tail``: 0 after ``--count`` events (or the stream was interrupted with Ctrl-C: 130);
  2 on an error (server unreachable at the start, bad filter, bad cursor).
* ``wait``: 0 every build of the revision succeeded (it is green); 1 at least one failed; 2 timeout
  or error.  "Done" is the pushlog's (``firehose.pushes.revision_status``, docs/api.md#is-my-push-done).
* ``query``: 0 answered; 2 on an error.

Errors are one line on stderr starting with ``firehose:``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from firehose.client import Gap, RequestError, Unavailable, query, stream, wait

TAIL_EPILOG = """\
filters: FIELD=PATTERN[,PATTERN...] with FIELD one of type, master, builder, branch, project,
repository, revision, worker, result, prop.NAME; '*' is a wildcard; several filters must all
match. Example: firehose tail http://127.0.0.1:8080 'builder=linux*' 'type=build.finished' result=failure

exit codes: 0 stopped after --count events; 2 error (server unreachable, bad filter or cursor);
130 interrupted. A dropped connection or server restart is retried from the last event shown.
"""

WAIT_EPILOG = """\
Follows the build requests, buildsets and builds whose source stamp, revision or got_revision is
REV (the server's history is searched first, so builds already queued or finished count; when
nothing has been submitted yet, it waits for the first submission). Each builder counts with its
newest build of REV (a rebuild or a retry replaces the one before; a request cancelled or
collapsed before it got a build does not count): the revision is done when all of them
finished, as the server's pushlog decides (/api/revisions, docs/api.md "Is my push done?").

exit codes: 0 all builds succeeded (done, success or warnings); 1 at least one failed
(failure, exception, cancelled; or every request was cancelled); 2 timeout, no build submitted
before the timeout, or error.
Example: firehose wait http://127.0.0.1:8080 --revision 4d2c9e1 --builder 'try-*' && notify-send done
"""


def _duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1h30m`` -> seconds."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or match is None or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use 90, 90s, 15m, 2h or 1h30m)")
    h, m, s = (float(g) if g else 0.0 for g in match.groups())
    return h * 3600 + m * 60 + s


_URL_HELP = ("the server, e.g. http://127.0.0.1:8080; or the nodes of one firehose separated by commas "
             "(tried in turn: on a failure the next one, resuming by cursor)")


def add_commands(commands: Any) -> None:
    """Add ``tail``, ``wait`` and ``query`` to the ``firehose`` command's subparsers."""
    raw = argparse.RawDescriptionHelpFormatter
    tail = commands.add_parser(
        "tail", help="print events as they happen", formatter_class=raw, epilog=TAIL_EPILOG,
        description="Stream events from a firehose server, one per line (JSON lines by default).",
    )
    tail.add_argument("url", metavar="URL[,URL...]", help=_URL_HELP)
    tail.add_argument("filters", metavar="FIELD=PATTERN", nargs="*", help="filters (see below)")
    tail.add_argument("--since", metavar="CURSOR",
                      help="start after this cursor (an event's id), or 'earliest' (default: now)")
    tail.add_argument("--format", choices=["json", "text"], default="json",
                      help="json: one event per line, as sent (default); text: one readable line")
    tail.add_argument("-n", "--count", metavar="N", type=int, help="exit after N events")

    wait_ = commands.add_parser(
        "wait", help="wait for the builds of a revision", formatter_class=raw, epilog=WAIT_EPILOG,
        description="Wait until every build for a revision (submitted so far, and those still "
        "queued) has finished; print a summary.",
    )
    wait_.add_argument("url", metavar="URL[,URL...]", help=_URL_HELP)
    wait_.add_argument("--revision", required=True, metavar="REV", help="the revision ('*' wildcard: 4d2c*)")
    wait_.add_argument("--branch", metavar="B", help="only builds of this branch (glob)")
    wait_.add_argument("--builder", metavar="GLOB", help="only builds of builders matching this glob")
    wait_.add_argument("--timeout", metavar="D", type=_duration,
                       help="give up after D (90s, 15m, 2h; default: wait as long as it takes)")
    wait_.add_argument("--since", metavar="CURSOR", default="earliest",
                       help="search history from this cursor (default: earliest retained event)")
    wait_.add_argument("-q", "--quiet", action="store_true", help="no progress lines, only the summary")

    query = commands.add_parser(
        "query", help="ask the /api/ query endpoints",
        description="GET /api/ENDPOINT with filters and print the JSON answer "
        "(endpoints: queue, running, builds, builds/MASTER/BUILDID, builders, revisions, lastgreen, "
        "steps, trend, waits, masters; without ENDPOINT, the server's own list).",
        epilog="exit codes: 0 answered; 2 error. Examples: firehose query URL builds builder=linux* limit=5; "
        "firehose query URL builds/bm1/1234; firehose query URL revisions branch=main",
    )
    query.add_argument("url", metavar="URL[,URL...]", help=_URL_HELP)
    query.add_argument("endpoint", metavar="ENDPOINT", nargs="?", default="",
                       help="e.g. queue, running, builds/MASTER/BUILDID (none: list the endpoints)")
    query.add_argument("params", metavar="NAME=VALUE", nargs="*", help="filters and paging (limit, offset)")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, letting ``FIELD=PATTERN`` filters of ``tail``/``query`` come after options too."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        target = {"tail": "filters", "query": "params"}.get(getattr(args, "command", ""))
        if target is None or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        getattr(args, target).extend(extra)
    return args


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if args.command == "tail":
            return _tail(args, out, err)
        if args.command == "wait":
            return _wait(args, out, err)
        if args.command == "query":
            return _query(args, out)
    except RequestError as exc:
        what = {"bad_filter": "bad filter", "bad_cursor": "bad cursor", "bad_url": "bad URL"}.get(exc.code, exc.code)
        print(f"firehose: {what}: {exc.message}", file=err)
        return 2
    except Unavailable as exc:
        print(f"firehose: {exc}", file=err)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (| head): not an error of ours.  Point stdout at /dev/null so
        # that the interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    raise AssertionError(args.command)


def parse_filters(items: Sequence[str]) -> dict[str, list[str]]:
    """``["builder=linux*", "type=build.*"]`` -> ``{"builder": ["linux*"], "type": ["build.*"]}``."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise RequestError("bad_filter", f"{item!r} is not FIELD=PATTERN")
        out.setdefault(name.strip(), []).append(value)
    return out


def _tail(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    text = args.format == "text"
    if args.count is not None and args.count < 1:
        raise RequestError("bad_request", "--count must be at least 1")
    seen = 0

    def gap(g: Gap) -> None:
        if text:
            print(f"firehose: gap ({g.reason}): events up to {g.cursor} are lost; continuing", file=err)
        else:
            print(json.dumps(g, separators=(",", ":")), file=out, flush=True)

    events = stream(args.url, since=args.since, filter=parse_filters(args.filters), on_gap=gap, fail_fast=True)
    for event in events:
        print(format_text(event) if text else json.dumps(event, separators=(",", ":"), ensure_ascii=False),
              file=out, flush=True)
        seen += 1
        if args.count is not None and seen >= args.count:
            return 0
    return 0


def _when(ts: Any) -> str:
    try:
        return datetime.datetime.fromtimestamp(float(ts)).strftime("%H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "--:--:--"


def format_text(event: dict[str, Any]) -> str:
    """One readable line: time, type, what it is about, its outcome, where."""
    d = event.get("data") or {}
    kind = event.get("type", "?")
    entity = kind.partition(".")[0]
    what: list[str] = []
    if entity in ("build", "step", "log"):
        number = d.get("number") if entity == "build" else d.get("build_number")
        what.append(f"{d.get('builder', '?')} #{number}" if number is not None else str(d.get("builder", "?")))
        if entity in ("step", "log") and d.get("name"):
            what.append(f"step {d.get('step') or d.get('name')}" if entity == "step" else f"log {d['name']}")
    elif entity == "request":
        what.append(f"{d.get('builder', '?')} request {d.get('buildrequestid')}")
    elif entity == "buildset":
        what.append(f"buildset {d.get('buildsetid')} ({', '.join(d.get('builders') or []) or '-'})")
    elif entity == "change":
        what.append(f"change {d.get('changeid')} by {d.get('author')}")
    elif entity == "worker":
        what.append(f"worker {d.get('worker')}")
    if d.get("result"):
        what.append(str(d["result"]).upper() if d["result"] not in ("success", "warnings") else d["result"])
    source = [s for s in (d.get("branch"), (d.get("revision") or "")[:12]) if s]
    if source:
        what.append("@".join(source))
    if entity == "log" and d.get("lines"):
        what.append(f"{len(d['lines'])} lines")
    return f"{_when(event.get('time'))} {kind:<18} {' '.join(what)}  [{event.get('master')}]".rstrip()


def _wait(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    def progress(line: str) -> None:
        if not args.quiet:
            print(line, file=err, flush=True)

    result = wait(args.url, args.revision, branch=args.branch, builder=args.builder, timeout=args.timeout,
                  since=args.since, on_progress=progress)
    print(result.summary(), file=out, flush=True)
    return result.exit_code


def _query(args: argparse.Namespace, out: TextIO) -> int:
    params = {}
    for item in args.params:
        name, sep, value = item.partition("=")
        if not sep:
            raise RequestError("bad_request", f"{item!r} is not NAME=VALUE")
        params[name] = value
    answer = query(args.url, args.endpoint, **params)
    print(json.dumps(answer, indent=2, ensure_ascii=False), file=out)
    return 0

