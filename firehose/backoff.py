"""Exponential backoff with jitter: one definition for every retry loop (the blocking and the
Twisted client, the webhook dispatcher, the plugin's outbox).

It imports nothing but the standard library, so the plugin (inside a Buildbot master) and a
blocking client (no Twisted) can both use it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

#: Past this many doublings the delay is at ``maximum`` anyway; capping the exponent keeps
#: ``factor ** attempts`` from overflowing after a very long outage.
_MAX_EXPONENT = 64


class Backoff:
    """``initial * factor**n`` capped at ``maximum``, each delay drawn uniformly from the upper
    half of that, so that clients cut off together do not all come back in the same instant.

    :param rand: a function returning a float in [0, 1) (tests pass ``random.Random(0).random``
        or a constant).
    """

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        factor: float = 2.0,
        rand: Callable[[], float] | None = None,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.rand = rand or random.random
        #: Delays handed out since the last :meth:`reset`.
        self.attempts = 0

    def nominal(self) -> float:
        """The upper bound of the next delay."""
        return min(self.maximum, self.initial * self.factor ** min(self.attempts, _MAX_EXPONENT))

    def next(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        ceiling = self.nominal()
        self.attempts += 1
        return ceiling / 2 + ceiling / 2 * self.rand()

    def reset(self) -> None:
        """An attempt succeeded: start from ``initial`` again."""
        self.attempts = 0
