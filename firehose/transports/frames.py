"""Each transport's wire form of recent events, made once per event and shared by its subscribers.

An event carries its JSON bytes and nothing a transport adds to them: a WebSocket frame header,
an SSE message's ``id:`` and ``event:`` lines.  Those are made here, by the transport's own
cache (one per endpoint, as Centrifugo's hub keeps one per protocol), so the core event knows
no transport and fan-out still costs one framing per event, not one per delivery: the first
subscriber to send an event frames it, every other subscriber of that publish loop reuses the
same bytes.

The cache is keyed by the event's cursor (epoch and offset), not by the event object: events
read back from the journal for a replay are new objects each time, and they find the frame a
live delivery (or another replay) already made.  It is bounded by count and by bytes, oldest out
first; a replay far behind the head may frame again what fell out, which costs what it did
before there was a cache and nothing more.

A transport that offers several formats (``format=cloudevents``) keeps one cache per format
(:func:`per_format`): each event is framed once per format that some subscriber asked for, and
the default format's cache, its hot path, is the one it always had.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from firehose.event import Event

#: Frames kept: replay pages and live batches of the last few thousand events hit the cache.
DEFAULT_SIZE = 4096
#: Bytes kept.  A live batch (one ingest body, at most 1 MiB) always fits, so every subscriber
#: of one publish loop gets the same frames; a few thousand ordinary (~1 KB) events fit too.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: Joined batches kept (see :meth:`FrameCache.join`): one per filter of a round's turn, for the
#: few dozen distinct filters a round usually has; and the bytes they may hold.
JOINS_KEPT = 32
JOINS_MAX_BYTES = 4 * 1024 * 1024


class FrameCache:
    """The frames of one transport, by cursor.

    :param make: frames one event, never empty (called once per event while it stays cached).
    :param size: most frames kept.
    :param max_bytes: most bytes of frames kept; the newest frame is kept whatever its size,
        so a subscriber never frames the event it is sending twice.
    """

    __slots__ = ("_make", "_frames", "_order", "_bytes", "_joins", "_join_bytes", "_last_events", "_last_data",
                 "size", "max_bytes", "joined")

    def __init__(
        self,
        make: Callable[[Event], bytes],
        size: int = DEFAULT_SIZE,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._make = make
        self._frames: dict[str, bytes] = {}
        self._order: deque[str] = deque()
        self._bytes = 0
        #: Recent joins by the identity of their list: id -> (the list, a copy, the bytes).
        self._joins: dict[int, tuple[list[Event], list[Event], bytes]] = {}
        self._join_bytes = 0
        #: The previous join's events (a copy) and its answer: an equal list that is not the
        #: same object (a queue's slice) is answered from it too.
        self._last_events: list[Event] = []
        self._last_data = b""
        self.size = size
        self.max_bytes = max_bytes
        #: Batches joined (not answered from a kept join): what the join caches save shows here.
        self.joined = 0

    def __len__(self) -> int:
        return len(self._frames)

    def join(self, events: list[Event]) -> bytes:
        """The frames of ``events`` end to end: what one socket write sends.

        This is the fan-out's inner loop, once per subscriber per batch.  A batch of one event
        (the usual live case) costs one dictionary lookup.  A longer batch is joined once per
        list: the hub hands the subscribers of one filter the very same list, and with several
        filters in a round their lists alternate, so the last ``JOINS_KEPT`` joins are kept by
        the identity of their list.  Each kept list is referenced (its ``id`` cannot be reused
        while kept) and compared with a copy of what it held (a pointer comparison per event:
        events compare by identity), so a list changed in place is joined again.  An equal list
        that is another object is answered from the previous join.
        """
        if len(events) == 1:
            event = events[0]
            return self._frames.get(event.cursor) or self._add(event)
        if events == self._last_events:
            return self._last_data
        kept = self._joins.get(id(events))
        if kept is not None and kept[0] is events and kept[1] == events:
            self._last_events = kept[1]
            self._last_data = kept[2]
            return kept[2]
        get = self._frames.get
        out = []
        for event in events:
            frame = get(event.cursor)
            if frame is None:
                frame = self._add(event)
            out.append(frame)
        data = b"".join(out)
        self.joined += 1
        copy = events.copy()
        self._last_events = copy
        self._last_data = data
        joins = self._joins
        if kept is not None:
            self._join_bytes -= len(joins.pop(id(events))[2])
        joins[id(events)] = (events, copy, data)
        self._join_bytes += len(data)
        while len(joins) > 1 and (len(joins) > JOINS_KEPT or self._join_bytes > JOINS_MAX_BYTES):
            self._join_bytes -= len(joins.pop(next(iter(joins)))[2])
        return data

    def frame(self, event: Event) -> bytes:
        """The frame of one event (made now if it is not cached)."""
        return self._frames.get(event.cursor) or self._add(event)

    def _add(self, event: Event) -> bytes:
        frame = self._make(event)
        key = event.cursor
        self._frames[key] = frame
        self._order.append(key)
        self._bytes += len(frame)
        order, frames = self._order, self._frames
        while len(order) > 1 and (len(order) > self.size or self._bytes > self.max_bytes):
            self._bytes -= len(frames.pop(order.popleft()))
        return frame


def per_format(makers: dict[str, Callable[[Event], bytes]]) -> dict[str, FrameCache]:
    """One :class:`FrameCache` per format, by name (``firehose``, ``cloudevents``): a cache
    is filled only by the subscribers of its own format, so offering a format nobody asks
    for costs nothing per event."""
    return {name: FrameCache(make) for name, make in makers.items()}
