"""Hostile filters against a real server: globs made to backtrack do not freeze anyone.

A glob such as twenty ``*`` and a final ``x`` took the old regex matcher minutes against a long
value without an ``x``, on the reactor thread: every client of the server stopped.  Here such
globs are sent through every place a filter is matched (live fan-out on /ws and /sse, replay on
/poll, the state behind /api) while events with a 200,000-character builder are published.
"""

from __future__ import annotations

import json
import urllib.parse

import pytest

from .conftest import Master, Poller, SSEClient, WSClient, http_get, query_string, seqs

pytestmark = pytest.mark.slow

#: Each within the pattern limit (256); together they cover many stars, stars between letters
#: the value is full of, and a piece the value lacks after many it has.
HOSTILE = ["*" * 20 + "x", "*a" * 12 + "*x", "*" + "*".join(["ab"] * 40) + "*c*x"]
#: 200,000 characters that every hostile piece but ``c`` and ``x`` occurs all over.
LONG = "ab" * 100_000


def test_hostile_globs_neither_freeze_the_server_nor_change_what_anyone_gets(start_server, clients):
    """With hostile globs subscribed on /ws and /sse, a batch carrying a 200,000-character
    builder that they do not match, one that they all match and a normal one is delivered:
    normal subscribers get the normal event, hostile ones get exactly the event they match,
    on /ws, /sse, /poll (replay) and /api/builds and /api/builders alike, and /health answers.
    (With the backtracking regex, the first event froze the server: every wait here would
    reach its deadline.)"""
    server = start_server()
    flt = {"builder": HOSTILE}
    normal_ws, hostile_ws = WSClient(server.ws_url), WSClient(server.ws_url)
    clients += [normal_ws, hostile_ws]
    normal_ws.subscribe({"builder": "linux*"})
    hostile_ws.subscribe(flt)
    normal_sse, hostile_sse = SSEClient(server.url, "builder=linux*"), SSEClient(server.url, query_string(flt))
    clients += [normal_sse, hostile_sse]
    assert normal_sse.status == hostile_sse.status == 200
    server.wait_subscribers("sse", 2)

    m1 = Master("m1", "hostile-1")
    miss = m1.event("build.finished", builder=LONG, results=0, result="success")
    hit = m1.event("build.finished", builder=LONG + "cx", results=2, result="failure")
    normal = m1.event("build.finished", builder="linux-x64", results=0, result="success")
    server.ingest([miss, hit, normal])

    assert seqs(normal_ws.events(1)) == seqs([normal])
    assert seqs(normal_sse.events(1)) == seqs([normal])
    assert seqs(hostile_ws.events(1)) == seqs([hit])
    assert seqs(hostile_sse.events(1)) == seqs([hit])
    hostile_ws.assert_nothing_more()

    poller = Poller(server.url, "earliest", **{"builder": ",".join(HOSTILE)})
    assert seqs(poller.events(1)) == seqs([hit])
    poller.assert_nothing_more()

    for endpoint, key in (("builds", "builds"), ("builders", "builders")):
        status, body = http_get(f"{server.url}/api/{endpoint}?{query_string(flt)}")
        assert status == 200, body
        assert [row["builder"] for row in json.loads(body)[key]] == [LONG + "cx"], endpoint

    assert server.health()["status"] == "ok"


@pytest.mark.parametrize("pattern", ["*" * 257, ",".join(f"*x{i}" for i in range(65))])
def test_filters_over_the_limits_are_refused_with_a_400_naming_the_limit(module_server, pattern):
    """A pattern over 256 characters, or more than 64 patterns, is refused by /poll, /sse and
    /api with a 400 whose message states the limit, before any matching is done."""
    qs = urllib.parse.urlencode({"builder": pattern})
    for path in ("/poll", "/sse", "/api/builds"):
        status, body = http_get(f"{module_server.url}{path}?{qs}")
        assert status == 400, (path, status, body)
        assert b"at most" in body, (path, body)
