"""The names users import from the ``firehose.client`` package still resolve (what it may
import, Twisted loaded lazily, is checked in tests/test_dependency_rule.py)."""

from __future__ import annotations

import pytest

import firehose.backoff
import firehose.client


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
