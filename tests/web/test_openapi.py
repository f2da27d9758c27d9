"""GET /openapi.json: the OpenAPI 3.1 document of the HTTP API, generated from the endpoint table.

It is valid OpenAPI 3.1 (openapi-spec-validator), it lists every route the app serves, and it is
true of the live server: schemathesis sends generated requests to every operation (valid and
invalid ones, with a reader's token) and checks each response against the document.

Generated runs are bounded (`FUZZ_HTTP_EXAMPLES` requests per operation and mode, default 30) and
derandomized, so CI sees the same inputs every run; `FUZZ_RANDOM=1` explores new ones. Run with
`-s` to see how many requests were sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import pkgutil
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from protocol.api import Health
from protocol.codes import ERRORS, ErrorCode
from server.settings import Settings
from server.tools.client import connect
from server.web import assets, http, openapi
from server.web.app import CHAT_PATH, create_app
from server.web.endpoint import Call, Endpoint, Reply
from tests.conftest import LiveServer, token_for

HTTP_EXAMPLES = int(os.environ.get("FUZZ_HTTP_EXAMPLES", "30"))
DERANDOMIZE = os.environ.get("FUZZ_RANDOM") != "1"
PROFILE = {"software_background": "ROS 2", "hardware_background": "", "level": "advanced"}
ASSETS = {*assets.WIDGET_FILES, "/dev/token", "/", "/docs/{path:path}", CHAT_PATH}
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.positive_data_acceptance,
    schemathesis.checks.negative_data_rejection,
    schemathesis.checks.ignored_auth,
]


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


# ---- the document ------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi.document(http.ENDPOINTS)
    validate(document)  # raises naming the first violation
    assert document["openapi"] == "3.1.0"


def test_every_route_the_app_serves_is_documented(tmp_path: Path) -> None:
    app = create_app(Settings.from_env({"DATA_DIR": str(tmp_path)})).app
    served = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route) and route.path not in ASSETS
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = set(_operations(openapi.document(http.ENDPOINTS)))
    assert served == documented
    assert {path for _, path in documented} >= {
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/v1/protocol",
        "/v1/protocol/asyncapi.json",
        "/v1/profile",
        "/v1/conversations",
        "/v1/conversations/{id}/messages",
    }


def test_error_responses_carry_the_codes_of_their_status() -> None:
    for (method, path), operation in _operations(openapi.document(http.ENDPOINTS)).items():
        for status, response in operation["responses"].items():
            if int(status) < 400 or path == "/readyz":
                continue
            codes = response["content"]["application/json"]["schema"]["properties"]["error"]
            for code in codes["properties"]["code"]["enum"]:
                rule = ERRORS[ErrorCode(code)]
                if (status, code) == ("413", "invalid_message"):  # a body over the size limit
                    continue
                assert rule.http_status == int(status), (method, path, status, code)
                assert rule.meaning in response["description"]
        if "security" in operation:
            assert {"401", "503"} <= set(operation["responses"]), (method, path)


def test_the_router_refuses_to_send_what_is_not_documented() -> None:
    """The endpoint wrapper checks a handler's status and body type against the declaration."""

    async def teapot(call: Call) -> Reply:
        """Not a declared status."""
        return Reply(418, Health(status="ok"))

    async def wrong_body(call: Call) -> dict[str, str]:
        """Not the declared type."""
        return {"status": "ok"}

    async def declared(call: Call) -> Reply:
        """Declared."""
        return Reply(202, Health(status="ok"))

    endpoints = [
        Endpoint("GET", "/teapot", teapot, {200: Health}),
        Endpoint("GET", "/wrong", wrong_body, {200: Health}),
        Endpoint("GET", "/declared", declared, {200: Health, 202: Health}),
    ]
    app = Starlette(routes=[endpoint.route() for endpoint in endpoints])
    with TestClient(app) as client:
        with pytest.raises(RuntimeError, match="status 418 is not declared"):
            client.get("/teapot")
        with pytest.raises(RuntimeError, match="body is not a"):
            client.get("/wrong")
        response = client.get("/declared")
    assert (response.status_code, response.json()) == (202, {"status": "ok"})
    assert set(openapi.document(endpoints)["paths"]["/declared"]["get"]["responses"]) == {
        "200",
        "202",
    }


