"""The webhook dispatcher: all hooks of one server, their registration, start, stop and state.

Each active hook gets a :class:`~firehose.webhooks.delivery.Delivery` (one hub subscription,
fed from the journal from the hook's stored cursor, so a restart resumes where delivery
stopped).  Hooks come from the API and from the ``[webhooks]`` table of the server's config
file; their state is kept by a :mod:`~firehose.webhooks.store`, their last attempts by a
:class:`~firehose.webhooks.log.DeliveryLog` each (in memory).

Across nodes (``--redis``) the store is a :class:`~firehose.webhooks.redis_store.RedisHookStore`
and a :class:`~firehose.webhooks.lease.LeaseManager` decides which node delivers each hook: a
node starts a hook's delivery only once it holds the hook's lease, after reading the cursor the
previous holder persisted, waits for each cursor to be persisted before the next batch, and
stops at once when it loses the lease.  Every node reads the store every ``poll_interval``
seconds, so hooks registered, changed or removed through another node's API are seen here.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from firehose.config import WebhookConfig
from firehose.cursor import EARLIEST, NOW, CursorError, parse_since
from firehose.hub import Hub
from firehose.signing import new_secret
from firehose.webhooks.agent import Resolve, checked_agent
from firehose.webhooks.agent import post as agent_post
from firehose.webhooks.delivery import Delivery, WebhookStats
from firehose.webhooks.errors import HookConflict, HookNotFound, WebhookError
from firehose.webhooks.hooks import (
    MAX_PREVIOUS_SECRETS,
    Hook,
    check_filter,
    check_format,
    check_previous_secrets,
    check_secret,
)
from firehose.webhooks.lease import LeaseManager
from firehose.webhooks.log import LOG_SIZE, DeliveryLog
from firehose.webhooks.redis_store import DELIVERY_FIELDS, MOVED, REMOVED, RedisHookStore
from firehose.webhooks.store import HookStore, JSONFileHookStore, MemoryHookStore
from firehose.webhooks.urls import check_url, parse_networks


class WebhookDispatcher:
    """All hooks of one server: registration, delivery, persistence.

    :param agent: the ``IAgent`` that POSTs (``treq.testing.RequestTraversalAgent`` in tests);
        default an ``Agent`` with its own pool whose connections go only to checked addresses
        (:func:`~firehose.webhooks.agent.checked_agent`).
    :param clock: ``IReactorTime`` for retries, timeouts and timestamps (the reactor, unless
        ``agent`` is given).
    :param rand: a function returning a float in [0, 1) for the retry jitter (tests pass
        ``random.Random(0).random``); default :func:`random.random`.
    :param resolve: host name -> addresses for the default agent (tests).
    :param log_size: attempts kept in each hook's delivery log.
    :param leases: with a :class:`RedisHookStore`, the node's leases: hooks are shared with
        other nodes and this one delivers only those it holds (None: one node, every hook).
    :param poll_interval: how often (seconds) a node sharing hooks reads the store for what
        other nodes changed.
    """

    log = Logger()

    def __init__(
        self,
        hub: Hub,
        config: WebhookConfig,
        store: HookStore,
        clock: Any,
        agent: Any = None,
        rand: Callable[[], float] | None = None,
        resolve: Resolve | None = None,
        log_size: int = LOG_SIZE,
        leases: LeaseManager | None = None,
        poll_interval: float = 2.0,
    ) -> None:
        self.hub = hub
        self.config = config
        self.store = store
        self.clock = clock
        self.rand = rand
        self.allow = parse_networks(config.allow_networks)
        self._pool: HTTPConnectionPool | None = None
        if agent is None:
            agent, self._pool = checked_agent(clock, self.allow, config.timeout, resolve)
        self.agent = agent
        self.hooks: dict[str, Hook] = {}
        self._deliveries: dict[str, Delivery] = {}
        self._logs: dict[str, DeliveryLog] = {}
        self._log_size = log_size
        #: Counters for /metrics, kept by the deliveries.
        self.stats = WebhookStats()
        self.loaded = False
        self.running = False
        self.leases = leases
        self.poll_interval = poll_interval
        self._poll: LoopingCall | None = None
        if leases is not None:
            if not isinstance(store, RedisHookStore):
                raise TypeError("leases need a RedisHookStore: the hooks must be shared")
            self.shared: RedisHookStore | None = store
            store.token = leases.token
            store.refused = self._refused
        else:
            self.shared = None

    # Lifecycle

    def load(self) -> None:
        """Read stored hooks and apply the configured ones (before the server listens);
        raises :class:`WebhookError` for an unreadable state file."""
        now = self.clock.seconds()
        for hid, raw in self.store.load().items():
            try:
                self.hooks[hid] = Hook(**raw)
            except TypeError as exc:
                raise WebhookError(f"webhook state for {hid!r} is unreadable: {exc}") from None
        for name, spec in self.config.hooks.items():
            try:
                check_url(spec["url"], self.allow)
            except WebhookError as exc:
                raise WebhookError(f"[webhooks.hooks.{name}]: {exc}") from None
            flt = check_filter(spec.get("filter"))
            hook = self.hooks.get(name)
            if hook is None:
                hook = self.hooks[name] = Hook(name, spec["url"], flt, str(spec["secret"]), self.hub.head_cursor,
                                               source="config", created=now)
            else:
                hook.url, hook.filter, hook.secret, hook.source = spec["url"], flt, str(spec["secret"]), "config"
            hook.previous_secrets = [str(p) for p in spec.get("previous_secrets", [])]
            hook.format = check_format(spec.get("format"))
        for hid in [h.id for h in self.hooks.values() if h.source == "config" and h.id not in self.config.hooks]:
            del self.hooks[hid]  # removed from the config file
        self.loaded = True

    def start(self) -> None:
        """Start delivering to every active hook."""
        if not self.loaded:
            self.load()
        self.running = True
        if self.leases is None:
            for hook in self.hooks.values():
                if hook.active:
                    self._start(hook)
        self.save()
        if self.leases is not None:
            self.leases.start(self._wanted, self._acquired, self._lost)
            poll = self._poll = LoopingCall(self._refresh)
            poll.clock = self.clock
            poll.start(self.poll_interval, now=False)

    def stop(self) -> defer.Deferred[None]:
        """Stop delivering (in-flight POSTs are abandoned and resent after a restart), save;
        across nodes, then release the leases, so another node takes the hooks over at once."""
        was_running = self.running
        self._stop_delivering()
        # Never save a state that was not loaded: it would wipe the stored hooks.
        d = self.store.save(self._state()) if was_running else defer.succeed(None)
        leases = self.leases
        if leases is not None:
            d.addCallback(lambda _: leases.stop(release=True))
        d.addCallback(lambda _: self.store.close())
        pool = self._pool
        if pool is not None:
            d.addCallback(lambda _: pool.closeCachedConnections())
        return d

    def halt(self) -> None:
        """Stop at once as a killed process would: no save, no lease released (its leases
        expire and other nodes take its hooks over).  For takeover drills and tests."""
        self._stop_delivering()
        if self.leases is not None:
            self.leases.stop(release=False)

    def _stop_delivering(self) -> None:
        """What :meth:`stop` and :meth:`halt` share: not running, no poll, no delivery."""
        self.running = False
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        for delivery in self._deliveries.values():
            delivery.stop()
        self._deliveries.clear()

    def _start(self, hook: Hook) -> None:
        """Start delivering ``hook`` (across nodes: only while this node holds its lease; the
        lease loop starts it otherwise, once acquired)."""
        leases = self.leases
        if leases is not None and not leases.holds(hook.id):
            if self.running:
                # Try to acquire it once its registration is written, not at the next round.
                self.save().addCallback(lambda _: leases.tick() if self.running else None)
            return
        old = self._deliveries.pop(hook.id, None)
        if old is not None:
            old.stop()
        delivery = self._deliveries[hook.id] = Delivery(self, hook)
        delivery.start()

    def _state(self) -> dict[str, dict[str, Any]]:
        return {h.id: asdict(h) for h in self.hooks.values()}

    def save(self) -> defer.Deferred[None]:
        """Persist every hook's state (a delivery calls this once its cursor moved); fires
        once it is stored (across nodes a delivery waits for that before its next batch)."""
        if self.loaded:
            return self.store.save(self._state())
        return defer.succeed(None)

    # Across nodes: leases and what other nodes changed

    def _wanted(self) -> list[str]:
        """The hooks this node would deliver if it held their leases: the active ones already
        in the store (a hook just added is wanted once its registration is written)."""
        stored = self.shared.stored_ids() if self.shared is not None else set()
        return [h.id for h in self.hooks.values() if h.active and h.id in stored]

    def _acquired(self, hid: str, token: str) -> None:
        """This node took ``hid``'s lease: read the state the previous holder persisted (its
        cursor), then start delivering from there."""
        assert self.shared is not None and self.leases is not None
        leases = self.leases

        def resume(record: dict[str, Any] | None) -> None:
            hook = self.hooks.get(hid)
            if leases.token(hid) != token or not self.running:
                return  # lost again, or stopping, while reading
            if record is None or hook is None:
                self.hooks.pop(hid, None)
                leases.release(hid)
                return
            _apply(hook, record, DELIVERY_FIELDS)
            _apply(hook, record, _REGISTRATION_FIELDS)
            if hook.active:
                self._start(hook)
            else:
                leases.release(hid)

        def failed(f: Any) -> None:
            self.log.failure("webhook {id}: cannot read its state", f, id=hid)
            leases.forget(hid)

        self.shared.reload(hid).addCallbacks(resume, failed)

    def _lost(self, hid: str) -> None:
        """This node no longer holds ``hid``'s lease: stop delivering it at once (the batch in
        flight is abandoned; the next holder sends it again from the persisted cursor)."""
        delivery = self._deliveries.pop(hid, None)
        if delivery is not None:
            delivery.stop()

    def _refused(self, hid: str, why: str) -> None:
        """A fenced write of ``hid``'s delivery state was refused: another node holds the
        lease (stop), the hook was removed (drop it), or a redelivery was asked through
        another node (read the moved cursor and start again from it)."""
        assert self.leases is not None
        if why == MOVED and self.leases.holds(hid):
            token = self.leases.token(hid)
            self._lost(hid)
            if token is not None:
                self._acquired(hid, token)
            return
        if why == REMOVED:
            self._lost(hid)
            self.hooks.pop(hid, None)
            self.leases.release(hid)
            return
        self.leases.forget(hid)  # reports the loss: _lost stops the delivery

    def _refresh(self) -> defer.Deferred[None]:
        """Read the store and follow what other nodes changed (never fails: the poll goes on)."""
        assert self.shared is not None
        d: defer.Deferred[Any] = self.shared.refresh()
        d.addCallback(self._follow)
        d.addErrback(lambda f: self.log.warn("cannot read webhook state from Redis: {e}", e=f.getErrorMessage()))
        return d

    def _follow(self, records: dict[str, dict[str, Any]] | None) -> None:
        """Make this node's hooks what the store holds: every hook in it (or the next save
        would delete those unknown here), registration fields always, delivery state where
        another node delivers."""
        if records is None or not self.running:
            return
        assert self.leases is not None
        for hid, record in records.items():
            hook = self.hooks.get(hid)
            if hook is None:
                try:
                    self.hooks[hid] = Hook(**record)
                except TypeError as exc:
                    self.log.warn("webhook state for {id} is unreadable: {e}", id=hid, e=str(exc))
                continue
            was_active = hook.active
            _apply(hook, record, _REGISTRATION_FIELDS)
            if not self.leases.holds(hid):
                _apply(hook, record, DELIVERY_FIELDS)
            elif int(record.get("redeliveries", 0)) > hook.redeliveries:
                self._refused(hid, MOVED)  # a redelivery asked through another node
            if was_active and not hook.active:
                self._lost(hid)
                self.leases.release(hid)
        for hid in [h for h in self.hooks if h not in records]:
            self._lost(hid)
            del self.hooks[hid]
            self._logs.pop(hid, None)
            self.leases.release(hid)

    def _disable(self, hook: Hook, reason: str) -> None:
        self.log.warn("webhook {id} disabled: {reason}", id=hook.id, reason=reason)
        hook.active = False
        hook.disabled_reason = reason
        self._lost(hook.id)
        d = self.save()
        leases = self.leases
        if leases is not None:
            d.addCallback(lambda _: leases.release(hook.id))

    # HTTP

    def post(self, url: str, body: bytes, headers: dict[bytes, list[bytes]]) -> defer.Deferred[int]:
        """POST with this dispatcher's agent, bounded by ``config.timeout``: see
        :func:`firehose.webhooks.agent.post` (fires with the status, fails with a
        :class:`DeliveryError`, never raises)."""
        return agent_post(self.agent, self.clock, self.config.timeout, url, body, headers)

    # Registration (the API)

    def add(
        self,
        url: Any,
        flt: Any = None,
        secret: str | None = None,
        since: str | None = None,
        hook_id: str | None = None,
        previous_secrets: list[str] | None = None,
        fmt: str | None = None,
    ) -> Hook:
        """Register a hook; it receives events after ``since`` (default: from now on).

        Without a ``secret`` one is made in Standard Webhooks form (``whsec_<base64>``), which
        that scheme's libraries take as it is."""
        check_url(url, self.allow)
        normal = check_filter(flt)
        if secret is not None:
            check_secret(secret)
        previous = check_previous_secrets(previous_secrets or [])
        body_format = check_format(fmt)
        start = parse_since(since)  # raises CursorError for anything but now, earliest, a cursor
        if start == NOW:
            cursor: str | None = self.hub.head_cursor
        elif start == EARLIEST:
            cursor = EARLIEST
        else:
            self.hub.resolve(since)  # raises CursorError for a cursor ahead of the stream
            cursor = str(start)
        hid = hook_id or secrets.token_hex(6)
        if hid in self.hooks:
            raise HookConflict(f"a webhook {hid!r} already exists")
        hook = Hook(hid, str(url), normal, secret or new_secret(), cursor, created=self.clock.seconds(),
                    previous_secrets=previous, format=body_format)
        self.hooks[hid] = hook
        if self.running:
            self._start(hook)
        self.save()
        return hook

    def get(self, hid: str) -> Hook:
        """The hook ``hid``; raise :class:`HookNotFound` if there is none."""
        hook = self.hooks.get(hid)
        if hook is None:
            raise HookNotFound(f"no webhook {hid!r}")
        return hook

    def remove(self, hid: str) -> None:
        """Unregister a hook made through the API (a config-file hook is removed there)."""
        hook = self.get(hid)
        if hook.source == "config":
            raise HookConflict(f"webhook {hid!r} comes from the config file; remove it there")
        delivery = self._deliveries.pop(hid, None)
        if delivery is not None:
            delivery.stop()
        del self.hooks[hid]
        self._logs.pop(hid, None)
        if self.leases is not None:
            self.leases.release(hid)
        self.save()

    def change(
        self,
        hid: str,
        secret: str | None = None,
        previous_secrets: list[str] | None = None,
        fmt: str | None = None,
    ) -> Hook:
        """Change a hook's secrets or body format (a config-file hook is changed there).

        A new ``secret`` signs from the next POST on, and the one it replaces keeps signing
        (first of ``previous_secrets``) unless ``previous_secrets`` is given too: a receiver
        that still knows only the old one verifies until it has the new one, then
        ``previous_secrets=[]`` ends the rotation."""
        hook = self.get(hid)
        if hook.source == "config":
            raise HookConflict(f"webhook {hid!r} comes from the config file; change it there")
        new = check_secret(secret) if secret is not None else None
        previous = check_previous_secrets(previous_secrets) if previous_secrets is not None else None
        body_format = check_format(fmt) if fmt is not None else None
        if new is not None and new != hook.secret:
            if previous is None:
                previous = [hook.secret, *[s for s in hook.previous_secrets if s != new]][:MAX_PREVIOUS_SECRETS]
            hook.secret = new
        if previous is not None:
            hook.previous_secrets = [s for s in previous if s != hook.secret]
        if body_format is not None:
            hook.format = body_format
        self.save()
        return hook

    def redeliver(self, hid: str, since: Any) -> Hook:
        """Deliver again every event after ``since`` (a cursor, or ``earliest``), in order, for
        a receiver that lost data: the hook's cursor moves back there (and is saved) and its
        delivery restarts from it; a batch in flight is abandoned (its events come again).

        :raises CursorError: ``since`` is malformed, ``now``, ahead of the stream, or ahead of
            the hook's own cursor (that would skip events, not send them again).
        """
        hook = self.get(hid)
        if not isinstance(since, str) or parse_since(since) == NOW:
            raise CursorError("'since' must be a cursor or 'earliest'")
        offset, gap = self.hub.resolve(since)  # raises CursorError for a cursor ahead of the stream
        if gap is None and hook.cursor is not None and since != EARLIEST:
            try:
                mine, mine_gap = self.hub.resolve(hook.cursor)
            except CursorError:
                mine, mine_gap = offset, None
            if mine_gap is None and offset > mine:
                raise CursorError(f"cursor {since!r} is ahead of the hook's cursor {hook.cursor!r}: "
                                  "redelivery moves back, it never skips events")
        hook.cursor = since if since == EARLIEST else str(parse_since(since))
        hook.redeliveries += 1
        if self.shared is not None:
            # Written without the lease: the holder, wherever it is, sees redeliveries grow.
            self.shared.move(hid, {"cursor": hook.cursor, "redeliveries": hook.redeliveries})
        delivery = self._deliveries.pop(hid, None)
        if delivery is not None:
            delivery.stop()
            if self.running and hook.active:
                self._start(hook)
        self.save()
        return hook

    def delivery_log(self, hid: str) -> DeliveryLog:
        """The log of hook ``hid``'s last attempts (made on first use)."""
        log = self._logs.get(hid)
        if log is None:
            log = self._logs[hid] = DeliveryLog(self._log_size)
        return log

    def enable(self, hid: str) -> Hook:
        """Re-enable a disabled hook: delivery resumes at its stored cursor."""
        hook = self.get(hid)
        if not hook.active:
            hook.active = True
            hook.failures = 0
            hook.disabled_reason = None
            if self.shared is not None:
                self.shared.move(hid, {"failures": 0})
            if self.running:
                self._start(hook)
            self.save()
        return hook

    def disable(self, hid: str, reason: str = "disabled through the API") -> Hook:
        """Stop delivering to a hook, keeping its cursor; ``reason`` is shown by the API."""
        hook = self.get(hid)
        if hook.active:
            self._disable(hook, reason)
        return hook

    def states(self) -> dict[str, int]:
        """How many hooks are ``active`` and how many ``disabled`` (for /metrics)."""
        active = sum(1 for h in self.hooks.values() if h.active)
        return {"active": active, "disabled": len(self.hooks) - active}

    def view(self, hook: Hook) -> dict[str, Any]:
        """What the API shows of a hook: its record (no secret) and its delivery's state."""
        out = hook.view()
        delivery = self._deliveries.get(hook.id)
        out["queued"] = len(delivery.buffer) if delivery is not None else 0
        out["retrying"] = bool(delivery is not None and delivery.timer is not None)
        return out


