"""Delivery to one hook: its hub subscription, batches, one POST in flight, retries, the cursor.

Per hook: one batch in flight at a time (order is kept); a batch is retried with exponential
backoff until the receiver answers 2xx; the cursor advances (and is persisted) only after that
answer - at-least-once delivery, receivers dedupe by event ``id``.  After ``max_failures``
consecutive failures (or a ``410 Gone``) the hook is disabled.  While a batch is out the hub
subscription is paused, so the hub queues (bounded) or ends it as ``slow``, and delivery then
catches up from the journal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from firehose import __version__
from firehose.backoff import Backoff
from firehose.cursor import CursorError
from firehose.event import Event, dumps
from firehose.filters import parse_json
from firehose.hub import Subscription
from firehose.signing import signature_headers
from firehose.webhooks.agent import DeliveryError
from firehose.webhooks.hooks import Hook

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
        self.timer: IDelayedCall | None = None
        self.stopped = False
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
        return self.inflight is not None or self.timer is not None

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
            self._post()
        elif self.ended and self.sub is None:
            self.start()

    def _post(self) -> None:
        config = self.dispatcher.config
        batch = self.buffer[: config.batch_size]
        gaps = list(self.gaps)
        sent_at = int(self.dispatcher.clock.seconds())
        body = (
            b'{"hook":' + dumps(self.hook.id)
            + b',"sent_at":' + dumps(sent_at)
            + b',"events":[' + b",".join(e.encoded for e in batch) + b"]"
            + (b',"gaps":' + dumps(gaps) if gaps else b"")
            + b"}"
        )
        headers = {
            b"Content-Type": [b"application/json"],
            b"User-Agent": [f"firehose-webhooks/{__version__}".encode()],
            b"X-Firehose-Hook": [self.hook.id.encode()],
            b"X-Firehose-Delivery": [
                (f"{batch[0].cursor}..{batch[-1].cursor}" if batch else f"gap-{sent_at}").encode()
            ],
        }
        for name, value in signature_headers(self.hook.secret, body, sent_at).items():
            headers[name.encode()] = [value.encode()]
        if self.sub is not None:
            self.sub.pause()
        d = self.dispatcher.post(self.hook.url, body, headers)
        self.inflight = d
        d.addCallbacks(self._answered, self._failed, callbackArgs=(batch, gaps), errbackArgs=(batch, gaps))

    def _answered(self, code: int, batch: list[Event], gaps: list[dict[str, Any]]) -> None:
        if self.stopped:
            return
        self.inflight = None
        if 200 <= code < 300:
            self._delivered(batch, gaps)
        elif code == 410:
            self.dispatcher.stats.failed += 1
            self.dispatcher.disable(self.hook.id, "the receiver answered 410 Gone")
        else:
            self._retry(f"receiver answered HTTP {code}")

    def _failed(self, failure: Any, batch: list[Event], gaps: list[dict[str, Any]]) -> None:
        if self.stopped:
            return
        self.inflight = None
        if failure.check(DeliveryError):
            self._retry(str(failure.value))
        else:
            self.log.failure("webhook {id}: delivery failed", failure, id=self.hook.id)
            self._retry(f"delivery failed: {failure.type.__name__}")

    def _delivered(self, batch: list[Event], gaps: list[dict[str, Any]]) -> None:
        hook = self.hook
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
        self.dispatcher.save()
        self._kick()

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