# ---- the live server ---------------------------------------------------------------------------


async def test_the_served_documents_are_the_generated_ones(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.http_url) as client:
        served = await client.get("/openapi.json")
        socket = await client.get("/v1/protocol/asyncapi.json")
    assert served.headers["content-type"] == "application/json"
    assert served.json() == openapi.document(http.ENDPOINTS)
    server = socket.json()["servers"]["chat"]
    assert (server["host"], server["protocol"]) == (f"127.0.0.1:{live.port}", "ws")
    assert socket.json()["channels"]["chat"]["address"] == CHAT_PATH


def _import_schemathesis() -> None:
    """Import schemathesis' lazily imported modules now, in the main thread: compiling one under a
    running Hypothesis engine in a worker thread can fail (CPython 3.11 AST recursion check)."""
    for package in (schemathesis.specs, schemathesis.generation, schemathesis.core):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            with contextlib.suppress(ImportError):
                importlib.import_module(module.name)


def _check(
    strategy: st.SearchStrategy[schemathesis.Case],
    label: str,
    tried: Counter[str],
    base_url: str,
    headers: dict[str, str],
) -> Any:
    """A Hypothesis test sending one operation's generated requests, checked against the document."""

    @settings(
        max_examples=HTTP_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=DERANDOMIZE,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=10)
        tried[label] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    return check


def fuzz(base_url: str, token: str, conversation_id: str) -> Counter[str]:
    """The successes generation cannot reach (a saved profile, a real conversation's messages),
    then generated requests (valid and invalid) to every operation of the served document."""
    config = SchemathesisConfig.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": ["401", "404", "413", "422"]}}}
    )
    # Loaded as served, but not with from_url: that one leaves out the operation serving the document
    document = httpx.get(f"{base_url}/openapi.json", timeout=10).raise_for_status().json()
    schema = schemathesis.openapi.from_dict(document, config=config)
    schema.config.generation.update(allow_x00=True, codec="utf-8")  # the schemas refuse U+0000
    headers = {"Authorization": f"Bearer {token}"}
    tried: Counter[str] = Counter()
    operations = {result.ok().label: result.ok() for result in schema.get_all_operations()}
    # The successes first: generated requests include DELETE /v1/me and DELETE /v1/conversations,
    # which delete this reader's profile and conversation.
    explicit = [
        operations["PUT /v1/profile"].Case(body=PROFILE, media_type="application/json"),
        operations["GET /v1/profile"].Case(),
        operations["GET /v1/conversations/{id}/messages"].Case(
            path_parameters={"id": conversation_id}
        ),
    ]
    for case in explicit:
        response = case.call(base_url=base_url, headers=headers, timeout=10)
        case.validate_response(response, checks=CHECKS, headers=headers)
        assert response.status_code == 200, (case.operation.label, response.text)
        tried[f"{case.operation.label} explicit"] += 1
    for operation in operations.values():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{operation.label} {mode.value}"
            strategy = operation.as_strategy(generation_mode=mode)
            try:
                _check(strategy, label, tried, base_url, headers)()
            except Unsatisfiable:  # an operation without inputs has nothing to get wrong
                assert mode is GenerationMode.NEGATIVE, label
    return tried


async def test_the_live_server_keeps_to_its_document(live: LiveServer) -> None:
    token = token_for("openapi-fuzz")
    async with connect(
        live.ws_url, token
    ) as chat:  # a conversation whose messages fill every field
        first = await chat.ask("plain", "What is a humanoid?")
        conversation_id = first[0]["conversation_id"]
        selection = {"text": "zero moment point", "page_url": "https://book.example/ch1"}
        await chat.ask(
            "quoted", "Explain this", conversation_id=conversation_id, selection=selection
        )
    _import_schemathesis()
    tried = await asyncio.to_thread(fuzz, live.http_url, token, conversation_id)
    print(f"\nOpenAPI fuzz: {sum(tried.values())} requests; {dict(sorted(tried.items()))}")
    documented = {
        f"{method} {path}" for method, path in _operations(openapi.document(http.ENDPOINTS))
    }
    assert {label.rsplit(" ", 1)[0] for label in tried} == documented
    with_inputs = {"PUT /v1/profile", "GET /v1/conversations/{id}/messages"}
    assert {f"{label} negative" for label in with_inputs} <= set(tried)
