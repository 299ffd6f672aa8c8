"""Ingest semantics a master relies on: retry freely, restart with a new incarnation."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import Master, WSClient, post_ingest, seqs

pytestmark = pytest.mark.slow


def test_concurrent_retries_of_one_batch_are_published_once(server, clients):
    """The same batch POSTed by several connections at once (a master retrying after a lost
    answer) is acknowledged on every one, journaled and published once: the accepted counts
    add up to the batch size and the rest are duplicates."""
    ws = WSClient(server.ws_url)
    clients.append(ws)
    ws.subscribe()
    m1 = Master()
    batch = m1.batch(25)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: server.ingest(batch), range(6)))
    assert sum(a["accepted"] for a in answers) == 25
    assert sum(a["duplicates"] for a in answers) == 25 * 5
    got = ws.events(25)
    assert seqs(got) == seqs(batch)
    sentinel = m1.event()
    server.ingest([sentinel])
    assert seqs(ws.events(1)) == seqs([sentinel]), "a retried event was published twice"


def test_duplicates_inside_a_batch_and_new_incarnations(server, clients):
    """A seq repeated inside one batch is refused whole (422 seq_order); a master that restarts (new incarnation)
    starts its seq at 1 again and is accepted; the old incarnation's events stay deduplicated;
    /health reports the newest incarnation."""
    ws = WSClient(server.ws_url)
    clients.append(ws)
    ws.subscribe()
    old = Master("m2", "boot-1")
    events = old.batch(3)
    status, body = post_ingest(server.url, events + [events[1]], server.tokens["m2"])
    assert status == 422 and json.loads(body)["error"] == "seq_order", body
    answer = server.ingest(events)
    assert (answer["accepted"], answer["duplicates"]) == (3, 0)
    new = Master("m2", "boot-2")
    fresh = new.batch(3)
    answer = server.ingest(fresh)
    assert (answer["accepted"], answer["duplicates"]) == (3, 0)
    status, _ = post_ingest(server.url, events, server.tokens["m2"])
    assert status == 200
    assert seqs(ws.events(6)) == seqs(events + fresh)
    ws.assert_nothing_more()
    assert server.health()["masters"]["m2"] == {"incarnation": "boot-2", "last_seq": 3}
