"""Small helpers shared by the HTTP resources: JSON answers, errors, CORS, query arguments."""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from firehose.cursor import CursorError
from firehose.event import dumps
from firehose.filters import FilterError

CORS_HEADERS = {
    b"access-control-allow-origin": b"*",
    b"access-control-allow-methods": b"GET, OPTIONS",
    b"access-control-allow-headers": b"Last-Event-ID, Content-Type, Authorization",
    b"access-control-expose-headers": b"Content-Type",
    b"access-control-max-age": b"86400",
}


def allow_cors(request: Request) -> None:
    """Let pages on any origin read this answer (subscriptions and queries are public reads)."""
    for name, value in CORS_HEADERS.items():
        request.setHeader(name, value)


def json_body(request: Request, code: int, obj: Any) -> bytes:
    """Set the status and content type; return the encoded body for ``render_*`` to return."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return dumps(obj) + b"\n"


def error_body(request: Request, code: int, error: str, message: str) -> bytes:
    """A 4xx/5xx answer: ``{"error": "<code>", "message": "<what is wrong>"}``."""
    return json_body(request, code, {"error": error, "message": message})


def bad_argument(request: Request, exc: ValueError) -> bytes:
    """The 400 for a request argument that cannot be used, its code naming the kind."""
    if isinstance(exc, FilterError):
        code = "bad_filter"
    elif isinstance(exc, CursorError):
        code = "bad_cursor"
    else:
        code = "bad_request"
    return error_body(request, 400, code, str(exc))


class ReadResource(Resource):
    """A public read endpoint: any origin may use it, preflight included."""

    isLeaf = True

    def render_OPTIONS(self, request: Request) -> bytes:
        allow_cors(request)
        return b""


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``."""
    header = (request.getHeader(b"authorization") or b"").decode("latin-1").strip()
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def query_args(request: Request) -> dict[str, list[str]]:
    """The query string decoded as UTF-8 (undecodable bytes become U+FFFD, never a crash)."""
    return {
        k.decode("utf-8", "replace"): [v.decode("utf-8", "replace") for v in vs]
        for k, vs in (request.args or {}).items()
    }


def single(args: dict[str, list[str]], name: str) -> str | None:
    """The one value of an argument; a repeated one is an error."""
    values = args.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ValueError(f"{name!r} given more than once")
    return values[0]


def number_arg(
    args: dict[str, list[str]], name: str, default: float, low: float, high: float
) -> float:
    """A numeric argument within ``[low, high]``; the error names the argument and the range."""
    raw = single(args, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name!r} must be a number, not {raw[:40]!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name!r} must be between {low:g} and {high:g}")
    return value
