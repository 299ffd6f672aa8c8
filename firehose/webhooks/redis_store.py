"""Hook registrations and delivery state in Redis, shared by every node (``--redis``).

Keys (``<prefix>`` is ``firehose:webhooks:``):

- ``<prefix>ids``: a set of the hook ids;
- ``<prefix>hook:<id>``: a hash, one field per :class:`~firehose.webhooks.hooks.Hook` attribute,
  each value JSON; plus ``lease``, the token of the tenure that last wrote the delivery state;
- ``<prefix>lease:<id>``, ``<prefix>lease-gen:<id>``: the hook's lease
  (:mod:`~firehose.webhooks.lease`).

One field per attribute, so that two nodes changing different things of one hook never undo
each other: a save writes only the fields that differ from what this node last read or wrote.
The fields fall in two kinds:

- registration (url, filter, secrets, format, active...): written by whichever node the API
  call reached, last writer wins per field;
- delivery state (:data:`DELIVERY_FIELDS`: cursor, failures, last_error...): written only by
  the hook's lease holder, *fenced*: a script writes them only if the lease key still holds the
  writer's token, the hook still exists and no redelivery was asked since the writer read it
  (``redeliveries`` did not grow), so a holder that lost its lease cannot move the cursor back
  or forth.  Another node changes them only through :meth:`RedisHookStore.move` (a redelivery,
  re-enabling), which the holder sees as a grown ``redeliveries`` or on its next reload.

Saves are coalesced as the file store's are: while one write runs, later states replace each
other and only the newest is written next.  Every Redis call runs on the store's own thread
(:class:`~firehose.webhooks.redis_io.ThreadRunner`), never on the reactor; :meth:`load` alone
blocks, once, before the server listens, as the file store's does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from firehose.webhooks.errors import WebhookError
from firehose.webhooks.hooks import Hook
from firehose.webhooks.lease import lease_key
from firehose.webhooks.redis_io import PREFIX, Runner

#: The hook attributes only the lease holder writes (fenced), or a :meth:`RedisHookStore.move`.
DELIVERY_FIELDS = ("cursor", "failures", "last_error", "delivered", "last_delivery", "redeliveries")
_HOOK_FIELDS = tuple(f.name for f in fields(Hook))

#: Refusals of a fenced write, as the script answers them.
STALE, REMOVED, MOVED = "stale", "removed", "moved"

_FENCED_WRITE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local stored = tonumber(redis.call('HGET', KEYS[1], 'redeliveries') or '0') or 0
if stored > tonumber(ARGV[2]) then return -2 end
redis.call('HSET', KEYS[1], 'lease', ARGV[1], unpack(ARGV, 3))
return 1
"""
_ANSWERS = {0: STALE, -1: REMOVED, -2: MOVED}

Records = dict[str, dict[str, Any]]
#: The encoded fields of each hook, as this node last read or wrote them.
_Encoded = dict[str, dict[str, str]]


def _encode(record: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(record[k], sort_keys=True) for k in _HOOK_FIELDS if k in record}


def _decode(hid: str, raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items() if k.decode() in _HOOK_FIELDS}


def _record(encoded: dict[str, str]) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in encoded.items()}


