"""Every HTTP error of a real server has the JSON error body: unknown paths anywhere, methods a
resource does not take, methods HTTP does not know (issue #11: no twisted.web HTML page)."""

from __future__ import annotations

import json
import string
import urllib.parse
import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import OPENER

pytestmark = pytest.mark.slow

KNOWN = {"", "api", "ingest", "ws", "sse", "poll", "schema", "health", "metrics", "openapi.json",
         "asyncapi.json", "index.html", "dashboard.js", "dashboard.css"}


def request(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with OPENER.open(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected: int, code: str) -> None:
    assert status == expected, (status, body[:200])
    assert headers.get("Content-Type", "").startswith("application/json"), headers
    answer = json.loads(body)
    assert answer["error"] == code and answer["message"], answer


@settings(max_examples=60)
@given(segment=st.text(string.ascii_letters + string.digits + "-_.~%", min_size=1, max_size=40))
def test_an_unknown_path_is_a_json_404(module_server, segment: str) -> None:
    """Any first path segment that names nothing (including percent-escapes and dots) is a 404
    with ``{"error": "not_found"}``, never an HTML page."""
    name = urllib.parse.unquote(segment)
    if name in KNOWN or name.strip(".") == "" or "/" in name:
        return
    status, headers, body = request(f"{module_server.url}/{segment}")
    assert_json_error(status, headers, body, 404, "not_found")


@pytest.mark.parametrize("path, method", [("/ingest", "GET"), ("/health", "POST"), ("/health", "PUT"),
                                          ("/schema", "DELETE"), ("/metrics", "PATCH")])
def test_a_method_a_resource_does_not_take_is_a_json_405(module_server, path: str, method: str) -> None:
    """A method the resource does not take is a 405 ``method_not_allowed`` naming the ones it
    does, in the ``Allow`` header too."""
    status, headers, body = request(module_server.url + path, method)
    assert_json_error(status, headers, body, 405, "method_not_allowed")
    assert headers.get("Allow"), headers


def test_a_method_http_does_not_know_is_a_json_501(module_server) -> None:
    """A method HTTP does not define is a 501 ``not_implemented``."""
    status, headers, body = request(module_server.url + "/health", "BREW")
    assert_json_error(status, headers, body, 501, "not_implemented")


def test_head_still_answers_with_the_headers_of_get(module_server) -> None:
    """HEAD of a resource that takes GET answers 200 with no body (not a 405)."""
    status, headers, body = request(module_server.url + "/health", "HEAD")
    assert status == 200 and body == b""
