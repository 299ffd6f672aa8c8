"""A real ``redis-server`` for the tests: loopback only, a random free port, its own directory.

The shared journal (:mod:`firehose.redis_journal`) is only proven against the real thing, so
the tests start Debian's ``redis-server`` themselves (``./dev test`` installs it).  Each server
binds 127.0.0.1 on a port nobody else holds, keeps its AOF in a temporary directory the test
owns, and is stopped by the fixture: it is never the system service.

Persistence is AOF with ``appendfsync always`` by default (the setting under which an
acknowledged batch survives ``kill -9`` of Redis) and no RDB snapshots, so what a restart
replays is exactly the AOF.

Stable API (other test modules use it)::

    server = RedisServer(tmp_path)          # appendfsync="always"
    server.start()                          # waits (bounded) until PING answers
    server.url                              # "redis://127.0.0.1:PORT/0"
    server.port
    server.kill()                           # SIGKILL, like a crash
    server.restart()                        # same port and dir: the AOF is replayed
    server.stop()                           # clean shutdown (idempotent)

and the pytest fixture ``redis_server`` (function scope, started, stopped afterwards), which a
test module gets with ``from tests.redis_server import redis_server  # noqa: F401``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: How long a server may take to answer PING after it is started (seconds).
START_TIMEOUT = 20.0
#: How long a clean shutdown may take before the server is killed (seconds).
STOP_TIMEOUT = 10.0

_MISSING = (
    "redis-server is not installed: the shared-journal tests need a real Redis 7 "
    "(Debian's package). `./dev test` installs it; by hand: sudo apt-get install redis-server "
    "(the tests start their own server on a loopback port; the system service is not used)"
)


def redis_server_binary() -> str:
    """The ``redis-server`` to run; fails the test with what to install when there is none."""
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None)
    if found is None:
        pytest.fail(_MISSING, pytrace=False)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    """One PING over a raw socket (no client library needed): True on ``+PONG``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process owned by a test.

    :param tmpdir: the server's own directory (AOF, log); created if missing.
    :param appendfsync: ``always`` (default), ``everysec`` or ``no``.
    """

    def __init__(self, tmpdir: str | os.PathLike[str], appendfsync: str = "always") -> None:
        self.dir = Path(tmpdir).resolve() / "redis"  # absolute: redis-server chdirs to --dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendfsync = appendfsync
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _argv(self) -> list[str]:
        return [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]

    def start(self) -> None:
        """Start the server and wait, bounded, until it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {err}{self._log_tail()}")
            if _ping(self.port):
                return
            time.sleep(0.05)  # polling a process's readiness, not synchronising a test
        self.kill()
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING in {START_TIMEOUT} s{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return "\nlog:\n" + self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: nothing is flushed that was not already."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)
        self._close_pipes()
        self.proc = None

    def restart(self) -> None:
        """Start again on the same port and directory: Redis replays its AOF."""
        if self.proc is not None:
            self.kill()
        self.start()

    def stop(self) -> None:
        """Shut down cleanly (SIGTERM), killing the server if it takes too long; idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        self._close_pipes()
        self.proc = None

    def _close_pipes(self) -> None:
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` (AOF, ``appendfsync always``), stopped after the test."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
