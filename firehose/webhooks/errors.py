"""What can go wrong with a webhook, as types: the API answers by type, never by a message's text.

Every error's message is a sentence for the person who registered the hook (it is shown as the
``message`` of an API error, or stops the server from starting for a config-file hook).
"""

from __future__ import annotations


class WebhookError(ValueError):
    """A hook definition or request that cannot be used (HTTP 400); the message says why."""


class HookNotFound(WebhookError):
    """No hook has this id (HTTP 404)."""


class HookConflict(WebhookError):
    """The request contradicts a hook that exists (HTTP 409): its id is taken, or it comes from
    the config file and can only be changed there."""
