"""What every scenario needs: the compiled load generator, a server process pinned to core 0, its
CPU and memory from /proc, and the statistics of repeated runs.

Every wait here is bounded in time, every process started here is killed by its own pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
BUILD = os.path.join(BENCH, "build")
RESULTS = os.path.join(BENCH, "results")
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")
SERVER_CORE = "0"
CLIENT_CORE = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
#: Master names and tokens the server accepts: m0=t0 ... (the load generator's publishers; the
#: unbatched scenarios use 10 of them).
MASTERS = 16


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def python() -> str:
    return VENV_PY if os.path.exists(VENV_PY) else sys.executable


def compile_loadgen() -> str:
    """Compile fhload.c into bench/build/ (git-ignored) when the source is newer."""
    os.makedirs(BUILD, exist_ok=True)
    src = os.path.join(BENCH, "fhload.c")
    exe = os.path.join(BUILD, "fhload")
    if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(src):
        subprocess.run(["gcc", "-O2", "-Wall", "-o", exe, src, "-lm"], check=True, timeout=120)
    return exe


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (every thread), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def runqueue_wait_seconds(pid: int) -> float | None:
    """Seconds the threads of a process spent runnable but waiting for a CPU (the second field
    of /proc/<pid>/task/*/schedstat): on a shared machine, CPU the server wanted and did not get
    because something else had its core.  None where schedstat is not available."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return total / 1e9


def pressure_us(kind: str) -> int | None:
    """The machine's pressure stall total for ``cpu`` or ``io`` (/proc/pressure: microseconds
    some task was stalled waiting for it), or None without PSI."""
    try:
        with open(f"/proc/pressure/{kind}") as f:
            return int(f.readline().rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (127.0.0.1 only)
        return json.loads(r.read())


def kill(proc: subprocess.Popen[Any] | None, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds: this process only, by its pid."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


class Server:
    """``firehose serve`` pinned to core 0 with its own journal in a temporary directory."""

    def __init__(self, db: str | None = None, extra: Sequence[str] = (), ready_timeout: float = 180.0) -> None:
        self.tmp = tempfile.mkdtemp(prefix="fhbench-")
        self.db = db or os.path.join(self.tmp, "journal.sqlite")
        self.port = free_port()
        self.extra = list(extra)
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.logfile = os.path.join(self.tmp, "server.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> float:
        """Start the process and return at once: the ``time.monotonic()`` just before it was
        started (the start-up scenario times from there)."""
        cmd = [
            "taskset", "-c", SERVER_CORE, python(), "-m", "firehose.cli", "serve",
            "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--db", self.db,
            "--retention-days", "36500",
            # Thousands of subscribers come from one loopback address: lift the per-address cap.
            "--max-connections-per-address", "0", "--max-connections", "100000",
        ]
        for i in range(MASTERS):
            cmd += ["--master-token", f"m{i}=t{i}"]
        cmd += self.extra
        # FIREHOSE_BENCH_SRC: run the server from another checkout (a scratch copy with a
        # proposed fix) with this venv's dependencies.
        src = os.environ.get("FIREHOSE_BENCH_SRC", ROOT)
        env = dict(os.environ, PYTHONPATH=src)
        with open(self.logfile, "ab") as out:
            t0 = time.monotonic()
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=raise_nofile, cwd=src, env=env,
            )
        return t0

    def start(self) -> Server:
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.tail()}")
            try:
                http_json(self.url + "/health", timeout=1)
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server not ready after {self.ready_timeout}s: {self.tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def tail(self, n: int = 2000) -> str:
        try:
            with open(self.logfile, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def terminate(self, grace: float = 5.0) -> int | None:
        """SIGTERM (SIGKILL after ``grace`` s); the exit status, the temporary directory kept."""
        proc, self.proc = self.proc, None
        kill(proc, grace)
        return proc.returncode if proc is not None else None

    def stop(self) -> None:
        self.terminate()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Loadgen:
    """The C load generator on core 1, driven through its stdin (mark / report / quit)."""

    def __init__(self, port: int, args: Sequence[str], max_time: float = 120.0) -> None:
        self.cmd = [
            "taskset", "-c", CLIENT_CORE, compile_loadgen(), "--port", str(port),
            "--max-time", str(max_time), *args,
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.max_time = max_time

    def start(self, ready_timeout: float = 120.0) -> int:
        """Start and wait for ``READY n``; returns n (subscribers subscribed)."""
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            preexec_fn=raise_nofile,
        )
        line = self._readline(ready_timeout)
        if not line.startswith("READY"):
            raise RuntimeError(f"load generator did not get ready: {line!r}")
        return int(line.split()[1])

    def _readline(self, timeout: float) -> str:
        import selectors

        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                raise RuntimeError(f"load generator silent for {timeout}s")
            return self.proc.stdout.readline().strip()
        finally:
            sel.close()

    @property
    def pid(self) -> int | None:
        """The generator's own pid (``taskset`` execs it: the same process)."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def cpu(self) -> float | None:
        """The generator's utime+stime so far, seconds (None once it has exited)."""
        pid = self.pid
        if pid is None:
            return None
        try:
            return cpu_seconds(pid)
        except OSError:
            return None

    def command(self, word: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def mark(self) -> None:
        self.command("mark")

    def report(self, timeout: float = 30.0) -> dict[str, Any]:
        self.command("report")
        return dict(json.loads(self._readline(timeout)))

    def wait_line(self, timeout: float) -> dict[str, Any]:
        """The next report line the generator prints by itself (``--expect`` reached)."""
        return dict(json.loads(self._readline(timeout)))

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError):
            self.command("quit")
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            kill(self.proc)
        self.proc = None


@contextlib.contextmanager
def running(server: Server, loadgen: Loadgen, ready_timeout: float = 120.0) -> Iterator[int]:
    server.start()
    try:
        n = loadgen.start(ready_timeout)
        try:
            yield n
        finally:
            loadgen.stop()
    finally:
        server.stop()


def window(server_pid: int, loadgen: Loadgen, seconds: float) -> dict[str, Any]:
    """One measurement window: the generator's counters, the server's CPU and the generator's
    own CPU over it (``loadgen_cpu_pct``: near 100% would mean the client, not the server, was
    the limit)."""
    c0 = cpu_seconds(server_pid)
    w0 = runqueue_wait_seconds(server_pid)
    lw0 = runqueue_wait_seconds(loadgen.pid) if loadgen.pid else None
    p0 = {k: pressure_us(k) for k in ("cpu", "io")}
    g0 = loadgen.cpu()
    loadgen.mark()
    t0 = time.monotonic()
    time.sleep(seconds)
    rep = loadgen.report()
    el = time.monotonic() - t0
    c1 = cpu_seconds(server_pid)
    w1 = runqueue_wait_seconds(server_pid)
    lw1 = runqueue_wait_seconds(loadgen.pid) if loadgen.pid else None
    p1 = {k: pressure_us(k) for k in ("cpu", "io")}
    g1 = loadgen.cpu()
    rep["server_cpu_pct"] = 100.0 * (c1 - c0) / el
    # the server runnable but not running (its core taken by another process): a high figure
    # says the machine, not the server, was the limit of this window
    rep["server_runq_wait_pct"] = 100.0 * (w1 - w0) / el if w0 is not None and w1 is not None else None
    rep["loadgen_runq_wait_pct"] = 100.0 * (lw1 - lw0) / el if lw0 is not None and lw1 is not None else None
    rep["load_average_1m"] = os.getloadavg()[0]
    # the whole machine: share of the window some task waited for a CPU / for I/O (a slow fsync
    # of the journal shows as latency at low server CPU)
    for k in ("cpu", "io"):
        a, b = p0[k], p1[k]
        rep[f"machine_{k}_pressure_pct"] = (b - a) / 1e4 / el if a is not None and b is not None else None
    rep["loadgen_cpu_pct"] = 100.0 * (g1 - g0) / el if g0 is not None and g1 is not None else None
    rep["server_rss_mb"] = rss_bytes(server_pid) / 2**20
    rep["cpu_us_per_delivery"] = (c1 - c0) * 1e6 / rep["deliveries"] if rep["deliveries"] else None
    return rep


def summarize(values: Sequence[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        info["mem_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    info["kernel"] = os.uname().release
    try:
        out = subprocess.run(
            [python(), "-c", "import twisted, autobahn, orjson, sqlite3; print(twisted.__version__, "
             "autobahn.__version__, orjson.__version__, sqlite3.sqlite_version)"],
            capture_output=True, text=True, timeout=30,
        ).stdout.split()
        info.update(dict(zip(["twisted", "autobahn", "orjson", "sqlite"], out, strict=False)))
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info
