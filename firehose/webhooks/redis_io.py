"""How the webhook code talks to Redis without blocking the reactor: a runner per concern.

redis-py is a blocking client, so every call goes through a :class:`Runner`: in the server a
:class:`ThreadRunner` (one thread, so the calls of one concern keep their order and a slow Redis
delays only that concern: the store's saves never hold up the leases' renewals), in unit tests an
:class:`InlineRunner`, which calls at once so a test drives time with a ``Clock`` against a real
local Redis and stays deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")

#: Key prefix of everything the webhooks keep in Redis (the journal has its own).
PREFIX = "firehose:webhooks:"


class Runner(Protocol):
    """Runs a blocking call and fires a Deferred with its result (or failure)."""

    def run(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Call ``f(*args)`` somewhere that may block."""

    def stop(self) -> None:
        """Release the runner's thread (pending calls finish first)."""


class ThreadRunner:
    """Calls in one thread of its own (started at once), results back on the reactor thread."""

    def __init__(self, reactor: Any, name: str) -> None:
        self.reactor = reactor
        self._pool = ThreadPool(1, 1, name)
        self._pool.start()

    def run(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return deferToThreadPool(self.reactor, self._pool, f, *args)

    def stop(self) -> None:
        self._pool.stop()


class InlineRunner:
    """Calls at once, on the caller's thread (unit tests with a ``Clock`` and a local Redis)."""

    def run(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return defer.maybeDeferred(f, *args)

    def stop(self) -> None:
        """Nothing to release."""


def connect(url: str, timeout: float) -> Any:
    """A redis-py client for ``url`` whose calls give up after ``timeout`` seconds, so a Redis
    that stopped answering fails a lease renewal instead of hanging it (redis is imported here,
    on first use: a server without ``--redis`` never needs the package)."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                health_check_interval=0)
