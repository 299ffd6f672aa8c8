"""The dependency rules of docs/architecture.md, checked by running an import in a fresh
interpreter and listing what it pulled in (an import inside a function that runs at import time
counts too, which reading the source would miss).  Every such rule lives here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: The core: no HTTP server, no WebSocket library, no transport.
CORE = ["firehose.event", "firehose.schema", "firehose.filters", "firehose.cursor", "firehose.journal", "firehose.hub",
        "firehose.specs", "firehose.checkpoint"]
#: What the plugin may use of the server's package: the envelope, its schema and the backoff
#: (and what ``firehose/__init__`` re-exports, which is pure too).
PLUGIN_MAY_IMPORT = {"firehose", "firehose.event", "firehose.schema", "firehose.cursor", "firehose.filters",
                     "firehose.backoff"}
#: Code users run without the server, which must not import Twisted (nor zope or autobahn):
#: a blocking client, a webhook receiver verifying signatures, the CLI reading its settings.
NO_TWISTED = {
    "blocking client": "import firehose.client\n"
                       "firehose.client.stream, firehose.client.query, firehose.client.wait, firehose.client.Stream\n"
                       "from firehose.client import Backoff, Gap, RequestError, RevisionTracker",
    "webhook receiver": "import firehose.signing\nfrom firehose.webhooks import verify",
    "settings": "import firehose.config, firehose.cli",
    "CloudEvents mapping": "import firehose.cloudevents",
    "what a push's state is": "import firehose.pushes",
    "webhook URL policy": "import firehose.webhooks.urls, firehose.webhooks.hooks, firehose.webhooks.errors\n"
                          "from firehose.webhooks import check_url, WebhookError",
}


def imported_by(code: str) -> set[str]:
    """The names in ``sys.modules`` after running ``code`` (or importing a module name) in a
    new interpreter."""
    if "\n" not in code and " " not in code:
        code = f"import {code}"
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


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


def test_server_never_needs_buildbot_or_the_client() -> None:
    """Starting the server (``firehose.service``) imports nothing of Buildbot, and nothing of
    the client library (the webhooks' backoff and the server's `since` have their own homes)."""
    assert under(imported_by("firehose.service"), "buildbot", "buildbot_plugin", "firehose.client") == []


@pytest.mark.parametrize("use", sorted(NO_TWISTED))
def test_what_runs_without_the_server_imports_no_twisted(use: str) -> None:
    """A blocking client, a signature check, the settings and the webhook URL policy load no
    Twisted, zope, autobahn or treq module."""
    assert under(imported_by(NO_TWISTED[use]), "twisted", "zope", "autobahn", "treq") == []


def test_twisted_client_loads_on_first_use() -> None:
    """``firehose.client.FirehoseClient`` imports the Twisted client only when first asked for."""
    modules = imported_by("import firehose.client\nfirehose.client.FirehoseClient")
    assert "firehose.client.twisted_client" in modules and "autobahn.twisted.websocket" in modules


def test_a_receiver_loads_no_server_module() -> None:
    """Verifying a signature loads ``firehose.signing`` and the package's pure re-exports only."""
    loaded = set(under(imported_by("firehose.signing"), "firehose"))
    assert loaded <= {"firehose", "firehose.signing", "firehose.cursor", "firehose.event", "firehose.filters"}, loaded


def test_the_definition_of_done_is_standard_library_only() -> None:
    """``firehose.pushes`` (what a revision's state is, shared by the server's pushlog and
    ``firehose wait``) imports only the standard library: beyond what ``import firehose`` loads
    (its pure re-exports), it adds no module but itself."""
    before = imported_by("import firehose")
    added = imported_by("import firehose\nimport firehose.pushes") - before
    assert added == {"firehose.pushes"}, sorted(added)
