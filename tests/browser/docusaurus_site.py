"""The example Docusaurus site (examples/docusaurus) with the textbook-chat plugin: built by the real
`@docusaurus/core` from the packages its lockfile pins, then served as static files under /book/.

The book's docs folder comes from ../shared/corpora (BOOK_DIR); the chat server's URL is baked into
the build (TEXTBOOK_CHAT_URL), so a build is made once per test session and chat server port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tests.conftest import ROOT

SITE_DIR = ROOT / "examples" / "docusaurus"
DOCUSAURUS = SITE_DIR / "node_modules" / ".bin" / "docusaurus"
BASE_URL = "/book/"
DOCS_URL = "/book/docs"  # `ingest --base-url`: the site's baseUrl, then the docs plugin's route
OTHER_LOCALES = ("ur",)  # besides the default, "en"; see docusaurus.config.js
SESSION_COOKIE = "better-auth.session_token"  # Better-Auth's, on plain http

_DOC_ID = re.compile(r'<html[^>]*\bclass="[^"]*\bdocs-doc-id-([^\s"]+)')
_CANONICAL = re.compile(r'<link[^>]*\brel="canonical"[^>]*\bhref="([^"]+)"')
_CHAPTER = re.compile(r'\bdata-chapter="([^"]*)"')


def node_missing() -> str | None:
    """Why the site cannot be built here, if it cannot."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "Node.js and npm are not installed (the Docusaurus site needs them; `make install` runs npm ci)"
    return None


def require_site() -> None:
    """Skip without Node.js; fail (not skip) when npm is there but the site was never installed."""
    reason = node_missing()
    if reason:
        pytest.skip(reason)
    if not DOCUSAURUS.exists():
        pytest.fail(
            f"{SITE_DIR}/node_modules is missing: run `make install` (it runs npm ci there)"
        )


@dataclasses.dataclass(frozen=True)
class Build:
    """One `docusaurus build` of a book."""

    book: str
    out: Path
    seconds: float


async def build_site(
    book_dir: Path, out: Path, *, chat_url: str, locales: tuple[str, ...]
) -> float:
    """`docusaurus build` of the example site over `book_dir` into `out`; its time in seconds."""
    env = {
        **os.environ,
        "BOOK_DIR": str(book_dir),
        "TEXTBOOK_CHAT_URL": chat_url,
        "NODE_ENV": "production",
        "NO_UPDATE_NOTIFIER": "1",  # Docusaurus's CLI would ask the npm registry for a newer version
    }
    log = out.with_suffix(".log")
    args = ["build", "--out-dir", str(out)] + [a for loc in locales for a in ("--locale", loc)]
    started = time.monotonic()
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            str(DOCUSAURUS), *args, cwd=SITE_DIR, env=env, stdout=sink, stderr=sink
        )
        code = await proc.wait()
    seconds = time.monotonic() - started
    if code != 0:
        tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-4000:]
        raise AssertionError(f"docusaurus build of {book_dir} failed ({code}):\n{tail}")
    return seconds


class SiteBuilds:
    """Builds made in this session, by book: each book is built once, one at a time.

    They share the site's `.docusaurus` folder and webpack's cache in `node_modules/.cache`. (A
    generated-files folder per build would be faster to clean up but breaks that cache: webpack
    keeps resolving `@generated/…` to the first build's folder, as it ignores alias changes.)"""

    def __init__(self, root: Path, chat_url: str) -> None:
        self.root = root
        self.chat_url = chat_url
        self.builds: dict[str, Build] = {}
        self._lock = asyncio.Lock()

    async def get(self, book_dir: Path, locales: tuple[str, ...] = ()) -> Build:
        """The build of `book_dir` (all locales unless `locales` names some)."""
        async with self._lock:
            key = book_dir.name
            if key not in self.builds:
                out = self.root / key
                seconds = await build_site(book_dir, out, chat_url=self.chat_url, locales=locales)
                self.builds[key] = Build(key, out, seconds)
            return self.builds[key]


BUILDS = pytest.StashKey["SiteBuilds"]()  # for the terminal summary (tests/browser/conftest.py)


@dataclasses.dataclass(frozen=True)
class DocPage:
    """What a built doc page says about itself."""

    doc_id: str  # Docusaurus's docs-doc-id-… class on <html>
    path: str  # its canonical URL's path: the permalink
    chapter: str | None  # the plugin's data-chapter mark


def doc_pages(out: Path) -> dict[str, DocPage]:
    """Every doc page of the default locale in a build, by doc id."""
    pages: dict[str, DocPage] = {}
    for html in sorted(out.rglob("*.html")):
        if html.relative_to(out).parts[0] in OTHER_LOCALES:
            continue
        text = html.read_text(encoding="utf-8")
        doc_id = _DOC_ID.search(text)
        if doc_id is None:
            continue  # the home page, generated category indexes, 404
        canonical = _CANONICAL.search(text)
        chapter = _CHAPTER.search(text)
        assert canonical is not None, f"{html} has no canonical link"
        pages[doc_id.group(1)] = DocPage(
            doc_id.group(1), urlsplit(canonical.group(1)).path, chapter and chapter.group(1)
        )
    return pages


def book_app(build: Path) -> Starlette:
    """The built site under /book/, and Better-Auth under /api/auth/ (`app.state.auth_url`), as
    the README deploys it: behind the book's own origin, so its session cookie is the book's and
    `authClient.token()` (the plugin's default) is a same-origin request."""

    async def better_auth(request: Request) -> Response:
        target = request.app.state.auth_url + request.url.path
        if request.url.query:
            target += "?" + request.url.query
        forwarded = {k: v for k, v in request.headers.items() if k in _FORWARDED}
        async with httpx.AsyncClient() as http:
            answer = await http.request(
                request.method, target, headers=forwarded, content=await request.body()
            )
        response = Response(answer.content, answer.status_code)
        for name in ("content-type", "set-auth-jwt"):
            if name in answer.headers:
                response.headers[name] = answer.headers[name]
        for cookie in answer.headers.get_list("set-cookie"):
            response.headers.append("set-cookie", cookie)
        return response

    return Starlette(
        routes=[
            Route("/api/auth/{path:path}", better_auth, methods=["GET", "POST"]),
            Mount(BASE_URL.rstrip("/"), StaticFiles(directory=build, html=True)),
        ]
    )


_FORWARDED = {"cookie", "content-type", "origin", "accept", "user-agent"}


async def sign_up(auth_url: str, book_origin: str, name: str) -> tuple[str, dict[str, Any]]:
    """A new reader signed up to Better-Auth from the book, as `authClient.signUp.email` does:
    their user id (the tokens' `sub`) and the session cookie the browser then has for the book."""
    email = f"{name}-{secrets.token_hex(4)}@example.org"
    body = {"email": email, "password": secrets.token_urlsafe(16), "name": name}
    async with httpx.AsyncClient(headers={"Origin": book_origin}) as http:
        response = await http.post(f"{auth_url}/api/auth/sign-up/email", json=body)
    assert response.status_code == 200, response.text
    value = response.cookies.get(SESSION_COOKIE)
    assert value, f"no {SESSION_COOKIE} in {response.headers.get_list('set-cookie')}"
    cookie = {"name": SESSION_COOKIE, "value": value, "url": book_origin, "httpOnly": True}
    return response.json()["user"]["id"], cookie
