"""The Starlette application: the chat socket and the HTTP endpoints beside it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import html
import logging
import re
import string
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from protocol import codec
from protocol.profile import Profile
from server.auth import Identity, mint_token, signing_secret
from server.chat.connection import Connection
from server.errors import HTTP_STATUS, ChatError, InvalidMessage, NotFound, Unauthorized
from server.metrics import exposition
from server.profiles import reader_profile
from server.services import Services
from server.settings import Settings, is_loopback_host

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat"


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
    """Every dependency is reachable; 503 naming what is not, or while draining."""
    services = _services(request)
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
        if b"\\u0000" in body:
            raise InvalidMessage("invalid profile: NUL characters (\\u0000) are not allowed")
        try:
            new = _profile_decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise InvalidMessage(f"invalid profile: {exc}") from None
        await store.put_profile(identity.user_id, new)
    except ChatError as exc:
        return _error(exc)
    return Response(codec.encode(new), media_type="application/json")


# ---- the widget, the demo page and its dev token -------------------------------------------

STATIC_DIR = Path(__file__).parent / "static"
_ASSET_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}
# Not versioned by URL, so kept short; the ETag makes the revalidation a 304.
ASSET_CACHE_CONTROL = "public, max-age=300, stale-while-revalidate=86400"
DEV_TOKEN_TTL_S = 900
_DEV_SUB = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclasses.dataclass(frozen=True, slots=True)
class Asset:
    """A static file of the widget, read once, with its ETag."""

    body: bytes
    etag: str
    media_type: str


async def _asset(request: Request, name: str) -> Asset:
    cache: dict[str, Asset] = request.app.state.assets
    if name not in cache:
        path = STATIC_DIR / name
        body = await asyncio.to_thread(path.read_bytes)
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        cache[name] = Asset(body, etag, _ASSET_TYPES[path.suffix])
    return cache[name]


def _not_found() -> Response:
    return PlainTextResponse("Not Found", status_code=404)


async def static_asset(request: Request) -> Response:
    """The widget's scripts and styles: cacheable, revalidated by ETag."""
    asset = await _asset(request, request.url.path.lstrip("/"))
    headers = {
        "ETag": asset.etag,
        "Cache-Control": ASSET_CACHE_CONTROL,
        "X-Content-Type-Options": "nosniff",
        "Access-Control-Allow-Origin": "*",  # lets a book use <script crossorigin integrity=…>
    }
    seen = {
        tag.strip().removeprefix("W/")
        for tag in request.headers.get("if-none-match", "").split(",")
    }
    if asset.etag in seen or "*" in seen:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def _dev_token_allowed(request: Request) -> bool:
    """No auth configured, the app built for loopback, and this request came in on a loopback address."""
    server = request.scope.get("server")
    return (
        request.app.state.loopback
        and not _services(request).settings.auth_configured
        and server is not None
        and is_loopback_host(str(server[0]))
    )


async def dev_token(request: Request) -> Response:
    """A short-lived token for the demo page; 404 unless `_dev_token_allowed`."""
    if not _dev_token_allowed(request):
        return _not_found()
    settings = _services(request).settings
    secret = await asyncio.to_thread(signing_secret, settings, loopback=True)
    if secret is None:
        return _not_found()
    sub = request.query_params.get("sub", "demo-reader")
    if not _DEV_SUB.fullmatch(sub):
        return _error(InvalidMessage("sub: 1-64 letters, digits, '_', '.' or '-'"))
    token = mint_token(secret, sub, DEV_TOKEN_TTL_S)
    return JSONResponse(
        {"token": token, "sub": sub, "expires_in": DEV_TOKEN_TTL_S},
        headers={"Cache-Control": "no-store"},
    )


# The demo renders its Markdown with the widget's own escaping renderer; nothing else runs.
DEMO_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
    " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


async def demo_page(request: Request) -> Response:
    """A page of the book with the widget and the reader: `/` is the first chapter, and every
    chapter is at its own URL (so the answers' source links open here)."""
    store = _services(request).store
    chapters = await store.chapter_titles()
    path = request.url.path.rstrip("/")
    chapter_id = next(
        (cid for cid, (_, url) in chapters.items() if not path or url.rstrip("/") == path), None
    )
    chapter = await store.get_chapter(chapter_id) if chapter_id else None
    if chapter is None:
        return _not_found()
    current = ' aria-current="page"'
    nav = "".join(
        f'<li><a href="{html.escape(url)}"{current if cid == chapter.id else ""}>'
        f"{html.escape(title)}</a></li>"
        for cid, (title, url) in chapters.items()
    )
    template = (await _asset(request, "demo.html")).body.decode()
    page = string.Template(template).substitute(
        title=html.escape(chapter.title),
        chapter=html.escape(chapter.id),
        markdown=html.escape(chapter.markdown),
        nav=nav,
    )
    headers = {"Content-Security-Policy": DEMO_CSP, "Cache-Control": "no-cache"}
    return HTMLResponse(page, headers=headers)


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
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/v1/protocol", protocol_schema),
        Route("/metrics", metrics),
        Route("/v1/profile", profile, methods=["GET", "PUT"]),
        Route("/v1/conversations", conversations),
        Route("/v1/conversations/{id}/messages", conversation_messages),
        Route("/widget.js", static_asset),
        Route("/widget.css", static_asset),
        Route("/reader.js", static_asset),
        Route("/demo.js", static_asset),
        Route("/dev/token", dev_token),
        Route("/", demo_page),
        Route("/docs/{path:path}", demo_page),
    ]
    # A book on another origin calls the HTTP API (history, profiles) from the browser; the
    # origins allowed to open the socket are the ones allowed to call it.
    middleware = (
        [
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.allowed_origins),
                allow_methods=["GET", "PUT"],
                allow_headers=["Authorization", "Content-Type"],
                max_age=600,
            )
        ]
        if settings.allowed_origins
        else []
    )
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    app.state.loopback = loopback
    app.state.assets = {}
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
