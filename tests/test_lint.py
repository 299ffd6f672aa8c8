"""The code stays clean: ruff over everything, mypy over the server and the plugin."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.path.join(BIN, tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing() -> None:
    """ruff (pyflakes, pycodestyle, isort, bugbear, pyupgrade) reports no problem."""
    result = run("ruff", "check", "firehose", "buildbot_plugin", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing() -> None:
    """mypy (with the zope plugin) type-checks firehose/ and buildbot_plugin/ without errors."""
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
