"""``/api/webhooks``: register, list, show, change and remove hooks, read a hook's delivery
log and ask for a redelivery, for the admin token only.

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
    """``/api/webhooks`` (list, register), ``/api/webhooks/<id>`` (show, change, delete),
    ``/api/webhooks/<id>/deliveries`` (its last attempts, newest first) and
    ``/api/webhooks/<id>/redeliver`` (POST ``{"since": <cursor> | "earliest"}``).

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
            elif len(path) == 2 and path[1] in _ACTIONS:
                hook = self.dispatcher.get(path[0])
                if path[1] == "deliveries" and method == "GET":
                    log = self.dispatcher.delivery_log(hook.id)
                    return json_body(request, 200, {"hook": hook.id, "deliveries": log.newest_first()})
                if path[1] == "redeliver" and method == "POST":
                    return self._redeliver(request, hook)
            else:
                return error_body(request, 404, "not_found", "no such resource")
        except WebhookError as exc:
            status, code = _status(exc)
            return error_body(request, status, code, str(exc))
        allow = b"GET, POST" if not path else b"GET, PATCH, DELETE" if len(path) == 1 else _ACTIONS[path[1]]
        request.setHeader(b"allow", allow)
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
        unknown = set(body) - _CREATE_FIELDS
        if unknown:
            raise WebhookError(f"unknown fields {sorted(unknown)}: use {', '.join(sorted(_CREATE_FIELDS))}")
        hook_id = body.get("id")
        if hook_id is not None and (not isinstance(hook_id, str) or not _id_ok(hook_id)):
            raise WebhookError("'id' may hold 1-64 letters, digits, '.', '_' and '-'")
        try:
            hook = self.dispatcher.add(body.get("url"), body.get("filter"), body.get("secret"), body.get("since"),
                                       hook_id, body.get("previous_secrets"), body.get("format"))
        except CursorError as exc:
            return error_body(request, 400, "bad_cursor", str(exc))
        out = self.dispatcher.view(hook)
        out["secret"] = hook.secret  # shown once, at registration
        request.setHeader(b"location", f"/api/webhooks/{hook.id}".encode())
        return json_body(request, 201, out)

    def _change(self, request: Request, hook: Hook) -> bytes:
        body = self._json(request)
        if not body or set(body) - _CHANGE_FIELDS or not isinstance(body.get("active", True), bool):
            raise WebhookError('PATCH takes {"active": true|false} and/or "secret", "previous_secrets", "format"')
        if set(body) & {"secret", "previous_secrets", "format"}:
            self.dispatcher.change(hook.id, body.get("secret"), body.get("previous_secrets"), body.get("format"))
        if body.get("active") is True:
            self.dispatcher.enable(hook.id)
        elif body.get("active") is False:
            self.dispatcher.disable(hook.id)
        return json_body(request, 200, self.dispatcher.view(hook))

    def _redeliver(self, request: Request, hook: Hook) -> bytes:
        body = self._json(request)
        if set(body) != {"since"}:
            raise WebhookError('redeliver takes {"since": "<cursor>"} or {"since": "earliest"}')
        try:
            self.dispatcher.redeliver(hook.id, body["since"])
        except CursorError as exc:
            return error_body(request, 400, "bad_cursor", str(exc))
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

_CREATE_FIELDS = {"url", "filter", "secret", "previous_secrets", "format", "since", "id"}
_CHANGE_FIELDS = {"active", "secret", "previous_secrets", "format"}
#: The paths below a hook, and the methods each allows.
_ACTIONS = {"deliveries": b"GET", "redeliver": b"POST"}

_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _id_ok(text: str) -> bool:
    return _ID.fullmatch(text) is not None

