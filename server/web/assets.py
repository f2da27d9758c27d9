"""The widget's static files, the demo page of the book and its dev token."""

from __future__ import annotations

import asyncio
import html
import mimetypes
import re
import string
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.staticfiles import StaticFiles

from server.auth import mint_token, signing_secret
from server.errors import InvalidMessage
from server.settings import is_loopback_host
from server.web.http import error_response, services_of

STATIC_DIR = Path(__file__).parent / "static"
# RFC 9239's type for JavaScript; Python 3.11's table still says application/javascript.
mimetypes.add_type("text/javascript", ".js")
# Not versioned by URL, so kept short; the ETag makes the revalidation a 304.
ASSET_HEADERS = {
    "Cache-Control": "public, max-age=300, stale-while-revalidate=86400",
    "X-Content-Type-Options": "nosniff",
    "Access-Control-Allow-Origin": "*",  # lets a book use <script crossorigin integrity=…>
}
DEV_TOKEN_TTL_S = 900
_DEV_SUB = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class WidgetFiles(StaticFiles):
    """The widget's scripts and styles (Starlette's StaticFiles: ETag, 304), cacheable."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(ASSET_HEADERS)
        return response


widget_files = WidgetFiles(directory=STATIC_DIR)
WIDGET_FILES = ("/widget.js", "/widget.css", "/reader.js", "/demo.js")


def _not_found() -> Response:
    return PlainTextResponse("Not Found", status_code=404)


async def _demo_template(request: Request) -> str:
    cached: str | None = getattr(request.app.state, "demo_template", None)
    if cached is None:
        cached = await asyncio.to_thread((STATIC_DIR / "demo.html").read_text)
        request.app.state.demo_template = cached
    return cached


def _dev_token_allowed(request: Request) -> bool:
    """No auth configured, the app built for loopback, and this request came in on a loopback address."""
    server = request.scope.get("server")
    return (
        request.app.state.loopback
        and not services_of(request).settings.auth_configured
        and server is not None
        and is_loopback_host(str(server[0]))
    )


async def dev_token(request: Request) -> Response:
    """A short-lived token for the demo page; 404 unless `_dev_token_allowed`."""
    if not _dev_token_allowed(request):
        return _not_found()
    settings = services_of(request).settings
    secret = await asyncio.to_thread(signing_secret, settings, loopback=True)
    if secret is None:
        return _not_found()
    sub = request.query_params.get("sub", "demo-reader")
    if not _DEV_SUB.fullmatch(sub):
        return error_response(InvalidMessage("sub: 1-64 letters, digits, '_', '.' or '-'"))
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
    store = services_of(request).store
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
    template = await _demo_template(request)
    page = string.Template(template).substitute(
        title=html.escape(chapter.title),
        chapter=html.escape(chapter.id),
        markdown=html.escape(chapter.markdown),
        nav=nav,
    )
    headers = {"Content-Security-Policy": DEMO_CSP, "Cache-Control": "no-cache"}
    return HTMLResponse(page, headers=headers)
