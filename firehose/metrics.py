"""``GET /metrics``: Prometheus text format, read from plain counters at scrape time.

The hot paths only add to integers (``Hub.stats``, ``IngestStats``); this collector turns them into
metric families when Prometheus asks, so metrics cost nothing per event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from firehose.hub import Hub
from firehose.ingest import IngestStats
from firehose.journal import IJournal
from firehose.limits import ConnectionLimits

if TYPE_CHECKING:
    from firehose.checkpoint import StateFeed
    from firehose.webhooks.dispatcher import WebhookDispatcher

TRANSPORTS = ("websocket", "sse", "longpoll")


class FirehoseCollector:
    """Every metric family, computed from the parts' own counters when Prometheus scrapes.

    :param journal_bytes: the journal's size on disk (0 for one that has none).
    :param clock: "now" of the lag and silence gauges; the global reactor when ``None``.
    :param connections: the listening factory's counts (open connections, refusals); without
        one (a site that is not listening) those families are left out.
    :param webhooks: the webhook dispatcher; without one the webhook families are left out.
    :param warmup: the feed bringing the build state to the head (``firehose_state_ready``);
        without one the state counts as ready.
    """

    def __init__(
        self,
        hub: Hub,
        journal: IJournal,
        ingest: IngestStats,
        journal_bytes: Callable[[], int],
        *,
        clock: IReactorTime | None = None,
        connections: ConnectionLimits | None = None,
        webhooks: WebhookDispatcher | None = None,
        warmup: StateFeed | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as _reactor

            clock = _reactor
        self.hub = hub
        self.journal = journal
        self.ingest = ingest
        self.journal_bytes = journal_bytes
        self.clock: IReactorTime = clock
        self.connections = connections
        #: The webhook dispatcher (hooks by state, deliveries); may be set after the site is built.
        self.webhooks = webhooks
        self.warmup = warmup

    def collect(self) -> Iterator[Metric]:
        stats, ingest = self.hub.stats, self.ingest

        def per_master(name: str, doc: str, values: dict[str, Any], kind: type = CounterMetricFamily) -> Metric:
            family = kind(name, doc, labels=["master"])
            for master, value in sorted(values.items()):
                family.add_metric([master], value)
            return family

        yield per_master("firehose_events_ingested", "Events accepted into the journal.", ingest.accepted)
        yield per_master("firehose_events_duplicate", "Events dropped as already journaled.", ingest.duplicates)
        yield per_master("firehose_seq_gaps", "Places where a master's seq skipped ahead.", ingest.seq_gaps)
        rejected = CounterMetricFamily("firehose_ingest_rejected", "Ingest requests rejected.", labels=["reason"])
        for reason, n in sorted(ingest.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        seqs = self.journal.last_seqs()
        yield per_master(
            "firehose_master_last_seq", "Last seq accepted from the master's newest incarnation.",
            {m: s for m, (_, s) in seqs.items()}, GaugeMetricFamily,
        )
        now = self.clock.seconds()
        yield per_master(
            "firehose_master_lag_seconds", "Now minus the time of the master's newest event.",
            {m: max(0.0, now - t) for m, t in ingest.last_event_time.items()}, GaugeMetricFamily,
        )
        yield per_master(
            "firehose_master_silence_seconds", "Seconds since the master's last accepted batch.",
            {m: max(0.0, now - t) for m, t in ingest.last_received.items()}, GaugeMetricFamily,
        )
        subs = GaugeMetricFamily("firehose_subscribers", "Active subscriptions.", labels=["transport"])
        out = CounterMetricFamily("firehose_events_delivered", "Events delivered.", labels=["transport"])
        slow = CounterMetricFamily("firehose_slow_subscribers", "Subscriptions ended as too slow.", labels=["transport"])
        failed = CounterMetricFamily(
            "firehose_failed_subscribers", "Subscriptions ended because their transport raised.", labels=["transport"]
        )
        for t in TRANSPORTS:
            subs.add_metric([t], stats.subscribers[t])
            out.add_metric([t], stats.delivered[t])
            slow.add_metric([t], stats.slow[t])
            failed.add_metric([t], stats.failed[t])
        yield subs
        yield out
        yield slow
        yield failed
        yield CounterMetricFamily("firehose_events_published", "Events fanned out live.", value=stats.published)
        yield CounterMetricFamily("firehose_fanout_rounds", "Fan-out rounds (one write per subscriber each).",
                                  value=stats.rounds)
        yield CounterMetricFamily("firehose_fanout_writes", "Live hand-overs to subscribers, one per subscriber "
                                  "per round that had something for it.", value=stats.writes)
        yield CounterMetricFamily("firehose_fanout_round_seconds", "Time spent in fan-out rounds.",
                                  value=stats.round_seconds)
        yield CounterMetricFamily("firehose_fanout_pause_seconds", "Pauses between busy rounds.",
                                  value=stats.pause_seconds)
        yield GaugeMetricFamily("firehose_journal_head", "Offset of the newest event.", value=self.journal.head)
        warmup = self.warmup
        ready = warmup is None or warmup.ready
        yield GaugeMetricFamily("firehose_state_ready", "1 once the build state behind /api is complete "
                                "(0: warming up, /api answers 503).", value=1 if ready else 0)
        yield GaugeMetricFamily("firehose_state_replay_remaining", "Journal events the warming state has "
                                "still to replay.", value=0 if ready or warmup is None else warmup.progress()["remaining"])
        yield GaugeMetricFamily(
            "firehose_journal_events", "Events retained in the journal.",
            value=max(0, self.journal.head - self.journal.earliest + 1),
        )
        yield GaugeMetricFamily("firehose_journal_bytes", "Journal size on disk.", value=self.journal_bytes())
        writes = self.journal.write_health
        yield CounterMetricFamily(
            "firehose_journal_write_errors", "Journal writes that failed for a storage fault.",
            value=writes.failures,
        )
        yield GaugeMetricFamily(
            "firehose_journal_writable", "1 while journal writes reach storage, 0 after a storage fault.",
            value=1 if writes.writable else 0,
        )
        link = getattr(self.journal, "link", None)
        if link is not None:
            # The shared journal (firehose.redis_journal): its Redis link and this node's lag.
            state = link()
            yield GaugeMetricFamily(
                "firehose_redis_connected", "1 while this node's link to the shared Redis journal is up.",
                value=1 if state["connected"] else 0,
            )
            yield GaugeMetricFamily(
                "firehose_redis_lag_events", "Events in the shared stream this node has not delivered yet.",
                value=state["lag"],
            )
        yield from self._connection_metrics()
        yield from self._webhook_metrics()

    def _connection_metrics(self) -> Iterator[Metric]:
        """What :class:`~firehose.limits.ConnectionLimits` counts: open connections, refusals."""
        if self.connections is None:
            return
        yield GaugeMetricFamily(
            "firehose_connections_open", "Open client connections (refused ones not counted).",
            value=len(self.connections.protocols),
        )
        refused = CounterMetricFamily(
            "firehose_connections_refused", "Connections refused past a limit, by reason.", labels=["reason"]
        )
        for reason, n in sorted(self.connections.refused.items()):
            refused.add_metric([reason], n)
        yield refused

    def _webhook_metrics(self) -> Iterator[Metric]:
        """Webhooks (a hub subscription each, not among ``TRANSPORTS``): how many hooks are
        active and disabled, POSTs by outcome, events acknowledged."""
        if self.webhooks is None:
            return
        hooks = GaugeMetricFamily("firehose_webhooks", "Registered webhooks, by state.", labels=["state"])
        for state, n in sorted(self.webhooks.states().items()):
            hooks.add_metric([state], n)
        yield hooks
        stats = self.webhooks.stats
        posts = CounterMetricFamily(
            "firehose_webhook_deliveries", "Webhook POSTs, by result (failed: retried or disabling).",
            labels=["result"],
        )
        posts.add_metric(["delivered"], stats.delivered)
        posts.add_metric(["failed"], stats.failed)
        yield posts
        yield CounterMetricFamily(
            "firehose_webhook_events_delivered", "Events in webhook POSTs the receiver acknowledged.",
            value=stats.events,
        )


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, collector: FirehoseCollector) -> None:
        super().__init__()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)
