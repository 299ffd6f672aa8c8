"""schemathesis against a real ``firehose serve``, from the ``/openapi.json`` it serves.

Stateless: every operation but the streaming ``/sse`` gets generated requests (valid ones and,
in schemathesis's coverage phase, invalid ones), with the master and admin tokens supplied so
the authenticated paths are exercised; every answer must be no 5xx and conform to the document
(status code, content type, body schema, headers).  Stateful: the OpenAPI links of
``POST /api/webhooks`` (get, change, delete the hook just made) are followed.

Two things are pinned in each generated request, so that no test waits or leaves loopback:
``/poll`` waits at most 0 s (a valid ``timeout`` would hold a request up to 300 s), and a
webhook's ``url`` is a closed port on 127.0.0.1 (a generated URL could name any host).
Examples are bounded per operation and derandomized under ``CI``, like hypothesis elsewhere.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import HOST, TOKENS, ServerProcess, free_port, http_get

pytestmark = pytest.mark.slow

ADMIN = "admin-token-for-schemathesis"
#: A loopback port nothing listens on: hooks made by the test fail their deliveries, nowhere else.
RECEIVER = f"http://{HOST}:{free_port()}/hook"
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
)
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=list(HealthCheck),
)


def _pin(case: Any) -> None:
    """Tokens for the authenticated paths, no waiting poll, hooks only to a loopback port."""
    path = case.operation.path
    headers = dict(case.headers or {})
    if path == "/ingest":
        headers["Authorization"] = f"Bearer {TOKENS['m1']}"
    elif path.startswith("/api/webhooks"):
        headers["Authorization"] = f"Bearer {ADMIN}"
    case.headers = headers
    if path == "/poll":
        query = dict(case.query or {})
        query["timeout"] = 0
        case.query = query
    if path == "/api/webhooks" and case.method.upper() == "POST" and isinstance(case.body, dict):
        if "url" in case.body:
            case.body = {**case.body, "url": RECEIVER}


@pytest.fixture(scope="module")
def sth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the webhook API on (loopback receivers allowed) and some events, so that
    replays, the state and /api answers have something in them."""
    path = tmp_path_factory.mktemp("schemathesis")
    extra = ("--webhook-admin-token", ADMIN, "--webhook-allow-network", "127.0.0.0/8")
    server = ServerProcess(path / "journal.sqlite", path / "server.log", dict(TOKENS), extra)
    try:
        server.start()
        from tests.e2e.conftest import Master

        master = Master("m1")
        now = float(int(time.time()))
        server.ingest([master.event("request.submitted", revision="r1", branch="main"),
                       master.event("build.started", revision="r1", branch="main"),
                       master.event("step.started"), master.event("step.finished", duration=2.0),
                       master.event("build.finished", result="success", results=0, revision="r1",
                                    branch="main"),
                       # A request that waited, and a failed build with a log tail: /api/waits,
                       # /api/trend's failures and the pushlog's have something to answer.
                       master.event("request.submitted", buildrequestid=50, revision="r2", branch="main",
                                    submitted_at=now - 60),
                       master.event("build.started", buildid=50, buildrequestid=50, revision="r2", branch="main",
                                    started_at=now - 30),
                       master.event("step.started", buildid=50, stepid=50, started_at=now - 29),
                       master.event("log.lines", buildid=50, stepid=50, logid=50, name="stdio", first_line=0,
                                    lines=["FAIL: test_one"]),
                       master.event("step.finished", buildid=50, stepid=50, result="failure", results=2,
                                    state="test failed", duration=3.0),
                       master.event("build.finished", buildid=50, buildrequestid=50, result="failure", results=2,
                                    revision="r2", branch="main", started_at=now - 30, duration=9.0)])
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def api_schema(sth_server: ServerProcess) -> Any:
    """The document the server serves, minus the never-ending /sse."""
    schema = schemathesis.openapi.from_url(sth_server.url + "/openapi.json")
    schema.config.update(base_url=sth_server.url)
    # schemathesis 4.32 cannot generate from the batch schema's per-type if/then rules
    # ("does not support this part of it"): /ingest is tested by test_ingest*.py instead.
    return schema.exclude(path="/sse").exclude(path="/ingest")


def test_every_answer_conforms_to_the_served_openapi_document(api_schema: Any) -> None:
    """Every generated request to every operation (but /sse), valid and invalid ones, gets no
    5xx and an answer whose status, content type, body and headers the document allows.

    (Operations are walked here rather than with ``schemathesis.pytest.from_fixture``, whose
    lazy loader does not run under pytest 9.)"""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.core.errors import UnsupportedSchema

    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert operations
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @SETTINGS
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                _pin(case)
                case.call_and_validate(checks=CHECKS, timeout=30)

            try:
                run()
            except (Unsatisfiable, UnsupportedSchema):
                # No invalid request exists for an operation without inputs (GET /health), and
                # schemathesis cannot mutate the if/then rules of the ingest batch's schema:
                # invalid requests of those come from the other e2e tests.
                assert mode is GenerationMode.NEGATIVE, operation.label


def test_webhook_links_hold_statefully(api_schema: Any) -> None:
    """Following the document's links: a hook created by POST can be read, changed and deleted
    by its id, every answer conforming to the document."""
    machine: Callable[..., Any] = api_schema.as_state_machine()
    api_url = api_schema.config.base_url
    auth = {"Authorization": f"Bearer {ADMIN}"}

    class Machine(machine):  # type: ignore[misc,valid-type]
        def before_call(self, case: Any) -> None:
            _pin(case)

        def teardown(self) -> None:
            # Every example starts from the same server: no hook left by the one before (a
            # leftover id would turn a 201 into a 409, and hypothesis requires the same choices
            # to lead to the same steps).
            status, body = http_get(api_url + "/api/webhooks", headers=auth)
            assert status == 200, body
            for hook in json.loads(body)["webhooks"]:
                request = urllib.request.Request(f"{api_url}/api/webhooks/{hook['id']}", method="DELETE",
                                                 headers=auth)
                with urllib.request.urlopen(request, timeout=30):
                    pass

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kw: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    Machine.run(settings=settings(max_examples=25, stateful_step_count=6, deadline=None, database=None,
                                  derandomize=bool(os.environ.get("CI")),
                                  suppress_health_check=list(HealthCheck)))
