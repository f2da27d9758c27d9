"""What the readers' tests share: HTTP as a reader, and what the database still holds of one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx

from tests.conftest import LiveServer, token_for


def auth(user: str, **claims: Any) -> dict[str, str]:
    """The Authorization header of a reader."""
    return {"Authorization": f"Bearer {token_for(user, **claims)}"}


def api(server: LiveServer) -> httpx.AsyncClient:
    """An HTTP client on the server."""
    return httpx.AsyncClient(base_url=server.http_url, timeout=30.0)


async def tables_with_user_id(database_url: str) -> list[str]:
    """Every table of the schema that has a user_id column."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND column_name = 'user_id' ORDER BY table_name"
        )
    finally:
        await conn.close()
    return [r["table_name"] for r in rows]


async def rows_of(database_url: str, user: str) -> dict[str, int]:
    """Rows holding this user id, per table that has a user_id column (tables with none left out)."""
    conn = await asyncpg.connect(database_url)
    try:
        counts = {}
        for table in await tables_with_user_id(database_url):
            n = await conn.fetchval(f'SELECT count(*) FROM "{table}" WHERE user_id = $1', user)
            if n:
                counts[table] = n
    finally:
        await conn.close()
    return counts


async def fetch(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run one query on a connection of its own."""
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
    """Poll an async check until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout} s: {check}")
        await asyncio.sleep(0.05)
