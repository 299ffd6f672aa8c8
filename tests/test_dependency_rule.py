"""The dependency rule of docs/architecture.md, checked by importing each module in a fresh
interpreter and listing what it pulled in (an import inside a function that runs at import time
counts too, which reading the source would miss)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: The core: no HTTP server, no WebSocket library, no transport.
CORE = ["firehose.event", "firehose.schema", "firehose.filters", "firehose.cursor", "firehose.journal", "firehose.hub"]
#: What the plugin may use of the server's package: the envelope and its schema (and what
#: ``firehose/__init__`` re-exports, which is pure too).
PLUGIN_MAY_IMPORT = {"firehose", "firehose.event", "firehose.schema", "firehose.cursor", "firehose.filters", "firehose.backoff"}


def imported_by(module: str) -> set[str]:
    """The names in ``sys.modules`` after importing ``module`` in a new interpreter."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(out.stdout))


def under(modules: set[str], *prefixes: str) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("module", CORE)
def test_core_imports_no_web_server_or_websocket_library(module: str) -> None:
    """A core module imports nothing from twisted.web, autobahn or firehose.transports."""
    found = under(imported_by(module), "twisted.web", "autobahn", "firehose.transports", "firehose.web")
    assert found == [], f"{module} pulled in {found}"


@pytest.mark.parametrize("module", ["buildbot_plugin.convert", "buildbot_plugin.outbox", "buildbot_plugin.tracker"])
def test_plugin_imports_only_the_envelope_of_the_server(module: str) -> None:
    """The plugin's modules use only firehose's pure core: the server never runs in a master."""
    found = set(under(imported_by(module), "firehose")) - PLUGIN_MAY_IMPORT
    assert found == set(), f"{module} pulled in {sorted(found)}"


def test_server_never_needs_buildbot() -> None:
    """Starting the server (``firehose.service``) imports nothing of Buildbot."""
    assert under(imported_by("firehose.service"), "buildbot", "buildbot_plugin") == []
