"""The scripts shown in docs/client.md run as written against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from firehose.testing import try_push

from .client_support import api, ingest_events, start_listener_script
from .conftest import DEADLINE, HOST, free_port

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def snippet(name: str) -> str:
    """The code block that follows ``<!-- snippet: NAME -->`` in docs/client.md."""
    match = re.search(rf"<!-- snippet: {name} -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"snippet {name!r} not found in {DOC}"
    return match.group(1)


def test_wait_script_is_five_lines_and_works(start_server, tmp_path):
    """The five-line try-push waiter exits 0 for a green push and 1 for a push with a failure."""
    code = snippet("wait-try")
    assert len(code.strip().splitlines()) == 5
    script = tmp_path / "wait_try.py"
    script.write_text(code)
    server = start_server()
    ingest_events(server, try_push("green1", {"try-linux": "success", "try-mac": "success"}), incarnation="a")
    ingest_events(server, try_push("red1", {"try-linux": "success", "try-win": "failure"}, buildsetid=2,
                                   first_buildrequestid=10, first_buildid=10), incarnation="b")
    for revision, expected in (("green1", 0), ("red1", 1)):
        done = subprocess.run([sys.executable, str(script), server.url, revision], capture_output=True,
                              text=True, timeout=DEADLINE, stdin=subprocess.DEVNULL)
        assert done.returncode == expected, done.stdout + done.stderr
        assert f"revision {revision}:" in done.stdout


def test_receiver_is_ten_lines_and_verifies(start_server, tmp_path):
    """The webhook receiver from the docs prints the delivered events, and refuses a body whose
    signature does not match with 401."""
    code = snippet("receiver")
    assert len(code.strip().splitlines()) <= 11
    script = tmp_path / "receiver.py"
    script.write_text(code)
    port = free_port()
    secret = "receiver-secret-123"
    env = dict(os.environ, FIREHOSE_WEBHOOK_SECRET=secret, PORT=str(port))
    lines = start_listener_script(str(script), port, env)
    try:
        config = tmp_path / "f.toml"
        config.write_text('[webhooks]\nadmin_token = "admin-token"\nallow_networks = ["127.0.0.0/8"]\n')
        server = start_server("--config", str(config))
        status, _ = api(server.url, "POST", "/api/webhooks",
                        {"url": f"http://{HOST}:{port}/", "secret": secret, "filter": {"type": "build.finished"}})
        assert status == 201
        ingest_events(server, try_push("abc", {"try-linux": "success", "try-win": "failure"}), incarnation="r")
        assert lines.take(2) == ["build.finished try-linux success", "build.finished try-win failure"]
        import urllib.error
        import urllib.request

        forged = urllib.request.Request(f"http://{HOST}:{port}/", data=b'{"events": []}',
                                        headers={"X-Firehose-Signature": "sha256=00"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(forged, timeout=DEADLINE)
        assert refused.value.code == 401
    finally:
        lines.stop()
