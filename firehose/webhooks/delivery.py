"""Delivery to one hook: its hub subscription, batches, one POST in flight, retries, the cursor.

Per hook: one batch in flight at a time (order is kept); a batch is retried with exponential
backoff until the receiver answers 2xx; the cursor advances (and is persisted) only after that
answer - at-least-once delivery, receivers dedupe by event ``id``.  After ``max_failures``
consecutive failures (or a ``410 Gone``) the hook is disabled.  While a batch is out the hub
subscription is paused, so the hub queues (bounded) or ends it as ``slow``, and delivery then
catches up from the journal.

A batch is pinned once it is first sent: every retry POSTs the same events under the same
``webhook-id`` (:func:`message_id`), so a receiver may dedupe by it; each attempt is written
to the hook's :class:`~firehose.webhooks.log.DeliveryLog`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import chain
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from firehose import __version__
from firehose.backoff import Backoff
from firehose.cursor import CursorError
from firehose.event import Event
from firehose.filters import parse_json
from firehose.hub import Subscription
from firehose.signing import signature_headers, standard_headers
from firehose.webhooks.agent import DeliveryError
from firehose.webhooks.bodies import batch_limit, render
from firehose.webhooks.hooks import Hook
from firehose.webhooks.log import Attempt

if TYPE_CHECKING:
    from firehose.webhooks.dispatcher import WebhookDispatcher


@dataclass
class WebhookStats:
    """Plain counters of all hooks' deliveries, read by /metrics; nothing here costs more than
    an add."""

    #: POSTs the receiver acknowledged (2xx).
    delivered: int = 0
    #: POSTs that failed: an error, no answer in time, or an answer other than 2xx.
    failed: int = 0
    #: Events in acknowledged POSTs.
    events: int = 0


class Delivery:
    """One hook's subscription and its delivery loop (the hub's :class:`~firehose.hub.Sink`).

    Made and stopped by the dispatcher, which it calls back to persist a moved cursor
    (:meth:`WebhookDispatcher.save`) and to disable the hook.
    """

    log = Logger()

    def __init__(self, dispatcher: WebhookDispatcher, hook: Hook) -> None:
        self.dispatcher = dispatcher
        self.hook = hook
        self.sub: Subscription | None = None
        self.buffer: list[Event] = []
        self.gaps: list[dict[str, Any]] = []
        self.inflight: defer.Deferred[Any] | None = None
        #: The batch being delivered (events, gaps), pinned until acknowledged.
        self.pending: tuple[list[Event], list[dict[str, Any]]] | None = None
        self.timer: IDelayedCall | None = None
        self.stopped = False
        #: Across nodes: the moved cursor is being persisted; the next batch waits for it.
        self.saving = False
        self.ended = False  # the hub ended the subscription (slow): resubscribe when drained
        self.backoff = Backoff(dispatcher.config.retry_initial, dispatcher.config.retry_max,
                               rand=dispatcher.rand)

    def start(self) -> None:
        hub = self.dispatcher.hub
        try:
            sub = hub.subscribe(self, parse_json(self.hook.filter), self.hook.cursor, "webhook")
        except CursorError as exc:
            self.dispatcher.disable(self.hook.id, f"stored cursor unusable: {exc}")
            return
        self.sub = sub
        self.ended = False
        sub.start()
        self._kick()

    def stop(self) -> None:
        self.stopped = True
        if self.sub is not None:
            self.sub.close()
            self.sub = None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.inflight is not None:
            d, self.inflight = self.inflight, None
            d.cancel()
        self.buffer.clear()

    # Sink

    def send(self, events: list[Event]) -> None:
        self.buffer.extend(events)
        self._kick()

    def replayed(self, caught_up: bool) -> None:
        """Nothing to do as the replay progresses."""

    def gap(self, gap: dict[str, Any], final: bool) -> None:
        if final:
            self.sub = None
            self.ended = True
            if gap.get("reason") not in ("slow", "error"):
                self.gaps.append(gap)
        else:
            self.gaps.append(gap)
        self._kick()

    # Loop

    def _busy(self) -> bool:
        return self.inflight is not None or self.timer is not None or self.saving

    def _kick(self) -> None:
        if self.stopped:
            return
        if self.sub is not None:
            # Hold the hub back while a batch is out or enough is waiting: the hub queues (bounded)
            # or ends us as slow, and the journal has everything we did not take.
            if self._busy() or len(self.buffer) >= self.dispatcher.config.batch_size:
                self.sub.pause()
            elif self.sub.paused:
                self.sub.resume()
                if self.stopped:
                    return
        if self._busy():
            return
        if self.buffer or self.gaps:
            leases = self.dispatcher.leases
            if leases is not None and not leases.holds(self.hook.id):
                self.stop()  # across nodes, a batch goes out only under a lease we hold
                return
            self._post()
        elif self.ended and self.sub is None:
            self.start()

    def _post(self) -> None:
        config = self.dispatcher.config
        if self.pending is None:
            self.pending = (self.buffer[: batch_limit(self.hook.format, config.batch_size)], list(self.gaps))
        batch, gaps = self.pending
        clock = self.dispatcher.clock
        sent_at = int(clock.seconds())
        msg_id = message_id(self.hook, batch, gaps)
        body, own = render(self.hook.format, self.hook.id, sent_at, batch, gaps)
        headers = {
            b"User-Agent": [f"firehose-webhooks/{__version__}".encode()],
            b"X-Firehose-Hook": [self.hook.id.encode()],
            b"X-Firehose-Delivery": [
                (f"{batch[0].cursor}..{batch[-1].cursor}" if batch else f"gap-{sent_at}").encode()
            ],
        }
        for name, value in chain(own.items(), signature_headers(self.hook.secret, body, sent_at).items(),
                                 standard_headers(self.hook.secrets, msg_id, sent_at, body).items()):
            headers[name.encode()] = [value.encode()]
        if self.sub is not None:
            self.sub.pause()
        attempt = Attempt(clock.seconds(), msg_id, batch[0].cursor if batch else None,
                          batch[-1].cursor if batch else None, len(batch), self.hook.failures + 1,
                          None, None, 0.0)
        d = self.dispatcher.post(self.hook.url, body, headers)
        self.inflight = d
        d.addCallbacks(self._answered, self._failed, callbackArgs=(batch, gaps, attempt),
                       errbackArgs=(batch, gaps, attempt))

    def _record(self, attempt: Attempt, status: int | None, error: str | None) -> None:
        """Write the attempt, now that it ended, to the hook's delivery log."""
        took = max(0.0, self.dispatcher.clock.seconds() - attempt.time) * 1000.0
        self.dispatcher.delivery_log(self.hook.id).record(
            replace(attempt, status=status, error=error, duration_ms=round(took, 3)))

    def _answered(self, code: int, batch: list[Event], gaps: list[dict[str, Any]], attempt: Attempt) -> None:
        if self.stopped:
            return
        self.inflight = None
        if 200 <= code < 300:
            self._record(attempt, code, None)
            self._delivered(batch, gaps)
        elif code == 410:
            self._record(attempt, code, "the receiver answered 410 Gone")
            self.dispatcher.stats.failed += 1
            self.dispatcher.disable(self.hook.id, "the receiver answered 410 Gone")
        else:
            self._record(attempt, code, f"receiver answered HTTP {code}")
            self._retry(f"receiver answered HTTP {code}")

    def _failed(self, failure: Any, batch: list[Event], gaps: list[dict[str, Any]], attempt: Attempt) -> None:
        if self.stopped:
            return
        self.inflight = None
        if failure.check(DeliveryError):
            error = str(failure.value)
        else:
            self.log.failure("webhook {id}: delivery failed", failure, id=self.hook.id)
            error = f"delivery failed: {failure.type.__name__}"
        self._record(attempt, None, error)
        self._retry(error)

    def _delivered(self, batch: list[Event], gaps: list[dict[str, Any]]) -> None:
        hook = self.hook
        self.pending = None
        del self.buffer[: len(batch)]
        self.gaps = self.gaps[len(gaps):]
        self.backoff.reset()
        hook.failures = 0
        hook.last_error = None
        hook.delivered += len(batch)
        hook.last_delivery = self.dispatcher.clock.seconds()
        if not self.buffer and self.sub is not None:
            hook.cursor = self.sub.cursor  # may skip past events the filter did not match
        elif batch:
            hook.cursor = batch[-1].cursor
        elif gaps:
            hook.cursor = gaps[-1].get("cursor") or hook.cursor
        self.dispatcher.stats.delivered += 1
        self.dispatcher.stats.events += len(batch)
        saved = self.dispatcher.save()
        if self.dispatcher.leases is None:
            self._kick()
            return
        # Across nodes the cursor is persisted before the next batch goes out, so a node that
        # dies doubles at most the batch it had in flight.
        self.saving = True

        def next_batch(_: Any) -> None:
            self.saving = False
            self._kick()

        saved.addBoth(next_batch)

    def _retry(self, error: str) -> None:
        hook = self.hook
        hook.failures += 1
        hook.last_error = error
        self.dispatcher.stats.failed += 1
        if hook.failures >= self.dispatcher.config.max_failures:
            self.dispatcher.disable(hook.id, f"{hook.failures} consecutive failed deliveries; last: {error}")
            return
        delay = self.backoff.next()
        self.log.info("webhook {id}: delivery failed ({error}); retry {n} in {delay:.1f}s",
                      id=hook.id, error=error, n=hook.failures, delay=delay)
        self.dispatcher.save()
        self.timer = self.dispatcher.clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self.timer = None
        self._kick()


def message_id(hook: Hook, batch: list[Event], gaps: list[dict[str, Any]]) -> str:
    """The ``webhook-id`` of a batch: the hook and the cursors of its first and last event
    (of its last gap for a batch of gaps only), so every retry of a batch, and a resend of
    it after a restart, has the same id.  After a redelivery (:attr:`Hook.redeliveries`) it
    ends in ``/r<n>``: what the receiver asked for again must not be dropped as a duplicate."""
    span = f"{batch[0].cursor}..{batch[-1].cursor}" if batch else f"gap..{gaps[-1].get('cursor')}"
    base = f"{hook.id}/{span}"
    return f"{base}/r{hook.redeliveries}" if hook.redeliveries else base