#: The fields of a hook's registration: what any node's API may change.
_REGISTRATION_FIELDS = tuple(f for f in Hook.__dataclass_fields__ if f not in DELIVERY_FIELDS)


def _apply(hook: Hook, record: dict[str, Any], names: tuple[str, ...]) -> None:
    """Set ``hook``'s attributes ``names`` from a stored ``record`` (those it has)."""
    for name in names:
        if name in record:
            setattr(hook, name, record[name])


def make_dispatcher(hub: Hub, config: WebhookConfig, db: str, clock: Any, redis_url: str | None = None,
                    lease_ttl: float = 10.0, poll_interval: float = 2.0) -> WebhookDispatcher:
    """The dispatcher a server runs: state in ``config.state_path`` or next to the journal;
    with ``redis_url``, in that Redis, shared with the other nodes, each hook delivered by the
    node holding its lease (``lease_ttl`` seconds: how long a dead node's hooks wait)."""
    if redis_url is not None:
        from firehose.webhooks.redis_io import ThreadRunner, connect

        client = connect(redis_url, timeout=lease_ttl / 3)
        leases = LeaseManager(client, clock, ThreadRunner(clock, "firehose-webhook-leases"), ttl=lease_ttl)
        shared = RedisHookStore(client, ThreadRunner(clock, "firehose-webhook-state"))
        return WebhookDispatcher(hub, config, shared, clock, leases=leases, poll_interval=poll_interval)
    path = config.state_path or (None if db == ":memory:" else db + ".webhooks.json")
    store: HookStore = JSONFileHookStore(path, clock) if path else MemoryHookStore()
    return WebhookDispatcher(hub, config, store, clock)
