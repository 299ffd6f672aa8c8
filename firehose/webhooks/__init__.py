"""Webhooks: the server POSTs matching events, in batches, signed, to registered callback URLs.

Each hook is an ordinary hub subscription (transport ``webhook``) fed from the journal, exactly
like a long-poll client: it starts from the hook's stored cursor, so a restart resumes delivery
where it stopped, and a hook that cannot keep up is ended as ``slow`` by the hub and simply
catches up from the journal later.  A slow or dead receiver therefore costs bounded memory and
never delays any other subscriber.

Delivery, per hook: one batch in flight at a time (order is kept); a batch is retried with
exponential backoff until the receiver answers 2xx; the cursor advances (and is persisted)
only after that answer - at-least-once delivery, receivers dedupe by event ``id``.  After
``max_failures`` consecutive failures (or a ``410 Gone``) the hook is disabled and the reason
is shown by the API; ``PATCH {"active": true}`` re-enables it from where it stopped.

Signature: ``X-Firehose-Signature: sha256=<hex HMAC-SHA256 of the raw body with the hook's
secret>``; ``X-Firehose-Timestamp`` repeats the body's ``sent_at`` (which the signature covers),
so receivers can refuse stale replays.  Beside it, the Standard Webhooks headers
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), signed by every active secret
of the hook, so receivers verify with that scheme's libraries and secrets rotate without
downtime.  See docs/client.md.

The body is the hook's ``format``: the firehose batch, or CloudEvents (a structured batch, or
binary mode, one event per POST).  Each hook's last attempts are kept in a bounded in-memory
log (``GET /api/webhooks/<id>/deliveries``), and ``POST /api/webhooks/<id>/redeliver`` moves a
hook's cursor back for a receiver that lost data.

Hooks come from ``POST /api/webhooks`` (``Authorization: Bearer <admin token>``) or from the
``[webhooks]`` table of the server's config file.  Their state (cursor, failures) lives in a
small JSON file next to the journal, written atomically in a thread, never on the reactor; with
``--redis``, in Redis instead (``redis_store``), and each hook is delivered by the one node that
holds its lease (``lease``), so another node takes it over when that node dies.

The package, one job per module:

- :mod:`~firehose.webhooks.errors`: what can go wrong, as types (the API maps them to statuses);
- :mod:`~firehose.webhooks.urls`: the URL parser and the address policy (pure);
- :mod:`~firehose.webhooks.hooks`: a hook's persisted record and the checks of its filter,
  secrets and format (pure);
- :mod:`~firehose.webhooks.bodies`: what a POST holds, by the hook's format (pure);
- :mod:`~firehose.webhooks.log`: a hook's bounded log of delivery attempts (pure);
- :mod:`~firehose.webhooks.store`: where hook state is kept (memory, an atomic JSON file);
- :mod:`~firehose.webhooks.agent`: the HTTP POST, connecting only to checked addresses;
- :mod:`~firehose.webhooks.delivery`: one hook's subscription, batches and retries;
- :mod:`~firehose.webhooks.dispatcher`: all hooks of a server, registration, start and stop;
- :mod:`~firehose.webhooks.api`: the ``/api/webhooks`` resource.

Signing is :mod:`firehose.signing` and the settings are :class:`firehose.config.WebhookConfig`;
both are re-exported here under their old names.  Names are loaded when first used, so that
importing the pure parts (``firehose.webhooks.urls``, ``firehose.webhooks.verify``) never
loads Twisted.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from firehose.config import ADMIN_TOKEN_ENV, WebhookConfig, apply_config_table
    from firehose.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify, verify_standard
    from firehose.webhooks.agent import (
        ANSWER_LIMIT,
        CheckedEndpointFactory,
        DeliveryError,
        checked_agent,
        describe_failure,
        resolver,
    )
    from firehose.webhooks.api import WebhookAPI
    from firehose.webhooks.delivery import WebhookStats
    from firehose.webhooks.dispatcher import WebhookDispatcher, make_dispatcher
    from firehose.webhooks.errors import HookConflict, HookNotFound, WebhookError
    from firehose.webhooks.hooks import Hook, check_filter
    from firehose.webhooks.store import HookStore, JSONFileHookStore, MemoryHookStore, write_json_atomically
    from firehose.webhooks.urls import (
        AddressNotAllowed,
        IPAddress,
        IPNetwork,
        Target,
        check_address,
        check_url,
        parse_networks,
        parse_url,
        refused_kind,
    )

#: Where each public name lives.
_HOMES = {
    "firehose.config": ("ADMIN_TOKEN_ENV", "WebhookConfig", "apply_config_table"),
    "firehose.signing": ("SIGNATURE_HEADER", "TIMESTAMP_HEADER", "sign", "verify", "verify_standard"),
    "firehose.webhooks.agent": ("ANSWER_LIMIT", "CheckedEndpointFactory", "DeliveryError", "checked_agent",
                                "describe_failure", "resolver"),
    "firehose.webhooks.api": ("WebhookAPI",),
    "firehose.webhooks.delivery": ("WebhookStats",),
    "firehose.webhooks.dispatcher": ("WebhookDispatcher", "make_dispatcher"),
    "firehose.webhooks.errors": ("HookConflict", "HookNotFound", "WebhookError"),
    "firehose.webhooks.hooks": ("Hook", "check_filter"),
    "firehose.webhooks.store": ("HookStore", "JSONFileHookStore", "MemoryHookStore", "write_json_atomically"),
    "firehose.webhooks.urls": ("AddressNotAllowed", "IPAddress", "IPNetwork", "Target", "check_address",
                               "check_url", "parse_networks", "parse_url", "refused_kind"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "ADMIN_TOKEN_ENV",
    "ANSWER_LIMIT",
    "AddressNotAllowed",
    "CheckedEndpointFactory",
    "DeliveryError",
    "Hook",
    "HookConflict",
    "HookNotFound",
    "HookStore",
    "IPAddress",
    "IPNetwork",
    "JSONFileHookStore",
    "MemoryHookStore",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Target",
    "WebhookAPI",
    "WebhookConfig",
    "WebhookDispatcher",
    "WebhookError",
    "WebhookStats",
    "apply_config_table",
    "check_address",
    "check_filter",
    "check_url",
    "checked_agent",
    "describe_failure",
    "make_dispatcher",
    "parse_networks",
    "parse_url",
    "refused_kind",
    "resolver",
    "sign",
    "verify",
    "verify_standard",
    "write_json_atomically",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562), and keep the name here."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
