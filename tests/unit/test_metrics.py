"""``/metrics`` of a site built by ``build_site``: the clock's "now" and the connection counts."""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from firehose.event import dumps
from firehose.hub import Hub
from firehose.ingest import MasterTokens
from firehose.journal import MemoryJournal
from firehose.web import FirehoseSite, build_site
from tests.unit.helpers import batch


class MetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.journal = MemoryJournal(epoch="e1", clock=self.clock)
        self.site: FirehoseSite = build_site(
            hub=Hub(self.journal), journal=self.journal, clock=self.clock,
            tokens=MasterTokens({"m1": "tok1"}), max_connections=1,
        )
        self.client = StubTreq(self.site.resource)

    def metrics(self) -> dict[str, float]:
        response = self.successResultOf(self.client.get("http://firehose.test/metrics"))
        text = self.successResultOf(response.text())
        return {
            name: float(value)
            for name, _, value in (line.rpartition(" ") for line in text.splitlines() if not line.startswith("#"))
        }

    def test_silence_is_measured_on_the_site_clock(self) -> None:
        """A master's silence is the site clock's now minus its last accepted batch."""
        self.clock.advance(100)
        response = self.successResultOf(self.client.post(
            "http://firehose.test/ingest", data=dumps(batch(1, 1)), headers={"Authorization": ["Bearer tok1"]}))
        self.assertEqual(response.code, 200)
        self.clock.advance(7)
        self.assertEqual(self.metrics()['firehose_master_silence_seconds{master="m1"}'], 7.0)

    def test_open_and_refused_connections(self) -> None:
        """``firehose_connections_open`` counts the connections held; a connection past the
        limit shows in ``firehose_connections_refused_total`` under its reason."""
        listening = self.site.connections
        peer = IPv4Address("TCP", "127.0.0.1", 5000)
        held = listening.buildProtocol(peer)
        held.makeConnection(StringTransport(peerAddress=peer))
        listening.buildProtocol(IPv4Address("TCP", "127.0.0.2", 5001))  # refused: the server is full
        got = self.metrics()
        self.assertEqual(got["firehose_connections_open"], 1.0)
        self.assertEqual(got['firehose_connections_refused_total{reason="server_full"}'], 1.0)
        held.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.metrics()["firehose_connections_open"], 0.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
