"""The per-transport frame cache: one framing per event, whatever the subscribers, in bounded
memory, and never the bytes of another event."""

from __future__ import annotations

from firehose.event import Event
from firehose.transports.frames import FrameCache


def _event(offset: int, epoch: str = "e1", body: bytes = b"{}") -> Event:
    return Event(offset, f"{epoch}:{offset}", "build.started", body)


class _Counting:
    def __init__(self) -> None:
        self.made: list[str] = []

    def __call__(self, event: Event) -> bytes:
        self.made.append(event.cursor)
        return b"<" + event.cursor.encode() + b">"


def test_each_event_is_framed_once_for_every_subscriber() -> None:
    """Many subscribers sending the same batch, or batches that overlap, frame each event once
    and get the frames in the order of their events."""
    make = _Counting()
    cache = FrameCache(make)
    batch = [_event(1), _event(2), _event(3)]
    for _ in range(5):
        assert cache.join(batch) == b"<e1:1><e1:2><e1:3>"
    assert cache.join([batch[2]]) == b"<e1:3>"
    assert cache.join([batch[1], batch[2]]) == b"<e1:2><e1:3>"
    assert make.made == ["e1:1", "e1:2", "e1:3"]


def test_a_replayed_event_finds_the_live_frame() -> None:
    """An event read back from the journal is a new object with the same cursor: it gets the
    frame already made, not a second framing."""
    make = _Counting()
    cache = FrameCache(make)
    cache.join([_event(7)])
    assert cache.join([_event(7)]) == b"<e1:7>"
    assert make.made == ["e1:7"]


def test_the_same_offset_of_another_epoch_is_another_event() -> None:
    """The key is the cursor, epoch included: offset 1 of a recreated journal is framed anew."""
    cache = FrameCache(lambda e: e.encoded)
    assert cache.join([_event(1, "aa", b"old")]) == b"old"
    assert cache.join([_event(1, "bb", b"new")]) == b"new"


def test_a_changed_batch_list_is_not_answered_from_the_last_batch() -> None:
    """The previous batch's answer is kept by the batch's contents, not by the list object: a
    list changed in place after a send gets the frames of what it holds now."""
    cache = FrameCache(lambda e: e.cursor.encode() + b";")
    batch = [_event(1), _event(2)]
    assert cache.join(batch) == b"e1:1;e1:2;"
    batch[1] = _event(3)
    assert cache.join(batch) == b"e1:1;e1:3;"
    batch.append(_event(4))
    assert cache.join(batch) == b"e1:1;e1:3;e1:4;"


def test_bounded_by_count_oldest_out_first() -> None:
    """At most ``size`` frames are kept; the oldest goes first and is framed again if asked."""
    make = _Counting()
    cache = FrameCache(make, size=3)
    for offset in range(1, 6):
        cache.join([_event(offset)])
    assert len(cache) == 3
    cache.join([_event(5)])
    cache.join([_event(1)])
    assert make.made == ["e1:1", "e1:2", "e1:3", "e1:4", "e1:5", "e1:1"]


def test_bounded_by_bytes_but_the_newest_frame_stays() -> None:
    """Past ``max_bytes`` old frames go; a frame larger than the whole bound is still kept
    until the next one, so the subscribers of one publish loop share it."""
    make = _Counting()
    cache = FrameCache(lambda e: make(e) and e.encoded, max_bytes=100)
    big = _event(1, body=b"x" * 500)
    for _ in range(3):
        assert cache.join([big]) == b"x" * 500
    assert make.made == ["e1:1"]
    cache.join([_event(2, body=b"y" * 60)])
    cache.join([_event(3, body=b"z" * 30)])
    assert len(cache) == 2
    cache.join([_event(4, body=b"w" * 30)])
    assert len(cache) == 2  # 60 + 30 + 30 > 100: the 60-byte frame went
    assert make.made == ["e1:1", "e1:2", "e1:3", "e1:4"]


def test_alternating_lists_are_joined_once_each() -> None:
    """A round hands the subscribers of each filter the same list; with several filters the
    lists alternate (a, b, a, b, ...): each is joined once, not again at every alternation."""
    cache = FrameCache(lambda e: e.cursor.encode() + b";")
    a = [_event(1), _event(2)]
    b = [_event(2), _event(3)]
    c = [_event(1), _event(3)]
    for _ in range(10):
        assert cache.join(a) == b"e1:1;e1:2;"
        assert cache.join(b) == b"e1:2;e1:3;"
        assert cache.join(c) == b"e1:1;e1:3;"
    assert cache.joined == 3


def test_a_kept_list_changed_in_place_is_joined_again() -> None:
    """A kept join is found by its list's identity but answered only if the list still holds
    what it held: a list changed in place, even back among other kept lists, gets its new
    frames."""
    cache = FrameCache(lambda e: e.cursor.encode() + b";")
    a = [_event(1), _event(2)]
    b = [_event(3), _event(4)]
    cache.join(a)
    cache.join(b)
    a[0] = _event(5)
    assert cache.join(a) == b"e1:5;e1:2;"
    assert cache.join(b) == b"e1:3;e1:4;"
    assert cache.joined == 3


def test_kept_joins_are_bounded() -> None:
    """At most ``JOINS_KEPT`` joins are kept (each holding its list), oldest out first, and
    never more than ``JOINS_MAX_BYTES`` but the newest."""
    from firehose.transports import frames

    cache = FrameCache(lambda e: e.encoded)
    lists = [[_event(2 * i), _event(2 * i + 1)] for i in range(frames.JOINS_KEPT + 5)]
    for events in lists:
        cache.join(events)
    assert len(cache._joins) == frames.JOINS_KEPT
    assert cache.join(lists[-1]) and cache.joined == len(lists)
    cache.join(lists[0])  # fell out: joined again
    assert cache.joined == len(lists) + 1
    big = FrameCache(lambda e: e.encoded)
    huge = [[_event(1, body=b"x" * (frames.JOINS_MAX_BYTES // 2)), _event(2)] for _ in range(3)]
    for events in huge:
        big.join(events)
    assert len(big._joins) <= 2
