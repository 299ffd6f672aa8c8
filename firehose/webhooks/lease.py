"""Leases: which node delivers a hook, so that across nodes each hook has one deliverer at a time.

A lease is a Redis key ``<prefix>lease:<hook>`` holding the holder's token
``<node-id>/<generation>`` with a time to live (``ttl``).  The generation comes from a counter
per hook (``<prefix>lease-gen:<hook>``) incremented at each acquisition, so every tenure has a
token of its own, never reused: the store's fenced writes (:mod:`~firehose.webhooks.redis_store`)
compare it, so a holder whose lease passed to another node cannot move the cursor.

- acquire: a script does ``SET key token NX PX ttl`` with a fresh generation (nothing if the key
  exists: someone holds it);
- renew (every ``ttl/3``): ``PEXPIRE`` only if the key still holds our token (compare in Lua);
- release (clean stop, hook removed or disabled): ``DEL`` only if it still holds our token.

The holder stops delivering a hook at once when a renewal says the key is no longer its own, or
fails (Redis unreachable), and it counts itself the holder only until ``ttl * (1 - DRIFT)``
after it *sent* its last successful renewal (the key cannot have expired before then, even with
some clock drift), so a renewal that hangs never extends a tenure.  A node that dies stops
renewing; its key expires after ``ttl`` and another node's next tick acquires it.

The limit: a holder that is alive but paused (a long GC pause, SIGSTOP, a VM migration) past
``ttl`` does not know it lost the lease until it runs again; until its next check it may finish
the POST it had in flight, so for at most one batch two nodes may deliver the same hook.  It
cannot move the cursor (the write is fenced by the token) and it posts nothing more after it
runs its next check (:meth:`LeaseManager.holds` before each batch).
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from firehose.webhooks.redis_io import PREFIX, Runner

#: Share of the ttl kept as a margin for the clocks of the node and of Redis to differ.
DRIFT = 0.1

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = ARGV[1] .. '/' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'NX', 'PX', ARGV[2])
return token
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def node_id() -> str:
    """``hostname:pid:random``: unique per process, and telling an operator which node it is."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def lease_key(prefix: str, hid: str) -> str:
    """The Redis key of hook ``hid``'s lease (the store's fenced writes read it too)."""
    return f"{prefix}lease:{hid}"


class _Held:
    """A lease this node holds: its token and until when it may act on it."""

    __slots__ = ("token", "valid_until")

    def __init__(self, token: str, valid_until: float) -> None:
        self.token = token
        self.valid_until = valid_until


