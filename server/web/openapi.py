"""The OpenAPI 3.1 document of the HTTP API, built from the endpoint table (`http.ENDPOINTS`) and
the msgspec types the handlers decode and encode with; error responses from protocol/codes.py."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

import msgspec

from protocol.api import ErrorBody
from protocol.codes import ERRORS, ErrorCode
from protocol.frames import PROTOCOL_VERSION
from server.web.endpoint import JSON, Endpoint

REF_TEMPLATE = "#/components/schemas/{name}"
SECURITY_SCHEME = "bearer"
DESCRIPTION = """\
The HTTP API beside the chat socket of textbook-chat. The socket itself (`GET /v1/chat`) is
described by the AsyncAPI document at `/v1/protocol/asyncapi.json`.

Every error is an `ErrorBody` whose `code` is one of the protocol's error codes, with the same
meaning and retry hint as on the socket."""


def document(endpoints: Sequence[Endpoint], *, root_path: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document of `endpoints`, served under `root_path`."""
    types = _types(endpoints)
    schemas, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    schema_of = dict(zip(map(_key, types), schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        operations = paths.setdefault(endpoint.openapi_path, {})
        if endpoint.method.lower() in operations:
            raise ValueError(f"{endpoint.method} {endpoint.path} declared twice")
        operations[endpoint.method.lower()] = _operation(endpoint, schema_of)
    _unique_operation_ids(endpoints)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "textbook-chat HTTP API",
            "version": str(PROTOCOL_VERSION),
            "description": DESCRIPTION,
        },
        "servers": [{"url": root_path or "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The reader's JWT (the same token the chat socket takes).",
                }
            },
        },
    }


def _key(tp: Any) -> str:
    return repr(tp)  # typing constructs compare by value but do not all hash alike


def _types(endpoints: Iterable[Endpoint]) -> list[Any]:
    seen: dict[str, Any] = {_key(ErrorBody): ErrorBody}
    for endpoint in endpoints:
        for tp in (endpoint.body, *endpoint.responses.values()):
            if tp is not None:
                seen.setdefault(_key(tp), tp)
    return list(seen.values())


def _operation(endpoint: Endpoint, schema_of: dict[str, Any]) -> dict[str, Any]:
    summary, description = endpoint.docs()
    operation: dict[str, Any] = {"operationId": endpoint.operation_id, "summary": summary}
    if description:
        operation["description"] = description
    operation["tags"] = ["reader" if endpoint.auth else "service"]
    if endpoint.path_params:
        operation["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in endpoint.path_params
        ]
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "description": f"JSON, at most {endpoint.max_body} bytes.",
            "content": {JSON: {"schema": schema_of[_key(endpoint.body)]}},
        }
    responses: dict[str, Any] = {}
    for status, tp in sorted(endpoint.responses.items()):
        response: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        if tp is not None:
            response["content"] = {endpoint.media_type: {"schema": schema_of[_key(tp)]}}
        responses[str(status)] = response
    for status, response in _error_responses(endpoint).items():
        if str(status) in responses:
            raise ValueError(f"{endpoint.operation_id}: status {status} is success and error")
        responses[str(status)] = response
    operation["responses"] = responses
    if endpoint.auth:
        operation["security"] = [{SECURITY_SCHEME: []}]
    return operation


def _error_responses(endpoint: Endpoint) -> dict[int, dict[str, Any]]:
    """One response per error status, naming the codes it may carry and what each means."""
    by_status: dict[int, list[tuple[ErrorCode, str]]] = {}
    for code in endpoint.error_codes():
        rule = ERRORS[code]
        by_status.setdefault(rule.http_status, []).append((code, rule.meaning))
    if endpoint.body is not None:
        by_status.setdefault(413, []).append(
            (ErrorCode.INVALID_MESSAGE, f"a body over {endpoint.max_body} bytes")
        )
    responses: dict[int, dict[str, Any]] = {}
    for status, codes in sorted(by_status.items()):
        lines = [
            f"- `{code.value}`{' (retryable)' if ERRORS[code].retryable else ''}: {meaning}"
            for code, meaning in codes
        ]
        response: dict[str, Any] = {
            "description": f"{HTTPStatus(status).phrase}\n\n" + "\n".join(lines),
            "content": {JSON: {"schema": _error_schema(sorted({c.value for c, _ in codes}))}},
        }
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {
                    "required": True,
                    "schema": {"type": "string", "const": "Bearer"},
                }
            }
        responses[status] = response
    return responses


def _error_schema(codes: list[str]) -> dict[str, Any]:
    """`ErrorBody`, narrowed to the codes this response may carry."""
    return {
        "allOf": [{"$ref": REF_TEMPLATE.format(name="ErrorBody")}],
        "properties": {"error": {"properties": {"code": {"enum": codes}}}},
    }


def _unique_operation_ids(endpoints: Iterable[Endpoint]) -> None:
    seen: set[str] = set()
    for endpoint in endpoints:
        if endpoint.operation_id in seen:
            raise ValueError(f"operationId {endpoint.operation_id} used twice")
        seen.add(endpoint.operation_id)
