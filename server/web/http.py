"""The HTTP API beside the chat socket: health, readiness, metrics, the protocol's schema, and a
reader's profile and conversations (Bearer JWT)."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket

from protocol import codec
from protocol.profile import Profile
from server.auth import Identity
from server.errors import ChatError, InvalidMessage, NotFound, Unauthorized
from server.metrics import exposition
from server.profiles import reader_profile
from server.services import Services


def services_of(request: Request | WebSocket) -> Services:
    services: Services = request.app.state.services
    return services


def error_body(exc: ChatError) -> dict[str, Any]:
    return {"error": {"code": exc.code.value, "message": exc.message, "retryable": exc.retryable}}


def error_response(exc: ChatError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    return JSONResponse(error_body(exc), status_code=exc.http_status, headers=headers)


async def _bearer(request: Request) -> Identity:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise Unauthorized("missing bearer token")
    return await services_of(request).verifier.verify(header[7:].strip())


async def healthz(request: Request) -> Response:
    """The process is alive."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Every dependency is reachable; 503 naming what is not, or while draining."""
    services = services_of(request)
    if services.registry.draining:
        # New connections are refused by then, but one kept alive from before (a monitor's, a
        # proxy's pooled one) still reaches this handler and must not hear "ready".
        return JSONResponse(
            {"status": "draining", "checks": {"server": "draining: stopping after SIGTERM"}},
            status_code=503,
        )
    checks = await services.readiness()
    ok = all(v.startswith("ok") for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    body, content_type = exposition()
    return Response(body, media_type=content_type)


async def protocol_schema(request: Request) -> Response:
    """JSON Schema of every frame, from the msgspec types the server uses."""
    return JSONResponse(codec.schema())


async def conversations(request: Request) -> Response:
    """The reader's conversations, newest first."""
    try:
        identity = await _bearer(request)
        items = await services_of(request).store.list_conversations(identity.user_id)
    except ChatError as exc:
        return error_response(exc)
    return JSONResponse({"conversations": items})


async def conversation_messages(request: Request) -> Response:
    """Messages of one of the reader's conversations; 404 for anyone else's."""
    try:
        identity = await _bearer(request)
        items = await services_of(request).store.list_messages(
            identity.user_id, request.path_params["id"]
        )
    except ChatError as exc:
        return error_response(exc)
    return JSONResponse({"messages": items})


MAX_PROFILE_BYTES = 16_384
_profile_decoder = msgspec.json.Decoder(Profile)


async def profile(request: Request) -> Response:
    """GET: the reader's profile (saved, else from token claims). PUT: save it."""
    try:
        identity = await _bearer(request)
        store = services_of(request).store
        if request.method == "GET":
            found = await reader_profile(store, identity.user_id, identity.claims)
            if found is None:
                raise NotFound("no profile yet: PUT /v1/profile")
            return Response(codec.encode(found), media_type="application/json")
        body = await request.body()
        if len(body) > MAX_PROFILE_BYTES:
            return JSONResponse(
                error_body(InvalidMessage(f"profile larger than {MAX_PROFILE_BYTES} bytes")), 413
            )
        try:
            new = _profile_decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise InvalidMessage(f"invalid profile: {codec.readable(exc)}") from None
        except msgspec.DecodeError as exc:
            raise InvalidMessage(f"invalid profile: {exc}") from None
        await store.put_profile(identity.user_id, new)
    except ChatError as exc:
        return error_response(exc)
    return Response(codec.encode(new), media_type="application/json")
