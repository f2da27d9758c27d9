"""Shared fixtures: a real Postgres database, the fake model server, a live uvicorn server, tokens."""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI does; see server/cli.py

import asyncio
import contextlib
import dataclasses
import secrets
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import uvicorn

from server.auth import mint_token
from server.services import Services
from server.settings import Settings
from server.tools.fake_llm import FakeLLM, FakeLLMConfig
from server.web.app import create_app
from server.web.serve import make_server

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT.parent / "shared" / "corpora"
JWT_SECRET = "test-secret-" + "x" * 40
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def _reachable(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def tmp_data_dir() -> Iterator[Path]:
    """A DATA_DIR for the whole run."""
    with tempfile.TemporaryDirectory(prefix="tc-test-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
async def admin_dsn(tmp_data_dir: Path) -> AsyncIterator[str]:
    """A Postgres server to create test databases on: DATABASE_URL, the local one, or an embedded one."""
    dsn = os.environ.get("DATABASE_URL") or DEFAULT_ADMIN_DSN
    if await _reachable(dsn):
        yield dsn
        return
    from server.store.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(tmp_data_dir)
    yield await asyncio.to_thread(pg.start)
    await asyncio.to_thread(pg.stop)


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str) -> AsyncIterator[str]:
    """A new empty database, dropped afterwards."""
    name = f"tc_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(admin_dsn)._replace(path="/" + name))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
async def database_url(admin_dsn: str) -> AsyncIterator[str]:
    """A database for the whole test session."""
    async with fresh_database(admin_dsn) as dsn:
        yield dsn


@pytest.fixture(scope="session")
async def fake_llm() -> AsyncIterator[FakeLLM]:
    """The OpenAI-compatible fake model server, on loopback."""
    server = FakeLLM()
    await server.start()
    yield server
    await server.stop()


def make_settings(data_dir: Path, database_url: str, **overrides: str) -> Settings:
    """Settings as the server would read them from this environment."""
    env = {
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": database_url,
        "JWT_SECRET": JWT_SECRET,
        **overrides,
    }
    return Settings.from_env(env)


@contextlib.contextmanager
def model_config(fake_llm: FakeLLM, **config: Any) -> Iterator[FakeLLM]:
    """The fake model behaving as told for the block; restored afterwards."""
    saved = fake_llm.config
    fake_llm.config = FakeLLMConfig(**config)
    try:
        yield fake_llm
    finally:
        fake_llm.config = saved


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class AppServer:
    """Any ASGI app under a real uvicorn on a loopback port, in the test's event loop."""

    def __init__(self, app: Any, server: uvicorn.Server | None = None) -> None:
        self.port = free_port()
        if server is None:
            config = uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
            )
            server = uvicorn.Server(config)
        self.server = server
        self.task: asyncio.Task[None] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Any:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        assert self.task is not None
        await self.task


class LiveServer(AppServer):
    """The chat app on given services."""

    def __init__(self, services: Services, port: int | None = None) -> None:
        port = port or free_port()
        app = create_app(services.settings, services=services)
        super().__init__(app, make_server(app, services, "127.0.0.1", port, log_level="warning"))
        self.port = port
        self.services = services

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/chat"


@pytest.fixture(scope="session")
async def services(
    tmp_data_dir: Path, database_url: str, fake_llm: FakeLLM
) -> AsyncIterator[Services]:
    """Services on the real test database, the embedded Qdrant engine and the fake model."""
    settings = make_settings(
        tmp_data_dir / "main",
        database_url,
        OPENAI_BASE_URL=fake_llm.base_url,
        OPENAI_API_KEY="test-key",
    )
    started = await Services.start(settings, loopback=True)
    yield started
    await started.close()


@contextlib.asynccontextmanager
async def server_with(services: Services, **settings: Any) -> AsyncIterator[LiveServer]:
    """A server on the shared components with some settings changed (and its own session state)."""
    changed = services.settings.replace(**settings)
    async with LiveServer(dataclasses.replace(services, settings=changed)) as server:
        yield server


@pytest.fixture(scope="session")
async def live(services: Services) -> AsyncIterator[LiveServer]:
    """The full server, listening on loopback."""
    async with LiveServer(services) as server:
        yield server


def token_for(sub: str, ttl: int = 600, **extra: Any) -> str:
    """An HS256 token for `sub` signed with the test secret."""
    return mint_token(JWT_SECRET, sub, ttl, extra=extra or None)
