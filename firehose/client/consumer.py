"""The consumer side of a subscription, shared by :class:`~firehose.client.FirehoseClient` and
:class:`firehose.testing.FakeClient`.

What a user sees of a client (``on_event``/``on_gap`` callbacks or ``next()``/``async for``,
the :attr:`~Consumer.cursor` to store, :attr:`~Consumer.done`) lives here once, so that the fake
users test with behaves as production does: two copies of it had drifted (with ``on_event`` and
no ``on_gap``, a gap that lost events moved the real client's cursor but not the fake's).
Where the items come from (a WebSocket, or the hub in memory) is the subclass's business.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any, Self

from twisted.internet import defer

from firehose.client.common import Gap

log = logging.getLogger("firehose.client")


class Consumer:
    """Hands events and lost-event gaps to the user, in order, and keeps :attr:`cursor`.

    With ``on_event``, events go to it; gaps go to ``on_gap`` if given, else are logged (the
    cursor moves past them either way: a callback user asked for events, not for a stall).
    Without ``on_event``, events and gaps wait in a queue for :meth:`next`.

    Subclasses feed it with :meth:`_deliver`, end it with :meth:`_finish`, implement
    :meth:`start`, and, when they can stop reading their source, :meth:`_pause_reading` and
    :meth:`_resume_reading` (called when the queue reaches ``max_queued`` and when it has
    drained to half of that).

    :param since: the starting position, as :func:`~firehose.client.common.check_since` returns it.
    :param max_queued: events queued for :meth:`next` before reading pauses; ``None``: no bound.
    """

    def __init__(
        self,
        since: str | None,
        on_event: Callable[[dict[str, Any]], Any] | None,
        on_gap: Callable[[Gap], Any] | None,
        max_queued: int | None = None,
    ) -> None:
        #: Position of the last event handed to the consumer: what to store to resume later.
        self.cursor: str | None = since
        self.on_event = on_event
        self.on_gap = on_gap
        self.max_queued = max_queued
        #: Fires with ``None`` after :meth:`stop`, or fails with the error that ended the client
        #: (a :class:`~firehose.client.common.RequestError` when the subscription was refused).
        self.done: defer.Deferred[None] = defer.Deferred()
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._waiting: list[defer.Deferred[dict[str, Any]]] = []
        self._reading_paused = False
        self._error: BaseException | None = None

    def start(self) -> Self:
        """Begin receiving (the subclass's job)."""
        raise NotImplementedError

    # -- for subclasses ----------------------------------------------------------------------

    def _deliver(self, item: dict[str, Any]) -> None:
        """Hand over one event, or a :class:`Gap` that lost events, in arrival order.

        Once the consumer has ended (:meth:`_finish`: ``stop()`` or a refusal), nothing more
        is handed over: a source may still hold items it had already read (the rest of a
        replay page, frames in the same TCP read), and a user who asked to stop must not see
        them.  :attr:`cursor` stays at the last item handed over, so resuming from it loses
        none of them.
        """
        if self.done.called:
            return
        if isinstance(item, Gap):
            if self.on_gap is not None:
                self.on_gap(item)
                self._advance(item)
                return
            if self.on_event is not None:
                log.warning("firehose: events lost (%s gap) up to %s", item.reason, item.cursor)
                self._advance(item)
                return
        elif self.on_event is not None:
            self._advance(item)
            self.on_event(item)
            return
        if self._waiting:
            self._advance(item)
            self._waiting.pop(0).callback(item)
            return
        self._queue.append(item)
        if self.max_queued is not None and len(self._queue) >= self.max_queued and not self._reading_paused:
            self._reading_paused = True
            self._pause_reading()

    def _advance(self, item: dict[str, Any]) -> None:
        """The user has been given ``item``: that is where to resume from."""
        if isinstance(item, Gap):
            if item.cursor:
                self.cursor = item.cursor
        else:
            self.cursor = item["id"]

    def _finish(self, error: BaseException | None) -> None:
        """End: waiting :meth:`next` calls fail (``StopAsyncIteration`` or ``error``), and so
        does :attr:`done` with an error.  Events queued but not yet taken are dropped (stop
        means stop; :attr:`cursor` has not moved past them)."""
        self._error = error
        self._queue.clear()
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(error if error is not None else StopAsyncIteration())
        if not self.done.called:
            if error is None:
                self.done.callback(None)
            else:
                self.done.errback(error)

    def _pause_reading(self) -> None:
        """The queue is full: stop reading the source if it can be stopped."""

    def _resume_reading(self) -> None:
        """The queue has drained: read the source again."""

    # -- iteration ---------------------------------------------------------------------------

    def next(self) -> defer.Deferred[dict[str, Any]]:
        """A Deferred firing with the next event (or :class:`Gap`); fails with
        ``StopAsyncIteration`` after :meth:`stop`, or with the error that ended the client."""
        if self._queue:
            item = self._queue.popleft()
            self._advance(item)
            if (self._reading_paused and self.max_queued is not None
                    and len(self._queue) <= self.max_queued // 2):
                self._reading_paused = False
                self._resume_reading()
            return defer.succeed(item)
        if self.done.called:
            return defer.fail(self._error or StopAsyncIteration())
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._waiting.append(d)
        return d

    def __aiter__(self) -> Self:
        return self.start()

    async def __anext__(self) -> dict[str, Any]:
        return await self.next()