class LeaseManager:
    """This node's leases: acquires the hooks it is asked for, renews them, reports losses.

    :param client: a redis-py client (its calls run through ``runner``, never on the reactor).
    :param clock: ``IReactorTime`` of the ticks and of the local validity deadline.
    :param runner: where the blocking calls run (:class:`~firehose.webhooks.redis_io.ThreadRunner`).
    :param ttl: the lease's time to live in seconds; a dead holder's hooks wait this long.
    """

    log = Logger()

    def __init__(self, client: Any, clock: Any, runner: Runner, node: str | None = None,
                 ttl: float = 10.0, prefix: str = PREFIX) -> None:
        self.client = client
        self.clock = clock
        self.runner = runner
        self.node = node or node_id()
        self.ttl = ttl
        self.prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self.held: dict[str, _Held] = {}
        self._wanted: Callable[[], Iterable[str]] = lambda: ()
        self._on_acquired: Callable[[str, str], None] = lambda hid, token: None
        self._on_lost: Callable[[str], None] = lambda hid: None
        self._loop: LoopingCall | None = None
        self._ticking: defer.Deferred[None] | None = None

    # The loop

    def start(self, wanted: Callable[[], Iterable[str]], acquired: Callable[[str, str], None],
              lost: Callable[[str], None]) -> None:
        """Tick every ``ttl/3`` (now first): renew what is held, try to acquire ``wanted()``.

        :param acquired: called with ``(hook, token)`` when this node takes a hook's lease.
        :param lost: called with the hook when this node stops holding it (not on release).
        """
        self._wanted, self._on_acquired, self._on_lost = wanted, acquired, lost
        loop = self._loop = LoopingCall(self.tick)
        loop.clock = self.clock
        loop.start(self.ttl / 3, now=True)

    def tick(self) -> defer.Deferred[None]:
        """One round: renew every held lease, then acquire the wanted hooks nobody holds.

        Never fails (a LoopingCall whose call fails stops for good): a Redis error ends the
        leases it could not renew and is logged."""
        if self._ticking is not None:
            return self._ticking  # a round is still out (a slow Redis): do not stack them
        finished: list[bool] = []

        def done(_: Any) -> None:
            finished.append(True)
            self._ticking = None

        d = self._renew_all()
        d.addCallback(lambda _: self._acquire_wanted())
        d.addErrback(lambda f: self.log.failure("webhook lease round failed", f))
        d.addBoth(done)
        if not finished:  # still out (the calls run in a thread)
            self._ticking = d
        return d

    def _renew_all(self) -> defer.Deferred[None]:
        held = list(self.held.items())
        if not held:
            return defer.succeed(None)
        sent = self.clock.seconds()
        ms = int(self.ttl * 1000)

        def call() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for hid, lease in held:
                self._renew(keys=[lease_key(self.prefix, hid)], args=[lease.token, ms], client=pipe)
            return list(pipe.execute(raise_on_error=False))

        def renewed(results: list[Any]) -> None:
            for (hid, lease), ok in zip(held, results, strict=True):
                if self.held.get(hid) is not lease:
                    continue  # released or lost meanwhile
                if ok == 1:
                    lease.valid_until = sent + self.ttl * (1 - DRIFT)
                else:
                    why = "taken by another node or expired" if ok == 0 else f"renewal failed: {ok}"
                    self._lose(hid, why)

        def failed(f: Any) -> None:
            for hid, lease in held:
                if self.held.get(hid) is lease:
                    self._lose(hid, f"renewal failed: {f.getErrorMessage()}")

        return self.runner.run(call).addCallbacks(renewed, failed)

    def _acquire_wanted(self) -> defer.Deferred[None]:
        want = [hid for hid in self._wanted() if hid not in self.held]
        if not want:
            return defer.succeed(None)
        sent = self.clock.seconds()
        ms = int(self.ttl * 1000)

        def call() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for hid in want:
                self._acquire(keys=[lease_key(self.prefix, hid), f"{self.prefix}lease-gen:{hid}"],
                              args=[self.node, ms], client=pipe)
            return list(pipe.execute(raise_on_error=False))

        def acquired(results: list[Any]) -> None:
            for hid, token in zip(want, results, strict=True):
                if isinstance(token, bytes) and hid not in self.held:
                    text = token.decode()
                    self.held[hid] = _Held(text, sent + self.ttl * (1 - DRIFT))
                    self.log.info("webhook {id}: this node ({node}) delivers it now (lease {token})",
                                  id=hid, node=self.node, token=text)
                    self._on_acquired(hid, text)

        return self.runner.run(call).addCallback(acquired)

    def _lose(self, hid: str, why: str) -> None:
        del self.held[hid]
        self.log.warn("webhook {id}: this node stops delivering it: lease {why}", id=hid, why=why)
        self._on_lost(hid)

    # Questions and single moves

    def token(self, hid: str) -> str | None:
        """Our token for ``hid`` while we may act on it (held and within its deadline), else None."""
        lease = self.held.get(hid)
        if lease is None:
            return None
        if self.clock.seconds() >= lease.valid_until:
            self._lose(hid, "not renewed in time")
            return None
        return lease.token

    def holds(self, hid: str) -> bool:
        """True while this node may deliver ``hid`` (asked before every batch)."""
        return self.token(hid) is not None

    def forget(self, hid: str) -> None:
        """Stop counting ``hid`` as ours without touching Redis (a fenced write was refused:
        the key is not ours any more); reports the loss."""
        if hid in self.held:
            self._lose(hid, "refused a write: another node holds it")

    def release(self, hid: str) -> defer.Deferred[bool]:
        """Give up ``hid`` (compare-and-delete, so another node's lease is never deleted);
        fires True if our key was deleted.  No loss is reported: the caller chose this."""
        lease = self.held.pop(hid, None)
        if lease is None:
            return defer.succeed(False)
        token = lease.token
        d = self.runner.run(lambda: self._release(keys=[lease_key(self.prefix, hid)], args=[token]))
        d.addCallback(lambda n: n == 1)

        def failed(f: Any) -> bool:
            self.log.warn("webhook {id}: cannot release its lease ({e}); it expires in {ttl}s",
                          id=hid, e=f.getErrorMessage(), ttl=self.ttl)
            return False

        return d.addErrback(failed)

    def stop(self, release: bool = True) -> defer.Deferred[None]:
        """Stop ticking and (``release``) give up every lease so another node takes over at once;
        ``release=False`` leaves the keys to expire, as a killed node would.  Then stop the
        runner: a manager is not started again."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        pending = self._ticking if self._ticking is not None else defer.succeed(None)

        def give_up(_: Any) -> Any:
            if not release:
                self.held.clear()
                return None
            return defer.gatherResults([self.release(hid) for hid in list(self.held)])

        def done(_: Any) -> None:
            self.runner.stop()  # its thread would keep the process alive

        pending.addCallback(give_up)
        pending.addBoth(done)
        return pending
