"""The Starlette application: the chat socket and the HTTP endpoints beside it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from protocol import codec
from protocol.profile import Profile
from server.auth import Identity
from server.errors import HTTP_STATUS, ChatError, InvalidMessage, NotFound, Unauthorized
from server.metrics import exposition
from server.profiles import reader_profile
from server.services import Services
from server.session import Connection
from server.settings import Settings

log = logging.getLogger(__name__)


def _services(request: Request | WebSocket) -> Services:
    services: Services = request.app.state.services
    return services


def _error_body(exc: ChatError) -> dict[str, Any]:
    return {"error": {"code": exc.code.value, "message": exc.message, "retryable": exc.retryable}}


def _error(exc: ChatError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if HTTP_STATUS[exc.code] == 401 else None
    return JSONResponse(_error_body(exc), status_code=HTTP_STATUS[exc.code], headers=headers)


async def _bearer(request: Request) -> Identity:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise Unauthorized("missing bearer token")
    return await _services(request).verifier.verify(header[7:].strip())


async def chat(ws: WebSocket) -> None:
    """The chat socket."""
    await Connection(ws, _services(ws)).serve()


async def healthz(request: Request) -> Response:
    """The process is alive."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Every dependency is reachable; 503 naming what is not."""
    checks = await _services(request).readiness()
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
        items = await _services(request).store.list_conversations(identity.user_id)
    except ChatError as exc:
        return _error(exc)
    return JSONResponse({"conversations": items})


async def conversation_messages(request: Request) -> Response:
    """Messages of one of the reader's conversations; 404 for anyone else's."""
    try:
        identity = await _bearer(request)
        items = await _services(request).store.list_messages(
            identity.user_id, request.path_params["id"]
        )
    except ChatError as exc:
        return _error(exc)
    return JSONResponse({"messages": items})


MAX_PROFILE_BYTES = 16_384
_profile_decoder = msgspec.json.Decoder(Profile)


async def profile(request: Request) -> Response:
    """GET: the reader's profile (saved, else from token claims). PUT: save it."""
    try:
        identity = await _bearer(request)
        store = _services(request).store
        if request.method == "GET":
            found = await reader_profile(store, identity.user_id, identity.claims)
            if found is None:
                raise NotFound("no profile yet: PUT /v1/profile")
            return Response(codec.encode(found), media_type="application/json")
        body = await request.body()
        if len(body) > MAX_PROFILE_BYTES:
            return JSONResponse(
                _error_body(InvalidMessage(f"profile larger than {MAX_PROFILE_BYTES} bytes")), 413
            )
        try:
            new = _profile_decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise InvalidMessage(f"invalid profile: {exc}") from None
        await store.put_profile(identity.user_id, new)
    except ChatError as exc:
        return _error(exc)
    return Response(codec.encode(new), media_type="application/json")


def create_app(
    settings: Settings,
    *,
    loopback: bool = True,
    services: Services | None = None,
    close_services: bool = False,
) -> Starlette:
    """The ASGI app; builds its services at startup unless given ready-made ones.

    Services the app builds, or is told to close, are closed at lifespan shutdown: uvicorn
    re-raises SIGTERM/SIGINT once it has stopped, so code after `serve()` never runs.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        owned = services is None or close_services
        app.state.services = services or await Services.start(settings, loopback=loopback)
        try:
            yield {}
        finally:
            await app.state.services.stop_sessions()
            if owned:
                await app.state.services.close()

    routes = [
        WebSocketRoute("/v1/chat", chat),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/v1/protocol", protocol_schema),
        Route("/metrics", metrics),
        Route("/v1/profile", profile, methods=["GET", "PUT"]),
        Route("/v1/conversations", conversations),
        Route("/v1/conversations/{id}/messages", conversation_messages),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
