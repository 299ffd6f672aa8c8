"""Run a demo Buildbot master and worker that publish to a firehose server.

``python -m buildbot_plugin.demo --firehose-url http://127.0.0.1:8080 --token demo-token
--basedir run/demo`` creates (once) a master and a worker under ``--basedir`` and runs both as
child processes (``twistd --nodaemon``).  The master invents a commit every ~15 s and builds
``linux-build`` (passes), ``flaky-tests`` (fails sometimes) and ``try-linux`` (the ``try``
branch).  Everything listens on 127.0.0.1 only and nothing needs the internet.  Ctrl-C (or
SIGTERM) stops both children and exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from buildbot_plugin.demo.template import MASTER_CFG

WORKER_NAME = "demo-worker"
WORKER_PASS = "demo-pass"


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(argv: list[str], cwd: str | None = None) -> None:
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _tool(module: str) -> list[str]:
    """Run a console script's ``run()`` with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-c", f"import sys; from {module} import run; sys.argv[0] = 'tool'; run()"]


def create(basedir: str, url: str, token: str, master_name: str, interval: int) -> tuple[str, str]:
    """Create the master and worker directories (once); (re)write master.cfg every time."""
    master_dir = os.path.join(basedir, "master")
    worker_dir = os.path.join(basedir, "worker")
    os.makedirs(basedir, exist_ok=True)
    if not os.path.exists(os.path.join(master_dir, "buildbot.tac")):
        _run([*_tool("buildbot.scripts.runner"), "create-master", "-r", "-q", master_dir])
    pb_port = free_port()
    with open(os.path.join(master_dir, "master.cfg"), "w", encoding="utf-8") as fh:
        fh.write(MASTER_CFG % {"pb_port": pb_port, "url": url, "token": token, "master_name": master_name,
                               "interval": interval})
    # The worker's master port changes every run: recreate its (tiny) tac file.
    tac = os.path.join(worker_dir, "buildbot.tac")
    if os.path.exists(tac):
        os.unlink(tac)
    _run([*_tool("buildbot_worker.scripts.runner"), "create-worker", "-q", worker_dir,
          f"127.0.0.1:{pb_port}", WORKER_NAME, WORKER_PASS])
    return master_dir, worker_dir


def start(directory: str) -> subprocess.Popen[bytes]:
    """Start ``twistd --nodaemon`` on a buildbot.tac, logging to ``twistd.log`` there."""
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--no_save", "--pidfile=", "-l", "twistd.log", "-y", "buildbot.tac"]
    return subprocess.Popen(argv, cwd=directory, stdin=subprocess.DEVNULL, start_new_session=True)


def stop(children: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """SIGTERM the children one after the other, in order (the master before its worker), each
    waited for (bounded, ``timeout`` in all) and SIGKILLed if it does not exit.

    Not all at once: a worker that leaves while the master is starting a build can leave that
    build stuck in Buildbot 4.3 (``'NoneType' object has no attribute 'workername'``), and the
    master's clean shutdown then waits for it until it is killed, without ``master.stopped``.
    """
    deadline = time.monotonic() + timeout
    for p in children:
        if p.poll() is None:
            p.terminate()
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def wait_for_log(path: str, needle: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    """Poll a log file for a line (bounded), giving up early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                if needle in fh.read():
                    return True
        except FileNotFoundError:
            pass
        time.sleep(0.2)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m buildbot_plugin.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--firehose-url", default="http://127.0.0.1:8080", help="firehose server base URL")
    parser.add_argument("--token", default=os.environ.get("FIREHOSE_DEMO_TOKEN", "demo-token"),
                        help="ingest token of the master (server side: --master-token NAME=TOKEN)")
    parser.add_argument("--master-name", default="demo", help="name the events carry (default: demo)")
    parser.add_argument("--basedir", default=os.path.join("run", "demo"), help="where master and worker live")
    parser.add_argument("--interval", type=int, default=15, help="seconds between invented commits")
    args = parser.parse_args(argv)

    basedir = os.path.abspath(args.basedir)
    master_dir, worker_dir = create(basedir, args.firehose_url, args.token, args.master_name, args.interval)
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        master = start(master_dir)
        children.append(master)
        mlog = os.path.join(master_dir, "twistd.log")
        if not wait_for_log(mlog, "BuildMaster is running", master):
            print(f"demo: the master did not start; see {mlog}", file=sys.stderr)
            return 1
        worker = start(worker_dir)
        children.append(worker)
        print(
            f"demo: master ({master_dir}) and worker running; publishing as {args.master_name!r} to "
            f"{args.firehose_url}. A commit every ~{args.interval}s. Ctrl-C to stop.",
            flush=True,
        )
        while not stopping:
            for p in children:
                if p.poll() is not None:
                    print(f"demo: a child exited ({p.args!r}), rc={p.returncode}; stopping",
                          file=sys.stderr)
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        stop(children)
        print("demo: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
