"""A real Better-Auth server (examples/better-auth, on Node.js) for end-to-end tests, and a reader
that signs in to it the way a browser would."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import ROOT, free_port, fresh_database
from tests.processes import wait_ready

EXAMPLE = ROOT / "examples" / "better-auth"
BOOK_ORIGIN = "http://book.localhost:3000"  # the Docusaurus site a reader signs in from
START_S = 30.0
STOP_S = 10.0


def missing() -> str | None:
    """Why Better-Auth cannot run here, or None when it can."""
    node = shutil.which("node")
    if node is None:
        return "Node.js is not installed (the Better-Auth example needs Node.js 20+)"
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    if int(version.lstrip("v").split(".")[0] or 0) < 20:
        return f"Node.js {version.strip()} is too old (the Better-Auth example needs 20+)"
    if not (EXAMPLE / "node_modules" / "better-auth").is_dir():
        return "examples/better-auth/node_modules is missing: `make install` runs `npm ci` there (needs npm)"
    return None


@dataclasses.dataclass
class BetterAuth:
    """A running Better-Auth server: its base URL is also its tokens' issuer and audience."""

    url: str
    log: Path

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/api/auth/jwks"

    def chat_env(self) -> dict[str, str]:
        """The chat server's environment for this Better-Auth, as the README gives it."""
        return {"JWKS_URL": self.jwks_url, "JWT_ISSUER": self.url, "JWT_AUDIENCE": self.url}

    async def jwks_kids(self) -> list[str]:
        async with httpx.AsyncClient() as http:
            response = await http.get(self.jwks_url)
            response.raise_for_status()
            return [key["kid"] for key in response.json()["keys"]]


@contextlib.asynccontextmanager
async def run_better_auth(admin_dsn: str, tmp: Path, **env: str) -> AsyncIterator[BetterAuth]:
    """`node server.mjs` on a free port with its own fresh database; stopped afterwards. The test
    is skipped, saying why, where Node.js or the example's packages are missing."""
    if why := missing():
        pytest.skip(why)
    async with fresh_database(admin_dsn) as database_url:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = tmp / f"better-auth-{port}.log"
        full_env = {
            "PATH": os.environ.get("PATH", ""),
            "PORT": str(port),
            "BETTER_AUTH_URL": url,
            "BETTER_AUTH_SECRET": secrets.token_urlsafe(32),
            "DATABASE_URL": database_url,
            "TRUSTED_ORIGINS": BOOK_ORIGIN,
            **env,
        }
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                "node", "server.mjs", cwd=EXAMPLE, env=full_env, stdout=out, stderr=out
            )
        try:
            await wait_ready(port, proc, log, path="/api/auth/ok", within=START_S)
            yield BetterAuth(url, log)
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), STOP_S)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


class Reader:
    """A browser session on the book: Better-Auth's session cookie, and the Origin it sends."""

    def __init__(self, auth: BetterAuth) -> None:
        self.auth = auth
        self.http = httpx.AsyncClient(base_url=auth.url, headers={"Origin": BOOK_ORIGIN})
        self.user: dict[str, Any] = {}

    async def __aenter__(self) -> Reader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def sign_up(self, email: str, password: str, name: str, **fields: Any) -> httpx.Response:
        """POST /api/auth/sign-up/email, as `authClient.signUp.email(...)` does."""
        response = await self.http.post(
            "/api/auth/sign-up/email",
            json={"email": email, "password": password, "name": name, **fields},
        )
        if response.status_code == 200:
            self.user = response.json()["user"]
        return response

    async def token(self) -> str:
        """A JWT from GET /api/auth/token, as `authClient.token()` does."""
        response = await self.http.get("/api/auth/token")
        response.raise_for_status()
        token: str = response.json()["token"]
        return token

    async def session_jwt(self) -> str:
        """The JWT the plugin puts in the `set-auth-jwt` header of GET /api/auth/get-session."""
        response = await self.http.get("/api/auth/get-session")
        response.raise_for_status()
        assert "set-auth-jwt" in response.headers.get("access-control-expose-headers", "")
        return response.headers["set-auth-jwt"]

    async def update(self, **fields: Any) -> None:
        """POST /api/auth/update-user, as `authClient.updateUser(...)` does."""
        response = await self.http.post("/api/auth/update-user", json=fields)
        assert response.status_code == 200, response.text


def header(token: str) -> dict[str, Any]:
    """The token's protected header."""
    return jwt.get_unverified_header(token)


def claims(token: str) -> dict[str, Any]:
    """The token's claims, unverified (the chat server is what verifies them)."""
    body = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(jwt.utils.base64url_decode(body))
    return decoded
