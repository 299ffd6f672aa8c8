"""Helpers for the client, CLI and webhook end-to-end tests (on top of conftest's fixtures).

* :class:`TCPProxy`: a loopback TCP relay between a client and the server whose connections
  can be cut (a "dropped connection") and whose target can follow a restarted server.
* :func:`restart`: stop a server process and start it again on the same port and journal
  (``ServerProcess.restart``, under the name these tests use).
* :class:`Receiver`: a webhook receiver on 127.0.0.1 that records deliveries and can be told
  to fail.
* :class:`Lines`: the stdout of a subprocess, read line by line with bounded waits.
* :func:`serve_http`: a ThreadingHTTPServer on 127.0.0.1 in a daemon thread.
* :func:`start_listener_script`: run a Python script that listens on a port; wait until it does.

Every wait is bounded by conftest's DEADLINE.
"""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .conftest import DEADLINE, HOST, ServerProcess, wait_for


class TCPProxy:
    """Relays connections from its own port to ``target``; :meth:`drop` cuts every live one."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._closed = False
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=5)
            except OSError:
                client.close()  # the server is down: the client sees its connection closed
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            src.settimeout(None)
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def drop(self) -> int:
        """Cut every relayed connection at once (RST); return how many pairs were cut."""
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                # shutdown() wakes the relay thread blocked in recv(); close() alone would not.
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        return len(conns) // 2

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.drop()


def restart(server: ServerProcess) -> None:
    """SIGTERM the server, then start it again on the same port with the same journal
    (:meth:`ServerProcess.restart`)."""
    server.restart()


class Receiver:
    """A webhook receiver: records each POST; answers ``status`` (a callable may vary it).

    ``deliveries`` holds the successful ones (2xx answered), ``attempts`` every POST.
    """

    def __init__(self) -> None:
        self.attempts: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []
        self.status = 200
        #: Answer this many POSTs with ``fail_status`` before going back to ``status``.
        self.fail_next = 0
        self.fail_status = 500
        self._lock = threading.Lock()
        self._new = threading.Condition(self._lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                record = {"body": body, "headers": {k.lower(): v for k, v in self.headers.items()}}
                with receiver._lock:
                    receiver.attempts.append(record)
                    if receiver.fail_next > 0:
                        receiver.fail_next -= 1
                        code = receiver.fail_status
                    else:
                        code = receiver.status
                    if 200 <= code < 300:
                        receiver.deliveries.append(record)
                    receiver._new.notify_all()
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = serve_http(Handler)
        self.port = self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hook"

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e for d in self.deliveries for e in json.loads(d["body"])["events"]]

    def wait_events(self, n: int) -> list[dict[str, Any]]:
        """Wait until at least ``n`` events were delivered successfully; return them all."""
        end = time.monotonic() + DEADLINE
        with self._lock:
            while True:
                got = [e for d in self.deliveries for e in json.loads(d["body"])["events"]]
                if len(got) >= n:
                    return got
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"webhook: {len(got)} of {n} events delivered before the deadline "
                                         f"({len(self.attempts)} attempts)")
                self._new.wait(left)

    def wait_attempts(self, n: int) -> None:
        end = time.monotonic() + DEADLINE
        with self._lock:
            while len(self.attempts) < n:
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"webhook: {len(self.attempts)} of {n} attempts before the deadline")
                self._new.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Lines:
    """Reads a subprocess's stdout in a thread; :meth:`next` waits (bounded) for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def next(self, timeout: float = DEADLINE) -> str:
        try:
            line = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout}s") from None
        if line is None:
            raise AssertionError(f"the process ended (exit {self.proc.wait()})")
        return line

    def take(self, n: int) -> list[str]:
        return [self.next() for _ in range(n)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def serve_http(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) serving ``handler`` in a daemon thread;
    the caller shuts it down (``shutdown()`` then ``server_close()``)."""
    server = ThreadingHTTPServer((HOST, 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection((HOST, port), timeout=1).close()
        return True
    except OSError:
        return False


def start_listener_script(script: str, port: int, env: dict[str, str]) -> Lines:
    """Run the Python file ``script`` with ``env`` (stdout read by the returned :class:`Lines`,
    stderr discarded) and wait, bounded, until it listens on ``port``.  The caller stops it with
    ``Lines.stop()``; it is stopped here if it never listens."""
    proc = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env, stdin=subprocess.DEVNULL)
    lines = Lines(proc)
    try:
        wait_for(lambda: listening(port), "the receiver to listen")
    except BaseException:
        lines.stop()
        raise
    return lines


def api(url: str, method: str, path: str, body: Any = None, token: str | None = "admin-token") -> tuple[int, Any]:
    """Call the webhook API; return ``(status, decoded JSON body or None)``."""
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=DEADLINE)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def ingest_events(server: ServerProcess, events: list[dict[str, Any]], master: str = "m1",
                  incarnation: str = "inc-1", first_seq: int = 1) -> dict[str, Any]:
    """Ingest events given as ``{"type", "time", "data"}`` (e.g. from firehose.testing.try_push)."""
    batch = [
        {"master": master, "incarnation": incarnation, "seq": first_seq + i, "type": e["type"],
         "time": e["time"], "data": e["data"]}
        for i, e in enumerate(events)
    ]
    return server.ingest(batch)
