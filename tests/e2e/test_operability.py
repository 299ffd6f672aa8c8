"""/health, /metrics, /schema, CORS, and the command line's errors, on a real process."""

from __future__ import annotations

import json
import re
import socket
import urllib.request

import pytest

from .conftest import HOST, OPENER, Master, WSClient, free_port, http_get, run_cli

pytestmark = pytest.mark.slow


def test_health_and_metrics_describe_the_server(server, clients):
    """/health is JSON naming the epoch, the head cursor, the subscribers and each master's last
    seq; /metrics is Prometheus text with events in and out, subscribers per transport and the
    journal's head, all consistent with what happened."""
    h = server.health()
    assert h["status"] == "ok" and h["version"]
    epoch = h["epoch"]
    assert h["cursor"] == f"{epoch}:0" and h["masters"] == {}
    ws = WSClient(server.ws_url)
    clients.append(ws)
    ws.subscribe()
    m1 = Master()
    server.ingest(m1.batch(3))
    ws.events(3)

    h = server.health()
    assert h["cursor"] == f"{epoch}:3"
    assert h["subscribers"]["websocket"] == 1
    assert h["masters"] == {"m1": {"incarnation": m1.incarnation, "last_seq": 3}}

    status, body = http_get(server.url + "/metrics")
    assert status == 200
    text = body.decode()
    assert re.search(r"^# TYPE firehose_events_ingested(_total)? counter$", text, re.M), text
    assert server.metric("firehose_events_ingested_total", master="m1") == 3
    assert server.metric("firehose_events_published_total") == 3
    assert server.metric("firehose_events_delivered_total", transport="websocket") == 3
    assert server.metric("firehose_subscribers", transport="websocket") == 1
    assert server.metric("firehose_subscribers", transport="sse") == 0
    assert server.metric("firehose_journal_head") == 3
    assert server.metric("firehose_master_last_seq", master="m1") == 3
    assert server.metric("firehose_journal_bytes") > 0


def test_schema_and_cors(server):
    """/schema serves the JSON Schemas of batches and events; subscriber endpoints allow any
    origin, and a CORS preflight on /sse is answered."""
    status, body = http_get(server.url + "/schema")
    assert status == 200
    schema = json.loads(body)
    assert schema["batch"]["type"] == "array" and "id" in schema["event"]["required"]
    for path in ("/health", "/poll?timeout=0.1", "/schema"):
        with OPENER.open(server.url + path, timeout=10) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == "*", path
    req = urllib.request.Request(server.url + "/sse", method="OPTIONS",
                                 headers={"Origin": "http://example.invalid",
                                          "Access-Control-Request-Headers": "last-event-id"})
    with OPENER.open(req, timeout=10) as resp:
        assert resp.status == 200
        assert "last-event-id" in resp.headers["Access-Control-Allow-Headers"].lower()


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("firehose:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def test_busy_port_is_a_clear_error(tmp_path):
    """Starting on a port another socket listens on exits with code 1 and one line saying the
    port cannot be listened on, and why."""
    with socket.socket() as other:
        other.bind((HOST, 0))
        other.listen()
        port = other.getsockname()[1]
        result = run_cli("--listen", f"tcp:{port}:interface={HOST}", "--db", str(tmp_path / "x.sqlite"))
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result.stderr)
    assert "cannot listen" in line and str(port) in line and "in use" in line, line


@pytest.mark.parametrize("case", ["missing-directory", "directory", "not-sqlite"])
def test_unusable_database_path_is_a_clear_error(case, tmp_path):
    """A journal path that cannot be a database (its directory does not exist, it is a
    directory, it is some other file) exits with code 1 and one line naming the path."""
    if case == "missing-directory":
        db = tmp_path / "no" / "such" / "dir" / "x.sqlite"
    elif case == "directory":
        db = tmp_path
    else:
        db = tmp_path / "notes.txt"
        db.write_text("not a database, just some text that is long enough " * 40)
    result = run_cli("--listen", f"tcp:{free_port()}:interface={HOST}", "--db", str(db))
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result.stderr)
    assert str(db) in line and "journal" in line, line
    if case == "not-sqlite":
        assert db.read_text().startswith("not a database"), "the file must be left alone"


@pytest.mark.parametrize(
    "args,says",
    [
        (["--master-token", "nope"], "NAME=TOKEN"),
        (["--master-token", "m1="], "NAME=TOKEN"),
        (["--master-token", "bad name=tok"], "master name"),
        (["--max-body", "10"], "--max-body"),
        (["--config", "/nonexistent/firehose.toml"], "config file"),
    ],
    ids=["no-equals", "empty-token", "bad-name", "tiny-max-body", "missing-config"],
)
def test_bad_usage_exits_with_code_2(args, says, tmp_path):
    """Bad command-line values (a --master-token that is not NAME=TOKEN, an invalid master name,
    a too small --max-body, an unreadable --config) exit with code 2 and a message saying what
    is wrong, without starting to serve."""
    result = run_cli("--listen", f"tcp:{free_port()}:interface={HOST}", "--db", str(tmp_path / "x.sqlite"), *args)
    assert result.returncode == 2, result.stderr
    assert says in _one_error_line(result.stderr)
    assert not (tmp_path / "x.sqlite").exists()
