"""The WebSocket example of docs/protocol.md runs as written on Node 20 with ``ws`` 8.

``ws`` is installed with npm into a temporary directory (the test is skipped when node or npm
is missing, or the install fails, e.g. offline).  Two runs: against a real server (only the
filter's events are printed, and a restart is resumed from the last one, filter kept), and
against a scripted ``ws`` server that ends the subscription with a ``slow`` gap, to check the
example resubscribes with its filter from the gap's cursor.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .client_support import Lines
from .conftest import DEADLINE, HOST, Master, free_port

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
URL = "ws://127.0.0.1:8080/ws"


def example(url: str) -> str:
    """The ``ws-failures-js`` snippet of docs/protocol.md, its address changed to ``url``."""
    match = re.search(r"<!-- snippet: ws-failures-js -->\n```js\n(.*?)```", DOC.read_text(), re.S)
    assert match, "snippet ws-failures-js not found in docs/protocol.md"
    code = match.group(1)
    assert URL in code
    return code.replace(URL, url)


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with ``ws`` 8 installed, for Node 20 (which has no global WebSocket)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        pytest.skip("needs node and npm")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    if int(version.strip().lstrip("v").split(".")[0]) < 20:
        pytest.skip(f"needs Node 20 or later, found {version.strip()}")
    where = tmp_path_factory.mktemp("node")
    try:
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(where), "ws@8"],
                       capture_output=True, text=True, timeout=120, check=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"npm install ws@8 failed: {exc}")
    return where


@pytest.fixture
def run_node(node_dir: Path) -> Iterator:
    """Start ``node <script>`` in ``node_dir``; every process is killed at the end."""
    started: list[Lines] = []

    def run(name: str, code: str) -> Lines:
        (node_dir / name).write_text(code)
        proc = subprocess.Popen(["node", name], cwd=node_dir, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, text=True)
        lines = Lines(proc)
        started.append(lines)
        return lines

    yield run
    for lines in started:
        lines.stop()


def test_example_prints_only_its_filter_and_resumes_after_a_restart(server, run_node):
    """Against a real server the example prints the linux failures only; after the server
    restarts it reconnects from the last one it printed, with the same filter: the next
    linux failure is printed once and nothing of other builders or results."""
    lines = run_node("failures.mjs", example(server.ws_url))
    server.wait_subscribers("websocket", 1)
    m1 = Master()
    server.ingest([m1.event("build.finished", builder="linux-a", result="failure"),
                   m1.event("build.finished", builder="mac", result="failure"),
                   m1.event("build.finished", builder="linux-b", result="success"),
                   m1.event("build.started", builder="linux-b"),
                   m1.event("build.finished", builder="linux-c", result="failure")])
    assert lines.take(2) == ["linux-a 1 failure", "linux-c 5 failure"]
    server.restart()
    server.ingest([m1.event("build.finished", builder="mac", result="failure"),
                   m1.event("build.finished", builder="linux-d", result="failure")])
    assert lines.next() == "linux-d 7 failure"
    server.ingest([m1.event("build.finished", builder="linux-e", result="failure")])
    assert lines.next() == "linux-e 8 failure"  # nothing in between: no duplicate, no stranger


HARNESS = """
import { WebSocketServer } from "ws";
const commands = [];
const wss = new WebSocketServer({host: "%(host)s", port: %(port)d});
wss.on("listening", () => import("./example.mjs"));
wss.on("connection", (sock) => {
  sock.on("message", (data) => {
    const cmd = JSON.parse(data.toString());
    commands.push(cmd);
    if (commands.length === 1) {
      sock.send(JSON.stringify({type: "subscribed", filter: cmd.filter, cursor: "e:0"}));
      sock.send(JSON.stringify({id: "e:3", type: "build.finished",
                                data: {builder: "linux-a", number: 3, result: "failure"}}));
      sock.send(JSON.stringify({type: "gap", reason: "slow", since: null, cursor: "e:7", earliest: "e:0"}));
    } else if (commands.length === 2) {
      sock.close();  // and the example reconnects
    } else {
      console.log(JSON.stringify(commands));
      process.exit(0);
    }
  });
});
"""


def test_example_resubscribes_with_its_filter_after_a_gap(node_dir, run_node):
    """A ``slow`` gap ends the subscription: the example subscribes again on the same socket
    with its filter, from the gap's cursor (not with everything), and after a drop reconnects
    with the same filter and cursor."""
    port = free_port()
    (node_dir / "example.mjs").write_text(example(f"ws://{HOST}:{port}/ws"))
    lines = run_node("harness.mjs", HARNESS % {"host": HOST, "port": port})
    assert lines.next() == "linux-a 3 failure"
    flt = {"builder": "linux*", "type": "build.finished", "result": "failure"}
    commands = json.loads(lines.next(timeout=DEADLINE))
    assert commands == [
        {"cmd": "subscribe", "filter": flt},
        {"cmd": "subscribe", "filter": flt, "since": "e:7"},
        {"cmd": "subscribe", "filter": flt, "since": "e:7"},
    ]
