"""End-to-end helpers: a real ``firehose serve`` subprocess on loopback, and plain clients.

Nothing here uses autobahn or Twisted: the server is driven only over its sockets, by a
third-party WebSocket client (``websockets``), a hand-written SSE reader (``http.client``) and a
long-poll loop (``urllib``), so these tests check the wire protocol a real subscriber sees.

Every wait is bounded: a helper either sees what it waits for before its deadline or fails the
test with a message that says what was missing.
"""

from __future__ import annotations

import http.client
import itertools
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

HOST = "127.0.0.1"
TOKENS = {"m1": "tok-m1", "m2": "tok-m2"}
#: Seconds any single wait may take before the test fails (generous: CI machines are slow).
DEADLINE = 20.0
START_DEADLINE = 20.0
#: Most messages any reader loop handles: bounds every loop in count as well as in time.
MAX_MESSAGES = 200_000

#: urllib without any proxy from the environment: every request stays on loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------------------------
# The server process
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the kernel picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "firehose.cli", "serve", *args]


def run_cli(*args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    """Run ``firehose serve ARGS`` to completion (for commands expected to exit by themselves)."""
    return subprocess.run(
        serve_command(*args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


class ServerProcess:
    """One ``firehose serve`` subprocess on loopback: the one helper every suite starts,
    kills and restarts servers with.

    The first :meth:`start` takes a free port; every later one (after :meth:`stop` or
    :meth:`kill`) starts the server again on the same port and journal, as a restarted
    server is: masters, clients and pages keep one URL.
    """

    def __init__(self, db: Path, log: Path, tokens: dict[str, str], extra: tuple[str, ...]) -> None:
        self.db = db
        self.log_path = log
        self.tokens = tokens
        self.extra = extra
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/ws"

    def start(self, degraded_ok: bool = False) -> ServerProcess:
        """Start the process and wait until ``/health`` answers 200 (bounded); with
        ``degraded_ok`` a 503 from a degraded server (its journal cannot be written) will do.

        A port found free can be taken by someone else before the server binds it: a first
        start then tries another port.  A restart keeps its port and tries it again a few times
        (the killed process's socket may not be released yet).
        """
        assert self.proc is None or self.proc.poll() is not None, "the server is still running"
        first = not self.port
        for _attempt in range(3 if first else 5):
            if first:
                self.port = free_port()
            logged = self._log_size()
            self._launch()
            if self._wait_ready(degraded_ok):
                return self
            if first and b"cannot listen" not in self.log_path.read_bytes()[logged:]:
                break
        if first:
            raise AssertionError(f"server did not become ready; log:\n{self.log()}")
        raise AssertionError(f"server did not restart on port {self.port}; log:\n{self.log()[-4000:]}")

    def restart(self) -> ServerProcess:
        """SIGTERM the server (it must exit cleanly), then start it again on the same port with
        the same journal."""
        assert self.stop() == 0, self.log()
        return self.start()

    def _launch(self) -> None:
        args = ["--listen", f"tcp:{self.port}:interface={HOST}", "--db", str(self.db)]
        for name, token in self.tokens.items():
            args += ["--master-token", f"{name}={token}"]
        args += list(self.extra)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(serve_command(*args), stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _wait_ready(self, degraded_ok: bool = False) -> bool:
        assert self.proc is not None
        ready = (200, 503) if degraded_ok else (200,)
        deadline = time.monotonic() + START_DEADLINE
        for _ in range(2000):
            if time.monotonic() > deadline:
                break
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    pass
                status, body = http_get(self.url + "/health", timeout=2)
                if status in ready and (status == 200 or json.loads(body).get("status") == "degraded"):
                    return True
            except OSError:
                pass
            time.sleep(0.05)  # polling interval while waiting for readiness, not synchronisation
        self.kill()
        return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = DEADLINE) -> int:
        """SIGTERM, wait for a clean exit; return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"server ignored SIGTERM for {timeout}s; log:\n{self.log()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    # Convenience accessors over HTTP.

    def health(self) -> dict[str, Any]:
        status, body = http_get(self.url + "/health")
        assert status == 200, body
        return json.loads(body)

    def health_any(self) -> tuple[int, dict[str, Any]]:
        """``/health`` whatever its status code (a degraded server answers 503)."""
        status, body = http_get(self.url + "/health", timeout=10)
        return status, json.loads(body)

    def metrics(self) -> str:
        status, body = http_get(self.url + "/metrics")
        assert status == 200, body
        return body.decode()

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample's value from /metrics, or ``None`` when absent."""
        want = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
        )
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == want:
                return float(value)
        return None

    def wait_subscribers(self, transport: str, n: int) -> None:
        """Wait until /health counts ``n`` subscriptions on ``transport``."""
        wait_for(
            lambda: self.health()["subscribers"].get(transport, 0) == n,
            f"{n} {transport} subscriber(s) in /health",
        )

    def ingest(self, batch: Any, token: str | None = None, **kw: Any) -> dict[str, Any]:
        """POST a batch that must be accepted; return the answer."""
        tok = token if token is not None else self.tokens[_master_of(batch)]
        status, body = post_ingest(self.url, batch, tok, **kw)
        assert status == 200, (status, body)
        return json.loads(body)

    def ingest_all(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Ingest events of several masters in this order (a batch per run of one master);
        return the last answer (its ``cursor`` is the id of the last event)."""
        answer: dict[str, Any] = {}
        for _, run in itertools.groupby(events, key=lambda e: e["master"]):
            answer = self.ingest(list(run))
        return answer


def _master_of(batch: Any) -> str:
    return batch[0]["master"]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """A factory: ``start_server(db=None, tokens=TOKENS, *extra_args)``; every process it made is
    killed at the end of the test, whatever happened."""
    made: list[ServerProcess] = []
    counter = itertools.count()

    def start(*extra: str, db: Path | None = None, tokens: dict[str, str] | None = None) -> ServerProcess:
        n = next(counter)
        server = ServerProcess(
            db or tmp_path / f"journal{n}.sqlite",
            tmp_path / f"server{n}.log",
            dict(TOKENS if tokens is None else tokens),
            extra,
        )
        made.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in made:
            server.kill()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server shared by the tests of a module (for read-mostly tests)."""
    path = tmp_path_factory.mktemp("module-server")
    server = ServerProcess(path / "journal.sqlite", path / "server.log", dict(TOKENS), ())
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A fresh server on a fresh journal, masters m1 and m2."""
    return start_server()


# --------------------------------------------------------------------------------------------
# Events and ingest
# --------------------------------------------------------------------------------------------


class Master:
    """Makes valid events for one master incarnation, numbering ``seq`` from 1."""

    def __init__(self, name: str = "m1", incarnation: str = "inc-1") -> None:
        self.name = name
        self.incarnation = incarnation
        self.seq = 0

    def event(
        self,
        type: str = "build.started",
        builder: str = "linux",
        pad: int = 0,
        **data: Any,
    ) -> dict[str, Any]:
        self.seq += 1
        seq = self.seq
        entity = type.split(".")[0]
        body: dict[str, Any] = {"builder": builder}
        if entity in ("build", "step", "log"):
            body.update(buildid=seq, number=seq)
        if entity in ("step", "log"):
            body.update(stepid=seq, name="compile")
        if entity == "log":
            body.update(logid=seq)
        if entity == "request":
            body.update(buildrequestid=seq)
        if entity == "buildset":
            body.update(buildsetid=seq)
        if entity == "change":
            body.update(changeid=seq)
        if entity == "worker":
            body.update(worker="w1")
        if pad:
            body["state"] = "x" * pad
        body.update(data)
        return {
            "master": self.name,
            "incarnation": self.incarnation,
            "seq": seq,
            "type": type,
            "time": 1_700_000_000.0 + seq,
            "data": body,
        }

    def batch(self, n: int, **kw: Any) -> list[dict[str, Any]]:
        return [self.event(**kw) for _ in range(n)]


def post_ingest(
    url: str,
    body: Any,
    token: str | None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> tuple[int, bytes]:
    """POST to /ingest; ``body`` is JSON-encoded unless ``raw`` bytes are given."""
    data = raw if raw is not None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"}
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    hdrs.update(headers or {})
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=DEADLINE)
    try:
        if chunked:
            pieces = [data[i : i + 512] for i in range(0, len(data), 512)]
            conn.request("POST", "/ingest", body=iter(pieces), headers=hdrs, encode_chunked=True)
        else:
            conn.request("POST", "/ingest", body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = DEADLINE) -> tuple[int, bytes]:
    """GET; return ``(status, body)`` for any status."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(predicate: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    """Poll ``predicate`` until it is truthy; fail naming ``what`` after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    for _ in range(100_000):
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            break
        time.sleep(0.02)  # polling interval, not synchronisation
    raise AssertionError(f"timed out after {deadline}s waiting for {what}")


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in events]


def seqs(events: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """What identifies an ingested event regardless of its cursor."""
    return [(e["master"], e["incarnation"], e["seq"]) for e in events]


def offset(cursor: str) -> int:
    return int(cursor.rpartition(":")[2])


# --------------------------------------------------------------------------------------------
# Subscribers
# --------------------------------------------------------------------------------------------


class WSClient:
    """A ``websockets`` (not autobahn) client of ``/ws``; separates events from control messages."""

    def __init__(self, url: str) -> None:
        self.conn: ClientConnection = ws_connect(
            url, compression=None, proxy=None, open_timeout=DEADLINE, max_queue=4096, ping_interval=None
        )
        self.control: list[dict[str, Any]] = []

    def send(self, msg: dict[str, Any]) -> None:
        self.conn.send(json.dumps(msg))

    def recv(self, timeout: float = DEADLINE) -> dict[str, Any]:
        try:
            return json.loads(self.conn.recv(timeout=timeout))
        except TimeoutError:
            raise AssertionError(f"no WebSocket message within {timeout}s") from None

    def subscribe(self, filter: Any = None, since: str | None = None) -> dict[str, Any]:
        """Subscribe; return the ``subscribed`` acknowledgement (fails on anything else)."""
        msg: dict[str, Any] = {"cmd": "subscribe", "filter": filter if filter is not None else {}, "since": since}
        self.send(msg)
        reply = self.recv()
        assert reply.get("type") == "subscribed", reply
        return reply

    def events(self, n: int, until_id: str | None = None) -> list[dict[str, Any]]:
        """Read until ``n`` events (or the event ``until_id``) arrived; control messages go to
        ``self.control``."""
        out: list[dict[str, Any]] = []
        end = time.monotonic() + DEADLINE
        for _ in range(MAX_MESSAGES):
            if len(out) >= n or (until_id is not None and out and out[-1]["id"] == until_id):
                return out
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"WebSocket: got {len(out)} of {n} events before the deadline")
            msg = self.recv(timeout=left)
            if "." in msg.get("type", ""):
                out.append(msg)
            else:
                self.control.append(msg)
        raise AssertionError(f"WebSocket: more than {MAX_MESSAGES} messages")

    def until_id(self, last_id: str, limit: int = MAX_MESSAGES - 1) -> list[dict[str, Any]]:
        return self.events(limit, until_id=last_id)

    def assert_nothing_more(self) -> None:
        """A ping's pong is queued behind every event already sent: nothing may precede it."""
        self.send({"cmd": "ping"})
        msg = self.recv()
        assert msg.get("type") == "pong", f"expected nothing before the pong, got {msg}"

    def close(self) -> None:
        self.conn.close()


class SSEClient:
    """A plain ``http.client`` reader of ``/sse``: parses ``id:``/``event:``/``data:`` messages."""

    def __init__(self, base: str, query: str = "", headers: dict[str, str] | None = None) -> None:
        parsed = urllib.parse.urlsplit(base)
        self.conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=DEADLINE)
        self.conn.request("GET", "/sse" + (f"?{query}" if query else ""), headers=headers or {})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.content_type = self.resp.getheader("content-type", "")
        self.gaps: list[dict[str, Any]] = []
        self.ended = False

    def error_body(self) -> dict[str, Any]:
        return json.loads(self.resp.read())

    def next_message(self) -> dict[str, str] | None:
        """The next SSE message (dict of its fields), or ``None`` at end of stream."""
        fields: dict[str, str] = {}
        data: list[str] = []
        for _ in range(10_000):
            raw = self.resp.readline()
            if not raw:
                self.ended = True
                return None
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if data or fields:
                    if data:
                        fields["data"] = "\n".join(data)
                    if "data" in fields:
                        return fields
                    fields, data = {}, []  # e.g. a lone "retry:" block
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
        raise AssertionError("SSE: unreasonably long message")

    def events(self, n: int, until_id: str | None = None) -> list[dict[str, Any]]:
        """Read until ``n`` events (or the event ``until_id``); gap messages go to ``self.gaps``.

        Each event's ``id:`` line and ``event:`` line must agree with its data.
        """
        out: list[dict[str, Any]] = []
        end = time.monotonic() + DEADLINE
        for _ in range(MAX_MESSAGES):
            if len(out) >= n or (until_id is not None and out and out[-1]["id"] == until_id):
                return out
            if time.monotonic() > end:
                raise AssertionError(f"SSE: got {len(out)} of {n} events before the deadline")
            try:
                msg = self.next_message()
            except TimeoutError:
                raise AssertionError(f"SSE: got {len(out)} of {n} events, then silence") from None
            if msg is None:
                raise AssertionError(f"SSE stream ended after {len(out)} of {n} events")
            obj = json.loads(msg["data"])
            if msg.get("event") == "gap":
                assert msg.get("id") == obj["cursor"], msg
                self.gaps.append(obj)
                continue
            assert msg.get("id") == obj["id"], msg
            assert msg.get("event") == obj["type"], msg
            out.append(obj)
        raise AssertionError(f"SSE: more than {MAX_MESSAGES} messages")

    def until_id(self, last_id: str, limit: int = MAX_MESSAGES - 1) -> list[dict[str, Any]]:
        return self.events(limit, until_id=last_id)

    def close(self) -> None:
        self.conn.close()


def poll(base: str, since: str | None = None, timeout: float = 5, **params: Any) -> dict[str, Any]:
    """One GET /poll; must answer 200."""
    query: dict[str, Any] = dict(params)
    if since is not None:
        query["since"] = since
    query["timeout"] = timeout
    status, body = http_get(f"{base}/poll?{urllib.parse.urlencode(query)}", timeout=timeout + DEADLINE)
    assert status == 200, (status, body)
    return json.loads(body)


class Poller:
    """A long-poll client: each answer's ``cursor`` is the next request's ``since``."""

    def __init__(self, base: str, since: str | None, **params: Any) -> None:
        self.base = base
        self.cursor = since
        self.params = params
        self.gaps: list[dict[str, Any]] = []
        self.requests = 0

    def events(self, n: int, until_id: str | None = None, hold: float = 5.0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        end = time.monotonic() + DEADLINE
        for _ in range(10_000):
            if len(out) >= n or (until_id is not None and out and out[-1]["id"] == until_id):
                return out
            if time.monotonic() > end:
                break
            answer = poll(self.base, self.cursor, timeout=hold, **self.params)
            self.requests += 1
            if "gap" in answer:
                self.gaps.append(answer["gap"])
                assert answer["events"] == [], answer
            assert answer["cursor"], answer
            self.cursor = answer["cursor"]
            for event in answer["events"]:
                out.append(event)
                if event["id"] == until_id:  # stop there, as if the answer had ended with it
                    self.cursor = until_id
                    return out
        raise AssertionError(f"long-poll: got {len(out)} of {n} events before the deadline")

    def until_id(self, last_id: str, limit: int = MAX_MESSAGES - 1) -> list[dict[str, Any]]:
        return self.events(limit, until_id=last_id)

    def assert_nothing_more(self) -> None:
        """No event follows the cursor.  (A short hold, not ``timeout=0``: the server answers a
        ``timeout=0`` poll before its journal read completes - see test_longpoll_timeout_zero_answers_with_the_events_available)."""
        answer = poll(self.base, self.cursor, timeout=0.3, **self.params)
        assert answer["events"] == [], answer


def query_string(flt: dict[str, Any]) -> str:
    """The query-string form of a JSON filter (lists become comma alternatives)."""
    return urllib.parse.urlencode(
        {k: ",".join(v) if isinstance(v, list) else v for k, v in flt.items()}
    )


@pytest.fixture
def clients() -> Iterator[list[Any]]:
    """A list to register WS/SSE clients in; all are closed at the end of the test."""
    made: list[Any] = []
    yield made
    for c in made:
        try:
            c.close()
        except Exception:
            pass

