"""``firehose tail`` and ``firehose wait`` as a user runs them, against a real server process,
with event sequences shaped like the Buildbot plugin's (firehose.testing.try_push)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from firehose.testing import try_push

from .client_support import Lines, ingest_events
from .conftest import DEADLINE, Master, free_port

pytestmark = pytest.mark.slow


def firehose(*args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firehose.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def main(capsys: Any, *args: str) -> tuple[int, str, str]:
    """Run the command in this process (the same code path, without interpreter start-up)."""
    from firehose.cli import main as cli_main

    try:
        code = cli_main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def start_firehose(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "firehose.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def push(server: Any, revision: str, results: dict[str, str], incarnation: str, **kw: Any) -> list[dict[str, Any]]:
    events = try_push(revision, results, **kw)
    ingest_events(server, events, incarnation=incarnation)
    return events


def test_help_on_every_command(capsys):
    """Every command has --help, and the client commands document their exit codes; the
    installed entry point works."""
    helps = {}
    for command in ("serve", "tail", "wait", "query"):
        code, out, _ = main(capsys, command, "--help")
        assert code == 0
        assert "usage: firehose " + command in out
        helps[command] = out.replace("\n", " ")
    assert "exit codes" in helps["tail"] and "exit codes" in helps["query"]
    assert "1 at least one failed" in helps["wait"]
    done = firehose("wait", "--help")
    assert done.returncode == 0 and "--revision" in done.stdout


def test_tail_json_lines(module_server):
    """``tail --format json`` prints each matching event as one JSON line, as the server sent it;
    filters may come after options."""
    m = Master("m1", "tail-json")
    module_server.ingest([m.event("build.started"), m.event("step.started"), m.event("build.finished",
                                                                                     result="failure", results=2)])
    done = firehose("tail", module_server.url, "--since", "earliest", "-n", "2", "type=build.*",
                    "master=m1", "builder=linux")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["type"] for e in events] == ["build.started", "build.finished"]
    assert all(e["id"] and e["incarnation"] == "tail-json" for e in events)


def test_tail_text_live(module_server):
    """``tail --format text`` follows live events (no --since) with one readable line each:
    type, builder and number, result, branch@revision."""
    proc = start_firehose("tail", module_server.url, "--format", "text", "-n", "2", "builder=text-*")
    lines = Lines(proc)
    try:
        module_server.wait_subscribers("longpoll", 1)
        m = Master("m1", "tail-text")
        module_server.ingest([
            m.event("build.started", builder="text-linux", branch="main", revision="4d2c9e1f00"),
            m.event("build.finished", builder="text-linux", branch="main", revision="4d2c9e1f00",
                    result="failure", results=2),
        ])
        first, second = lines.take(2)
        assert proc.wait(DEADLINE) == 0
    finally:
        lines.stop()
    assert "build.started" in first and "text-linux #" in first and "main@4d2c9e1f00" in first
    assert "build.finished" in second and "FAILURE" in second and "[m1]" in second


def test_tail_errors_are_one_clear_line(module_server, capsys):
    """A bad filter, a malformed cursor, a cursor the server refuses and an unreachable server
    each print one line starting with 'firehose:' and exit 2."""
    epoch = module_server.health()["cursor"].split(":")[0]
    cases = [
        (("tail", module_server.url, "colour=red"), "bad filter"),
        (("tail", module_server.url, "builder="), "bad filter"),
        (("tail", module_server.url, "--since", "yesterday"), "bad cursor"),
        (("tail", module_server.url, "--since", f"{epoch}:99999999"), "bad cursor"),
        (("tail", f"http://127.0.0.1:{free_port()}"), "cannot reach"),
        (("wait", f"http://127.0.0.1:{free_port()}", "--revision", "abc"), "cannot reach"),
        (("query", f"http://127.0.0.1:{free_port()}", "builds"), "cannot reach"),
    ]
    for args, words in cases:
        code, out, err = main(capsys, *args)
        assert code == 2, (args, out, err)
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("firehose: ") and words in err, err
    done = firehose("tail", module_server.url, "colour=red")
    assert done.returncode == 2 and done.stderr.startswith("firehose: bad filter"), done.stderr


def test_wait_exit_0_when_all_succeeded(module_server, capsys):
    """Builds that already finished are found in the history: exit 0 and a summary naming them."""
    push(module_server, "aaa111", {"try-linux": "success", "try-mac": "warnings"}, "wait-ok")
    code, out, err = main(capsys, "wait", module_server.url, "--revision", "aaa111", "--timeout", "20s")
    assert code == 0, out + err
    assert "all 2 succeeded" in out
    assert "try-linux #1" in out and "try-mac #1" in out


def test_wait_exit_1_when_one_failed(module_server, capsys):
    """One failed build makes the exit code 1, and --builder narrows what counts."""
    push(module_server, "bbb222", {"try-linux": "success", "try-win": "failure"}, "wait-fail",
         buildsetid=20, first_buildrequestid=20, first_buildid=20)
    done = firehose("wait", module_server.url, "--revision", "bbb222", "--timeout", "20s")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 of 2 failed" in done.stdout and "failure" in done.stdout
    code, out, _ = main(capsys, "wait", module_server.url, "--revision", "bbb222", "--builder", "try-lin*")
    assert code == 0, out


def test_wait_exit_2_on_timeout_with_nothing_submitted(module_server, capsys):
    """Nothing submitted for the revision before the timeout: exit 2, saying so."""
    code, out, _ = main(capsys, "wait", module_server.url, "--revision", "never-pushed", "--timeout", "1s")
    assert code == 2
    assert "no build was submitted" in out


def test_wait_counts_queued_builds_and_waits_for_first_submission(module_server):
    """Started before anything is submitted, ``wait`` waits for the push; once one build has
    finished it keeps waiting for the queued one, then exits 0 when that succeeds."""
    events = try_push("ccc333", {"try-linux": "success", "try-arm": "success"},
                      buildsetid=30, first_buildrequestid=30, first_buildid=30)
    # Split after try-linux's request.completed: try-arm is then only queued.
    cut = next(i for i, e in enumerate(events)
               if e["type"] == "request.completed" and e["data"]["builder"] == "try-linux") + 1
    proc = start_firehose("wait", module_server.url, "--revision", "ccc333", "--timeout", "20s")
    assert proc.stderr is not None
    try:
        module_server.wait_subscribers("longpoll", 1)  # it is following the live stream
        ingest_events(module_server, events[:cut], incarnation="wait-live")
        assert "try-linux #1: success" in proc.stderr.readline()
        assert proc.poll() is None  # try-arm is still queued
        ingest_events(module_server, events[cut:], incarnation="wait-live", first_seq=cut + 1)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, out + err
    assert "all 2 succeeded" in out


def test_wait_exit_2_on_timeout_while_building(module_server, capsys):
    """A build that never finishes within the timeout: exit 2, naming what was still pending."""
    push(module_server, "ddd444", {"try-slow": "success"}, "wait-slow", finish=False,
         buildsetid=40, first_buildrequestid=40, first_buildid=40)
    code, out, _ = main(capsys, "wait", module_server.url, "--revision", "ddd444", "--timeout", "1s")
    assert code == 2
    assert "timed out" in out and "try-slow" in out


def test_wait_follows_a_build_whose_finish_names_its_got_revision(module_server, capsys):
    """A build started for the revision but finishing under its got_revision (a branch-head
    build) is still followed to its end, even when all of it happened before ``wait`` ran."""
    events = try_push("eee555", {"try-linux": "success"}, buildsetid=50, first_buildrequestid=50,
                      first_buildid=50)
    for event in events:
        if event["type"] == "build.finished":
            event["data"]["revision"] = "f" * 40  # got_revision, unknown to the history filter
    ingest_events(module_server, events, incarnation="wait-got")
    code, out, err = main(capsys, "wait", module_server.url, "--revision", "eee555", "--timeout", "10s")
    assert code == 0, out + err
    assert "all 1 succeeded" in out


def test_query_without_endpoint_lists_them_and_help_names_only_real_ones(module_server, capsys):
    """``firehose query URL`` prints the server's endpoint list (it was a 404); every endpoint
    listed is named in ``query --help``, the help's build example is a path that answers
    (``builds/MASTER/BUILDID``, not ``builds/123``), and an unknown endpoint is one clear line
    naming the real ones."""
    code, out, err = main(capsys, "query", module_server.url)
    assert code == 0, err
    endpoints = json.loads(out)["endpoints"]
    assert "/api/builds" in endpoints and "/api/revisions" in endpoints
    _, helptext, _ = main(capsys, "query", "--help")
    helptext = " ".join(helptext.split())
    assert "builds/123" not in helptext and "builds/MASTER/BUILDID" in helptext
    for name in ("queue", "running", "builds", "builders", "revisions", "lastgreen", "steps", "trend", "masters"):
        assert f"/api/{name}" in endpoints and name in helptext
    m = Master("m2", "query-one")
    module_server.ingest([m.event("build.started", builder="linux", buildid=777)])
    code, out, err = main(capsys, "query", module_server.url, "builds/m2/777")
    assert code == 0, err
    assert json.loads(out)["build"]["buildid"] == 777
    code, out, err = main(capsys, "query", module_server.url, "nope")
    assert code == 2 and out == ""
    assert err.startswith("firehose: not_found: no endpoint /api/nope") and "/api/queue" in err


def test_wait_agrees_with_the_pushlog(module_server, capsys):
    """``firehose wait`` and ``/api/revisions?revision=`` give one answer (firehose.pushes):
    a failure rebuilt green is green for both (exit 0; before the shared definition ``wait``
    said 1), a failure is a failure for both (exit 1, the pushlog naming the builder in
    ``failures``), and a request cancelled beside a green build counts for neither."""
    from firehose.client import query, wait

    push(module_server, "agr111", {"try-linux": "failure", "try-mac": "success"}, "agree-1",
         buildsetid=60, first_buildrequestid=60, first_buildid=60)
    push(module_server, "agr111", {"try-linux": "success"}, "agree-2",  # the rebuild: a new buildset
         buildsetid=61, first_buildrequestid=62, first_buildid=63, start_time=1_700_000_100.0)
    push(module_server, "agr222", {"try-linux": "success", "try-win": "failure"}, "agree-3",
         buildsetid=70, first_buildrequestid=70, first_buildid=70)
    events = try_push("agr333", {"try-linux": "success", "try-mac": "success"}, buildsetid=80,
                      first_buildrequestid=80, first_buildid=80, finish=["try-linux"])
    # try-mac's request is cancelled before it got a build instead.
    events = [e for e in events if e["data"].get("builder") != "try-mac" or e["type"] == "request.submitted"]
    mac = next(e for e in events if e["type"] == "request.submitted" and e["data"]["builder"] == "try-mac")
    events.append({**mac, "type": "request.cancelled", "time": mac["time"] + 50})
    ingest_events(module_server, events, incarnation="agree-4")
    expected = {"agr111": (0, "success", []), "agr222": (1, "failure", ["try-win"]), "agr333": (0, "success", [])}
    for revision, (code, result, failed) in expected.items():
        (row,) = query(module_server.url, "revisions", revision=revision)["revisions"]
        assert (row["state"], row["result"], [f["builder"] for f in row["failures"]]) == ("done", result, failed)
        assert row["green"] == (code == 0)
        got = wait(module_server.url, revision, timeout=20)
        assert (got.state, got.result, got.exit_code) == (row["state"], row["result"], code), got.summary()
        exit_code, out, err = main(capsys, "wait", module_server.url, "--revision", revision, "--timeout", "20s")
        assert exit_code == code, out + err
    _, out, _ = main(capsys, "wait", module_server.url, "--revision", "agr111", "--timeout", "20s")
    assert "failure (superseded)" in out and "all 2 succeeded" in out


def test_wait_and_the_pushlog_agree_on_a_build_lost_in_a_master_restart(module_server, capsys):
    """A build its master no longer runs after a restart (the ``master.started`` snapshot) is
    over for both: the pushlog says done with an exception and names it in ``failures``, and
    ``wait`` exits 1 at once instead of waiting for its timeout."""
    from firehose.client import query

    events = try_push("agr444", {"try-lost": "success"}, buildsetid=90, first_buildrequestid=90,
                      first_buildid=90, finish=False)
    events.append({"type": "master.started", "time": events[-1]["time"] + 1, "data": {"running": [], "queued": []}})
    ingest_events(module_server, events, master="m2", incarnation="agree-5")
    (row,) = query(module_server.url, "revisions", revision="agr444")["revisions"]
    assert (row["state"], row["result"]) == ("done", "exception")
    assert [(f["builder"], f["result"]) for f in row["failures"]] == [("try-lost", "exception")]
    code, out, err = main(capsys, "wait", module_server.url, "--revision", "agr444", "--timeout", "20s")
    assert code == 1, out + err
    assert "lost when its master restarted" in err and "1 of 1 failed (exception)" in out
