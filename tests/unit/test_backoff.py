"""The one backoff: doubling up to a cap, jittered within the upper half, reset on success."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from firehose.backoff import Backoff


def test_doubles_to_the_cap_and_resets() -> None:
    """With the jitter at its top, delays double from ``initial`` to ``maximum``; ``reset``
    starts again from ``initial``."""
    b = Backoff(1, 8, rand=lambda: 1.0)
    assert [b.next() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    b.reset()
    assert b.next() == 1


@given(
    initial=st.floats(0.001, 10),
    maximum=st.floats(0.001, 600),
    attempts=st.integers(0, 5000),
    seed=st.integers(0, 2**32),
)
def test_every_delay_is_in_the_upper_half_of_its_ceiling(initial: float, maximum: float, attempts: int,
                                                         seed: int) -> None:
    """Whatever the attempt count (a long outage included: no overflow), a delay lies between
    half its nominal value and the nominal value, and never above ``maximum``."""
    b = Backoff(initial, maximum, rand=random.Random(seed).random)
    b.attempts = attempts
    ceiling = b.nominal()
    delay = b.next()
    assert ceiling <= maximum
    assert ceiling / 2 <= delay <= ceiling
