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


class FrameCache:
    """The frames of one transport, by cursor.

    :param make: frames one event, never empty (called once per event while it stays cached).
    :param size: most frames kept.
    :param max_bytes: most bytes of frames kept; the newest frame is kept whatever its size,
        so a subscriber never frames the event it is sending twice.
    """

    __slots__ = ("_make", "_frames", "_order", "_bytes", "_last_events", "_last_data", "size", "max_bytes")

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
        #: The previous :meth:`join`'s events (a copy) and its answer.
        self._last_events: list[Event] = []
        self._last_data = b""
        self.size = size
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._frames)

    def join(self, events: list[Event]) -> bytes:
        """The frames of ``events`` end to end: what one socket write sends.

        This is the fan-out's inner loop, once per subscriber per batch.  A batch of one event
        (the usual live case) costs one dictionary lookup.  For a longer batch the previous
        answer is kept: in one publish loop the subscribers of one filter are handed the same
        events, and comparing two lists of events is a pointer comparison per event (events
        compare by identity), cheaper than a lookup per event and a join.
        """
        if len(events) == 1:
            event = events[0]
            return self._frames.get(event.cursor) or self._add(event)
        if events == self._last_events:
            return self._last_data
        get = self._frames.get
        out = []
        for event in events:
            frame = get(event.cursor)
            if frame is None:
                frame = self._add(event)
            out.append(frame)
        data = b"".join(out)
        self._last_events = events.copy()
        self._last_data = data
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
