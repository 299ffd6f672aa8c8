"""The webhook dispatcher: all hooks of one server, their registration, start, stop and state.

Each active hook gets a :class:`~firehose.webhooks.delivery.Delivery` (one hub subscription,
fed from the journal from the hook's stored cursor, so a restart resumes where delivery
stopped).  Hooks come from the API and from the ``[webhooks]`` table of the server's config
file; their state is kept by a :mod:`~firehose.webhooks.store`, their last attempts by a
:class:`~firehose.webhooks.log.DeliveryLog` each (in memory).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from twisted.internet import defer
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
from firehose.webhooks.log import LOG_SIZE, DeliveryLog
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
        for hook in self.hooks.values():
            if hook.active:
                self._start(hook)
        self.save()

    def stop(self) -> defer.Deferred[None]:
        """Stop delivering (in-flight POSTs are abandoned and resent after a restart), save."""
        was_running, self.running = self.running, False
        for delivery in self._deliveries.values():
            delivery.stop()
        self._deliveries.clear()
        # Never save a state that was not loaded: it would wipe the stored hooks.
        d = self.store.save(self._state()) if was_running else defer.succeed(None)
        d.addCallback(lambda _: self.store.close())
        pool = self._pool
        if pool is not None:
            d.addCallback(lambda _: pool.closeCachedConnections())
        return d

    def _start(self, hook: Hook) -> None:
        delivery = self._deliveries[hook.id] = Delivery(self, hook)
        delivery.start()

    def _state(self) -> dict[str, dict[str, Any]]:
        return {h.id: asdict(h) for h in self.hooks.values()}

    def save(self) -> None:
        """Persist every hook's state (a delivery calls this once its cursor moved)."""
        if self.loaded:
            self.store.save(self._state())

    def _disable(self, hook: Hook, reason: str) -> None:
        self.log.warn("webhook {id} disabled: {reason}", id=hook.id, reason=reason)
        hook.active = False
        hook.disabled_reason = reason
        delivery = self._deliveries.pop(hook.id, None)
        if delivery is not None:
            delivery.stop()
        self.save()

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


def make_dispatcher(hub: Hub, config: WebhookConfig, db: str, clock: Any) -> WebhookDispatcher:
    """The dispatcher a server runs: state in ``config.state_path`` or next to the journal."""
    path = config.state_path or (None if db == ":memory:" else db + ".webhooks.json")
    store: HookStore = JSONFileHookStore(path, clock) if path else MemoryHookStore()
    return WebhookDispatcher(hub, config, store, clock)
