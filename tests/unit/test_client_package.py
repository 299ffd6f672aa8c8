"""The shape of the ``firehose.client`` package: a blocking user never imports Twisted, the
Twisted client is there when asked for, and the names users import from it still resolve."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import firehose.backoff
import firehose.client


def modules_after(code: str) -> list[str]:
    """The Twisted and autobahn modules in ``sys.modules`` after running ``code`` in a fresh
    interpreter (this process has imported Twisted long ago)."""
    script = (f"import json, sys\n{code}\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'autobahn'))))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return list(json.loads(out.stdout.splitlines()[-1]))


def test_blocking_client_imports_no_twisted() -> None:
    """Importing the package and using its blocking names (stream, query, wait, Stream,
    Backoff) imports no twisted or autobahn module."""
    code = ("import firehose.client\n"
            "firehose.client.stream, firehose.client.query, firehose.client.wait, firehose.client.Stream\n"
            "from firehose.client import Backoff, Gap, RequestError, RevisionTracker")
    assert modules_after(code) == []


def test_twisted_client_loads_on_first_use() -> None:
    """``firehose.client.FirehoseClient`` imports the Twisted client when first asked for, and
    is the class of ``firehose.client.twisted_client``."""
    found = modules_after("import firehose.client\nprint(firehose.client.FirehoseClient.__module__)")
    assert "autobahn.twisted.websocket" in found
    from firehose.client import FirehoseClient
    from firehose.client.twisted_client import FirehoseClient as Direct

    assert FirehoseClient is Direct


def test_public_names_resolve() -> None:
    """Every name in ``__all__`` resolves (the lazy one included) and ``Backoff`` is the one of
    :mod:`firehose.backoff` (docs name ``firehose.client.Backoff``); an unknown name is an
    AttributeError, as for any module."""
    for name in firehose.client.__all__:
        assert getattr(firehose.client, name) is not None, name
    assert firehose.client.Backoff is firehose.backoff.Backoff
    assert "FirehoseClient" in dir(firehose.client)
    with pytest.raises(AttributeError, match="NoSuchThing"):
        firehose.client.NoSuchThing  # noqa: B018
