"""Long-poll paging against a real server: ``limit`` honoured from history, and the README's
``/poll?since=earliest&result=failure`` paged with ``while more`` to every failure."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import DEADLINE, Master, poll

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

#: Events journaled: ten of the server's replay pages (500) and more than a poll examines (2000).
TOTAL = 5000


def _ingest_with_failures(server, every: int) -> list[int]:
    """Journal ``TOTAL`` finished builds, each ``every``-th a failure; return their seqs."""
    m1 = Master()
    events = [m1.event("build.finished", result="failure" if s % every == 0 else "success")
              for s in range(1, TOTAL + 1)]
    for i in range(0, TOTAL, 1000):
        server.ingest(events[i:i + 1000])
    return [s for s in range(1, TOTAL + 1) if s % every == 0]


def test_readme_failures_paged_with_while_more(server):
    """``since=earliest&result=failure`` pages to every failure of a journal much longer than
    a replay page: each answer's ``cursor`` (past what it examined) is the next ``since`` until
    ``more`` is false; the failures arrive in order, once, and the last answer is at the head."""
    want = _ingest_with_failures(server, every=100)
    answer = poll(server.url, "earliest", timeout=0, result="failure")
    got = [e["seq"] for e in answer["events"]]
    polls = 1
    while answer["more"]:
        assert polls < 20, answer  # bounded: 5000 events, at most 2000 examined per poll
        answer = poll(server.url, answer["cursor"], timeout=0, result="failure")
        got += [e["seq"] for e in answer["events"]]
        polls += 1
    assert got == want
    assert polls > 1  # more than one poll's budget: the loop is what finds the later ones
    assert answer["cursor"] == answer["head"]
    assert int(answer["head"].rsplit(":", 1)[1]) == TOTAL


def test_limit_is_honoured_from_history(server):
    """``limit=1000`` from history answers 1000 events (more than a slice of 64 and more than
    a replay page of 500), with ``more`` and the head; the next page goes on from ``cursor``."""
    _ingest_with_failures(server, every=100)
    first = poll(server.url, "earliest", timeout=0, limit=1000)
    assert [e["seq"] for e in first["events"]] == list(range(1, 1001))
    assert first["more"] is True
    assert first["cursor"] == first["events"][-1]["id"]
    assert int(first["head"].rsplit(":", 1)[1]) == TOTAL
    second = poll(server.url, first["cursor"], timeout=0, limit=1000, type="build.finished")
    assert [e["seq"] for e in second["events"]] == list(range(1001, 2001))


def test_caught_up_answer_says_no_more(server):
    """A poll at the head that times out says it is caught up: no events, ``more`` false, and
    ``cursor`` equal to ``head``."""
    m1 = Master()
    last = server.ingest(m1.batch(3))["cursor"]
    answer = poll(server.url, last, timeout=0)
    assert answer == {"events": [], "cursor": last, "more": False, "head": last}


def snippet(doc: str, name: str, lang: str) -> str:
    """The code block that follows ``<!-- snippet: NAME -->`` in ``doc`` (relative to the root)."""
    match = re.search(rf"<!-- snippet: {name} -->\n```{lang}\n(.*?)```", (ROOT / doc).read_text(), re.S)
    assert match, f"snippet {name!r} not found in {doc}"
    return match.group(1)


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
@pytest.mark.parametrize("doc, name", [("README.md", "readme-poll-failures"),
                                       ("docs/protocol.md", "poll-paging-sh")])
def test_shell_paging_examples_print_every_failure(server, doc, name):
    """The curl/jq paging loops of the README and docs/protocol.md, run as written (only the
    address changed), print every failure of a journal longer than a poll examines, in order,
    once, and end by themselves."""
    want = _ingest_with_failures(server, every=100)
    script = snippet(doc, name, "sh").replace("http://127.0.0.1:8080", server.url)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=DEADLINE, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [row[-1] for row in rows] == want  # the build number is the seq here


def test_python_paging_example_yields_every_failure(server):
    """The Python ``history()`` of docs/protocol.md, run as written (only the address changed),
    prints every failure in order, once, and ends at the head."""
    want = _ingest_with_failures(server, every=100)
    script = snippet("docs/protocol.md", "poll-paging-py", "python").replace("http://127.0.0.1:8080", server.url)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=DEADLINE,
                         check=True)
    assert [int(line.split()[-1]) for line in out.stdout.splitlines()] == want
