"""A hook's delivery log: its last attempts, for a person asking "what happened to my hook?".

Kept in memory only, so it is lost at a restart: an entry per attempt would otherwise be a
state-file write per POST (today the file is written only when a cursor or a failure count
moves), and what matters after a restart (cursor, failures, ``last_error``) is persisted
with the hook anyway.  Bounded: :data:`LOG_SIZE` entries per hook, the oldest go first.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

#: Attempts kept per hook.
LOG_SIZE = 100


@dataclass(frozen=True)
class Attempt:
    """One POST to a receiver and how it ended.

    :param time: when it was sent (seconds since the epoch).
    :param webhook_id: the batch's ``webhook-id`` (the same on every retry of the batch).
    :param first: the cursor of the batch's first event (``None`` for a batch of gaps only).
    :param attempt: 1 for the first POST of a batch, 2 for its first retry...
    :param status: the receiver's HTTP status, ``None`` when there was no answer.
    :param error: what went wrong, as a sentence; ``None`` for an acknowledged batch.
    :param duration_ms: from sending to the answer (or the failure), in milliseconds.
    """

    time: float
    webhook_id: str
    first: str | None
    last: str | None
    events: int
    attempt: int
    status: int | None
    error: str | None
    duration_ms: float

    def view(self) -> dict[str, Any]:
        return asdict(self)


class DeliveryLog:
    """The last ``size`` attempts of one hook."""

    def __init__(self, size: int = LOG_SIZE) -> None:
        self._entries: deque[Attempt] = deque(maxlen=size)

    def record(self, attempt: Attempt) -> None:
        self._entries.append(attempt)

    def newest_first(self) -> list[dict[str, Any]]:
        """The attempts as the API shows them, the newest first."""
        return [a.view() for a in reversed(self._entries)]

    def __len__(self) -> int:
        return len(self._entries)
