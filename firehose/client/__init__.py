"""Python client of the firehose: follow the stream from a script or from a Twisted program.

Two clients with the same guarantee: **resume by cursor**.  Whatever happens to the network or
to the server (a dropped connection, a restart), the client reconnects with exponential backoff
and jitter, and resumes after the last event it delivered, so nothing is lost and nothing is
delivered twice.  A *real* loss (a cursor older than retention, or from another journal) is
never silent: it is surfaced as a :class:`Gap`.

* :func:`stream` is for plain scripts (no reactor knowledge; long-poll over ``urllib``)::

      for event in firehose.client.stream("http://127.0.0.1:8080", builder="try-*"):
          print(event["type"], event["data"]["builder"])

* :class:`FirehoseClient` is Twisted-native (WebSocket, autobahn): a callback, or
  ``async for event in client`` inside a Twisted coroutine.

* :func:`wait` waits for every build of a revision to finish (what ``firehose wait`` runs).

Filters are keyword arguments (``builder="linux*"``, ``type=["build.started", "build.finished"]``)
or a ``filter={...}`` dict for names that are not identifiers (``{"prop.owner": "alice"}``);
``prop__owner="alice"`` also means ``prop.owner``.  See docs/client.md.

The modules: :mod:`~firehose.client.common` (errors, :class:`Gap`, filters, ``since``),
:mod:`~firehose.client.blocking` (:func:`stream`, :func:`query`),
:mod:`~firehose.client.waiting` (:func:`wait`), :mod:`~firehose.client.consumer` (what a
Twisted client hands its user, shared with :mod:`firehose.testing`) and
:mod:`~firehose.client.twisted_client` (:class:`FirehoseClient`).  This package imports the
last two only when :class:`FirehoseClient` is first asked for, so a blocking script never
imports Twisted.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from firehose.backoff import Backoff
from firehose.client.blocking import Stream, query, stream
from firehose.client.common import (
    LOSS_REASONS,
    FirehoseError,
    Gap,
    RequestError,
    Unavailable,
    filter_dict,
    is_event,
)
from firehose.client.waiting import (
    OK_RESULTS,
    RevisionTracker,
    WaitResult,
    wait,
)

if TYPE_CHECKING:
    from firehose.client.twisted_client import FirehoseClient

__all__ = [
    "Backoff",
    "FirehoseClient",
    "FirehoseError",
    "Gap",
    "LOSS_REASONS",
    "OK_RESULTS",
    "RequestError",
    "RevisionTracker",
    "Stream",
    "Unavailable",
    "WaitResult",
    "filter_dict",
    "is_event",
    "query",
    "stream",
    "wait",
]

#: Names served by :func:`__getattr__`: importing them imports Twisted and autobahn.
_LAZY = {"FirehoseClient": "firehose.client.twisted_client"}


def __getattr__(name: str) -> Any:
    """Import the Twisted client on first use (PEP 562), not when the package is imported."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