class RedisHookStore:
    """The :class:`~firehose.webhooks.store.HookStore` of nodes that share a Redis.

    :param client: a redis-py client; its calls run through ``runner``.
    :param runner: where the blocking calls run (one thread: writes keep their order).
    :param token: the lease token this node holds for a hook, or None
        (:meth:`LeaseManager.token <firehose.webhooks.lease.LeaseManager.token>`); the delivery
        state of a hook is written only with one.
    """

    log = Logger()

    def __init__(self, client: Any, runner: Runner, token: Callable[[str], str | None] | None = None,
                 prefix: str = PREFIX) -> None:
        self.client = client
        self.runner = runner
        self.prefix = prefix
        self.token: Callable[[str], str | None] = token or (lambda hid: None)
        #: Called with (hook, STALE | REMOVED | MOVED) when a fenced write is refused.
        self.refused: Callable[[str, str], None] = lambda hid, why: None
        self._fenced = client.register_script(_FENCED_WRITE)
        self._stored: _Encoded = {}
        self._writing = False
        self._next: Records | None = None
        self._moves: dict[str, dict[str, Any]] = {}
        self._idle: list[defer.Deferred[None]] = []
        #: Saves asked for so far: a refresh that saw a save asked meanwhile is stale.
        self._asked = 0

    def _key(self, hid: str) -> str:
        return f"{self.prefix}hook:{hid}"

    # Reading

    def _read_all(self) -> _Encoded:
        ids = sorted(i.decode() for i in self.client.smembers(self.prefix + "ids"))
        pipe = self.client.pipeline(transaction=False)
        for hid in ids:
            pipe.hgetall(self._key(hid))
        return {hid: _decode(hid, raw) for hid, raw in zip(ids, pipe.execute(), strict=True) if raw}

    def load(self) -> Records:
        """Every hook's record (once, at start-up, before the server listens: it blocks)."""
        try:
            encoded = self._read_all()
        except Exception as exc:  # redis.RedisError, but redis is not imported here
            raise WebhookError(f"cannot read webhook state from Redis: {exc}") from None
        self._stored = encoded
        try:
            return {hid: _record(e) for hid, e in encoded.items()}
        except ValueError as exc:
            raise WebhookError(f"webhook state in Redis is unreadable: {exc}") from None

    def refresh(self) -> defer.Deferred[Records | None]:
        """Every hook's record as Redis holds it now, read after this node's pending writes;
        None if a save was asked meanwhile (what was read may predate it: ask again later)."""
        asked = self._asked
        d: defer.Deferred[Any] = self._when_idle()
        d.addCallback(lambda _: self.runner.run(self._read_all))

        def read(encoded: _Encoded) -> Records | None:
            if asked != self._asked or self._writing:
                return None
            self._stored = encoded
            return {hid: _record(e) for hid, e in encoded.items()}

        return d.addCallback(read)

    def reload(self, hid: str) -> defer.Deferred[dict[str, Any] | None]:
        """Hook ``hid``'s record as Redis holds it now (after pending writes), None if removed:
        what a node reads when it acquires the hook's lease, to resume from the cursor the
        previous holder persisted."""
        d: defer.Deferred[Any] = self._when_idle()
        d.addCallback(lambda _: self.runner.run(self.client.hgetall, self._key(hid)))

        def read(raw: dict[bytes, bytes]) -> dict[str, Any] | None:
            if not raw:
                self._stored.pop(hid, None)
                return None
            encoded = self._stored[hid] = _decode(hid, raw)
            return _record(encoded)

        return d.addCallback(read)

    def stored_ids(self) -> set[str]:
        """The hooks this node last saw in Redis (read or written by it)."""
        return set(self._stored)

    # Writing

    def save(self, state: Records) -> defer.Deferred[None]:
        """Write what changed in ``state`` since this node last read or wrote it; fires once
        that is done (a refused fenced write is reported to :attr:`refused`, not as a failure)."""
        self._asked += 1
        self._next = state
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        if not self._writing:
            self._write_next()
        return d

    def move(self, hid: str, changes: dict[str, Any]) -> None:
        """Set delivery state of ``hid`` without the lease (an admin's redelivery or re-enable
        through the API of any node), with the next write; the holder sees it by the grown
        ``redeliveries`` (its fenced writes are then refused) or reads it when it acquires."""
        self._moves.setdefault(hid, {}).update(changes)

    def _when_idle(self) -> defer.Deferred[None]:
        if not self._writing and self._next is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        return d

    def _write_next(self) -> None:
        state, self._next = self._next, None
        moves, self._moves = self._moves, {}
        waiting, self._idle = self._idle, []
        self._writing = True
        plan = self._plan(state, moves)
        d = self.runner.run(self._execute, plan)

        def done(result: Any) -> None:
            self._writing = False
            if hasattr(result, "getErrorMessage"):
                self.log.error("cannot save webhook state to Redis: {e}", e=result.getErrorMessage())
            else:
                self._written(plan, result)
            if self._next is not None or self._moves:
                self._write_next()
            else:
                waiting.extend(self._idle)
                self._idle = []
            for w in waiting:
                w.callback(None)

        d.addBoth(done)

    def _plan(self, state: Records | None, moves: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """What to write: new hooks whole, removed ones deleted, changed registration fields,
        fenced delivery state of the hooks we hold, and the moves (``state`` None: moves only)."""
        new: dict[str, dict[str, str]] = {}
        plain: dict[str, dict[str, str]] = {}
        fenced: dict[str, tuple[str, dict[str, str]]] = {}
        for hid, record in (state or {}).items():
            encoded = _encode(record)
            stored = self._stored.get(hid)
            if stored is None:
                new[hid] = encoded
                continue
            changed = {k: v for k, v in encoded.items() if stored.get(k) != v}
            reg = {k: v for k, v in changed.items() if k not in DELIVERY_FIELDS}
            if reg:
                plain[hid] = reg
            if any(k in DELIVERY_FIELDS for k in changed):
                token = self.token(hid)
                if token is not None:
                    fenced[hid] = (token, {k: encoded[k] for k in DELIVERY_FIELDS if k in encoded})
        removed = [hid for hid in self._stored if hid not in state] if state is not None else []
        moved = {hid: _encode(c) for hid, c in moves.items() if hid not in removed}
        return {"new": new, "plain": plain, "fenced": fenced, "removed": removed, "moved": moved}

    def _execute(self, plan: dict[str, Any]) -> list[Any]:
        """The writes of a plan (in the store's thread); the fenced scripts' answers, in order."""
        pipe = self.client.pipeline(transaction=True)
        for hid, encoded in plan["new"].items():
            pipe.hset(self._key(hid), mapping=encoded)
            pipe.sadd(self.prefix + "ids", hid)
        for hid in plan["removed"]:
            pipe.delete(self._key(hid), lease_key(self.prefix, hid))
            pipe.srem(self.prefix + "ids", hid)
        for hid, encoded in plan["plain"].items():
            pipe.hset(self._key(hid), mapping=encoded)
        for hid, encoded in plan["moved"].items():
            pipe.hset(self._key(hid), mapping=encoded)
        pipe.execute()
        answers = []
        for hid, (token, encoded) in plan["fenced"].items():
            redeliveries = json.loads(encoded.get("redeliveries", "0"))
            flat = [x for kv in encoded.items() for x in kv]
            answers.append(self._fenced(keys=[self._key(hid), lease_key(self.prefix, hid)],
                                        args=[token, redeliveries, *flat]))
        return answers

    def _written(self, plan: dict[str, Any], answers: list[Any]) -> None:
        for hid, encoded in plan["new"].items():
            self._stored[hid] = dict(encoded)
        for hid in plan["removed"]:
            self._stored.pop(hid, None)
        for group in ("plain", "moved"):
            for hid, encoded in plan[group].items():
                if hid in self._stored:
                    self._stored[hid].update(encoded)
        for (hid, (_, encoded)), answer in zip(plan["fenced"].items(), answers, strict=True):
            if answer == 1:
                self._stored.setdefault(hid, {}).update(encoded)
            else:
                why = _ANSWERS.get(answer, STALE)
                self.log.warn("webhook {id}: delivery state not saved: {why}", id=hid, why=why)
                self.refused(hid, why)

    def close(self) -> defer.Deferred[None]:
        """Finish pending writes, then stop the store's thread (the client is the caller's)."""
        d = self._when_idle()
        d.addBoth(lambda _: self.runner.stop())
        return d
