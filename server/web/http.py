"""The HTTP API beside the chat socket: health, readiness, metrics, the protocol's documents, and a
reader's profile and conversations (Bearer JWT).

`ENDPOINTS` at the bottom is the API: the app routes it and `GET /openapi.json` documents it, so
adding an endpoint is a handler here and one line there.
"""

from __future__ import annotations

import hmac
from typing import Any

import msgspec
from starlette.responses import Response

from protocol import asyncapi, codec
from protocol.api import (
    Conversations,
    Health,
    JsonDocument,
    Messages,
    Readiness,
)
from protocol.codes import ErrorCode
from protocol.profile import Profile
from server.errors import NotFound, Unauthorized
from server.metrics import exposition
from server.profiles import reader_profile
from server.web import insights, openapi, readers
from server.web.endpoint import Call, Endpoint, Reply, error_response, services_of

__all__ = ["ENDPOINTS", "error_response", "services_of"]


async def healthz(call: Call) -> Health:
    """The process is alive."""
    return Health(status="ok")


async def readyz(call: Call) -> Readiness | Reply:
    """Every dependency is reachable.

    503 naming what is not (`database`, `vector_store`, `model`), or while draining after SIGTERM.
    """
    services = call.services
    if services.registry.draining:
        # New connections are refused by then, but one kept alive from before (a monitor's, a
        # proxy's pooled one) still reaches this handler and must not hear "ready".
        return Reply(
            503,
            Readiness(status="draining", checks={"server": "draining: stopping after SIGTERM"}),
        )
    checks = await services.readiness()
    if all(v.startswith("ok") for v in checks.values()):
        return Readiness(status="ok", checks=checks)
    return Reply(503, Readiness(status="unavailable", checks=checks))


async def metrics(call: Call) -> Response:
    """Prometheus metrics, in its text format.

    Answered here when METRICS_TOKEN is set (and sent as a bearer token), or when the server
    listens only on loopback; with METRICS_PORT the metrics are on that port instead, and this
    is 404. Anywhere else it is 404, so a public port never shows its figures to anyone."""
    settings = call.services.settings
    request = call.request
    if settings.metrics_token:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), settings.metrics_token.encode()):
            raise Unauthorized("metrics need METRICS_TOKEN as a bearer token")
    elif settings.metrics_port or not request.app.state.loopback:
        raise NotFound("not found")
    body, content_type = exposition()
    return Response(body, media_type=content_type)


async def protocol_schema(call: Call) -> dict[str, Any]:
    """JSON Schema of every frame of the chat socket.

    Generated from the msgspec types the server decodes and encodes frames with.
    """
    return codec.schema()


async def protocol_asyncapi(call: Call) -> dict[str, Any]:
    """AsyncAPI 3.0 document of the chat socket (`/v1/chat`).

    Every frame a message, generated from the same types as `GET /v1/protocol`.
    """
    request = call.request
    return asyncapi.document(
        host=request.url.netloc,
        protocol="wss" if request.url.scheme == "https" else "ws",
        pathname=request.scope.get("root_path", ""),
    )


async def openapi_document(call: Call) -> dict[str, Any]:
    """OpenAPI 3.1 document of this HTTP API, generated from the endpoint table."""
    return openapi.document(ENDPOINTS, root_path=call.request.scope.get("root_path", ""))


async def conversations(call: Call) -> Conversations:
    """The reader's conversations, most recently updated first."""
    items = await call.services.store.list_conversations(call.reader.user_id)
    return msgspec.convert({"conversations": items}, Conversations)


async def conversation_messages(call: Call) -> Messages:
    """The messages of one of the reader's conversations.

    404 for an unknown id and for another reader's conversation alike.
    """
    store = call.services.store
    items = await store.list_messages(call.reader.user_id, call.request.path_params["id"])
    return msgspec.convert({"messages": items}, Messages)


async def get_profile(call: Call) -> Profile:
    """The reader's profile: the saved one, else one carried in the token's claims.

    404 when there is neither.
    """
    found = await reader_profile(call.services.store, call.reader.user_id, call.reader.claims)
    if found is None:
        raise NotFound("no profile yet: PUT /v1/profile")
    return found


async def put_profile(call: Call) -> Profile:
    """Save (replace) the reader's profile; it wins over the token's claims.

    Unknown fields, wrong types and oversize values are 422 naming the field.
    """
    new: Profile = call.body
    await call.services.store.put_profile(call.reader.user_id, new)
    return new


DB = ErrorCode.DATABASE_UNAVAILABLE
NOT_FOUND = ErrorCode.NOT_FOUND

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/healthz", healthz, {200: Health}),
    Endpoint("GET", "/readyz", readyz, {200: Readiness, 503: Readiness}),
    Endpoint(
        "GET",
        "/metrics",
        metrics,
        {200: str},
        media_type="text/plain",
        errors=(ErrorCode.UNAUTHORIZED, ErrorCode.NOT_FOUND),
    ),
    Endpoint("GET", "/openapi.json", openapi_document, {200: JsonDocument}),
    Endpoint("GET", "/v1/protocol", protocol_schema, {200: JsonDocument}),
    Endpoint("GET", "/v1/protocol/asyncapi.json", protocol_asyncapi, {200: JsonDocument}),
    Endpoint("GET", "/v1/profile", get_profile, {200: Profile}, auth=True, errors=(NOT_FOUND, DB)),
    Endpoint("PUT", "/v1/profile", put_profile, {200: Profile}, auth=True, body=Profile, errors=(DB,)),
    Endpoint("GET", "/v1/conversations", conversations, {200: Conversations}, auth=True, errors=(DB,)),
    Endpoint(
        "GET", "/v1/conversations/{id}/messages", conversation_messages, {200: Messages},
        auth=True, errors=(NOT_FOUND, DB),
    ),
    *readers.ENDPOINTS,
    *insights.ENDPOINTS,
)  # fmt: skip
