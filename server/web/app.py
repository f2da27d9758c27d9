"""The Starlette application: the chat socket and the HTTP endpoints beside it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from server.chat.connection import Connection
from server.services import Services
from server.settings import Settings
from server.web import assets, http

CHAT_PATH = "/v1/chat"


async def chat(ws: WebSocket) -> None:
    """The chat socket."""
    await Connection(ws, http.services_of(ws)).serve()


def create_app(
    settings: Settings,
    *,
    loopback: bool = True,
    services: Services | None = None,
    close_services: bool = False,
) -> ChatApp:
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
        WebSocketRoute(CHAT_PATH, chat),  # reached only under a root_path: see ChatApp
        *(endpoint.route() for endpoint in http.ENDPOINTS),  # the API, as /openapi.json lists it
        *(Route(path, assets.widget_files) for path in assets.WIDGET_FILES),
        Route("/dev/token", assets.dev_token),
        Route("/", assets.demo_page),
        Route("/docs/{path:path}", assets.demo_page),
    ]
    # A book on another origin calls the HTTP API (history, profiles) from the browser; the
    # origins allowed to open the socket are the ones allowed to call it.
    middleware = (
        [
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.allowed_origins),
                allow_methods=sorted({endpoint.method for endpoint in http.ENDPOINTS}),
                allow_headers=["Authorization", "Content-Type"],
                max_age=600,
            )
        ]
        if settings.allowed_origins
        else []
    )
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    app.state.loopback = loopback
    return ChatApp(app)


class ChatApp:
    """Starlette for everything but the chat socket, which goes straight to its handler.

    Starlette's two exception-handling layers would wrap every frame the socket sends in two more
    coroutine calls and keep their frames (~2 KB) alive on every open socket; a socket has no
    HTTP response for them to make, and an exception still reaches uvicorn as it did."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == scope.get("root_path", "") + CHAT_PATH:
            scope["app"] = self.app
            await chat(WebSocket(scope, receive, send))
        else:
            await self.app(scope, receive, send)
