"""``/api/webhooks``: register, list, show, change and remove hooks, for the admin token only.

A thin resource over :class:`~firehose.webhooks.dispatcher.WebhookDispatcher`: it reads the
request, calls the dispatcher, and maps the type of a refusal to its status
(:class:`~firehose.webhooks.errors.HookNotFound` 404, ``HookConflict`` 409, any other
:class:`~firehose.webhooks.errors.WebhookError` 400).
"""

from __future__ import annotations

import hmac
import re
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from firehose._http import bearer_token, error_body, json_body
from firehose.cursor import CursorError
from firehose.event import loads
from firehose.webhooks.dispatcher import WebhookDispatcher
from firehose.webhooks.errors import HookConflict, HookNotFound, WebhookError
from firehose.webhooks.hooks import Hook


class WebhookAPI(Resource):
    """``/api/webhooks`` (list, register) and ``/api/webhooks/<id>`` (show, change, delete).

    Every call needs ``Authorization: Bearer <admin token>``; the token is compared in constant
    time.  Without a configured admin token the API answers 403 to everyone.
    """

    isLeaf = True

    def __init__(self, dispatcher: WebhookDispatcher, admin_token: str | None) -> None:
        super().__init__()
        self.dispatcher = dispatcher
        self.admin_token = admin_token

    def render(self, request: Request) -> bytes:
        if not self.admin_token:
            return error_body(request, 403, "no_admin_token",
                              "the webhook API is off: start the server with --webhook-admin-token")
        token = bearer_token(request)
        if token is None or not hmac.compare_digest(token.encode(), self.admin_token.encode()):
            request.setHeader(b"www-authenticate", b'Bearer realm="firehose webhooks"')
            return error_body(request, 401, "unauthorized", "send Authorization: Bearer <admin token>")
        path = [p.decode("utf-8", "replace") for p in request.postpath or () if p]
        method = (request.method or b"GET").decode()
        try:
            if not path:
                if method == "GET":
                    hooks = sorted(self.dispatcher.hooks.values(), key=lambda h: (h.created, h.id))
                    return json_body(request, 200, {"webhooks": [self.dispatcher.view(h) for h in hooks]})
                if method == "POST":
                    return self._create(request)
            elif len(path) == 1:
                hook = self.dispatcher.get(path[0])
                if method == "GET":
                    return json_body(request, 200, self.dispatcher.view(hook))
                if method == "DELETE":
                    self.dispatcher.remove(hook.id)
                    return json_body(request, 200, {"deleted": hook.id})
                if method == "PATCH":
                    return self._change(request, hook)
            else:
                return error_body(request, 404, "not_found", "no such resource")
        except WebhookError as exc:
            status, code = _status(exc)
            return error_body(request, status, code, str(exc))
        request.setHeader(b"allow", b"GET, POST" if not path else b"GET, PATCH, DELETE")
        return error_body(request, 405, "method_not_allowed", f"{method} is not allowed here")

    def _json(self, request: Request) -> dict[str, Any]:
        try:
            assert request.content is not None
            body = loads(request.content.read() or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise WebhookError("the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise WebhookError("the body must be a JSON object")
        return body

    def _create(self, request: Request) -> bytes:
        body = self._json(request)
        unknown = set(body) - {"url", "filter", "secret", "since", "id"}
        if unknown:
            raise WebhookError(f"unknown fields {sorted(unknown)}: use url, filter, secret, since, id")
        secret = body.get("secret")
        if secret is not None and (not isinstance(secret, str) or len(secret) < 16):
            raise WebhookError("'secret' must be a string of at least 16 characters")
        hook_id = body.get("id")
        if hook_id is not None and (not isinstance(hook_id, str) or not _id_ok(hook_id)):
            raise WebhookError("'id' may hold 1-64 letters, digits, '.', '_' and '-'")
        try:
            hook = self.dispatcher.add(body.get("url"), body.get("filter"), secret, body.get("since"), hook_id)
        except CursorError as exc:
            return error_body(request, 400, "bad_cursor", str(exc))
        out = self.dispatcher.view(hook)
        out["secret"] = hook.secret  # shown once, at registration
        request.setHeader(b"location", f"/api/webhooks/{hook.id}".encode())
        return json_body(request, 201, out)

    def _change(self, request: Request, hook: Hook) -> bytes:
        body = self._json(request)
        if set(body) != {"active"} or not isinstance(body["active"], bool):
            raise WebhookError('PATCH takes {"active": true} or {"active": false}')
        if body["active"]:
            self.dispatcher.enable(hook.id)
        else:
            self.dispatcher.disable(hook.id)
        return json_body(request, 200, self.dispatcher.view(hook))


def _status(exc: WebhookError) -> tuple[int, str]:
    """The HTTP status and error code of a refusal, chosen by its type (never by its text)."""
    for kind, status, code in _STATUSES:
        if isinstance(exc, kind):
            return status, code
    return 400, "bad_webhook"


_STATUSES: tuple[tuple[type[WebhookError], int, str], ...] = (
    (HookNotFound, 404, "not_found"),
    (HookConflict, 409, "bad_webhook"),
)

_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _id_ok(text: str) -> bool:
    return _ID.fullmatch(text) is not None

