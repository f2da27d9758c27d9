"""The Postgres pool, its error mapping and the migrations; the other store modules build on it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from server.errors import ConfigError, DatabaseUnavailable

log = logging.getLogger(__name__)

# server/migrations links to the checkout's sql/, so an installed wheel carries the files
MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{3,})_[\w-]+\.sql$")
_MIGRATION_LOCK = 0x7E47B00C  # advisory lock id: concurrent starters migrate one at a time

_UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.InternalClientError,  # seen while the server restarts mid-operation
    TimeoutError,
)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to undo when a connection goes back to the pool: no statement here leaves session
    state (no SET, LISTEN, cursor or held advisory lock; asyncpg rolls back an open transaction
    itself), and asyncpg's default reset query was one more round trip per acquire."""


# How the server's connections are made: also by tests that count a store's statements.
POOL_OPTIONS: dict[str, Any] = {
    "command_timeout": 30,
    "server_settings": {"application_name": "textbook-chat"},
    "reset": _keep_session,
}


def add_usage_sql(user: str, tokens: str) -> str:
    """SQL adding `tokens` completion tokens (if > 0) to `user`'s day (UTC); both are SQL
    parameters such as "$1", so the statement can end a larger one."""
    return (
        "INSERT INTO usage_daily (user_id, day, completion_tokens)"
        f" SELECT {user}::text, (now() AT TIME ZONE 'utc')::date, {tokens}::integer"
        f" WHERE {tokens}::integer > 0"
        " ON CONFLICT (user_id, day)"
        " DO UPDATE SET completion_tokens = usage_daily.completion_tokens + EXCLUDED.completion_tokens"
    )


@contextlib.contextmanager
def _unavailable_as_chat_error() -> Any:
    try:
        yield
    except _UNAVAILABLE as exc:
        log.warning("database unavailable: %s", type(exc).__name__)
        raise DatabaseUnavailable("the database is unavailable; try again shortly") from exc


class StoreBase:
    """A pool of connections to the project's database."""

    def __init__(self, pool: asyncpg.Pool, dsn: str | None = None, *, wait_s: float = 30.0) -> None:
        self._pool = pool
        self._wait_s = wait_s
        self.dsn = dsn  # for connections outside the pool (LISTEN)

    @classmethod
    async def connect(
        cls, dsn: str, *, min_size: int = 2, max_size: int = 20, wait_s: float = 30.0
    ) -> Self:
        """Open a pool of up to `max_size` connections, where a query waits up to `wait_s` for
        one; raise DatabaseUnavailable if the server cannot be reached."""
        with _unavailable_as_chat_error():
            pool = await asyncpg.create_pool(
                dsn, min_size=min_size, max_size=max_size, **POOL_OPTIONS
            )
        return cls(pool, dsn, wait_s=wait_s)

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        with _unavailable_as_chat_error():
            async with self._pool.acquire(timeout=self._wait_s) as conn:
                yield conn

    async def ping(self) -> None:
        """Raise DatabaseUnavailable unless a trivial query succeeds."""
        async with self._conn() as conn:
            await conn.fetchval("SELECT 1")

    # ---- migrations --------------------------------------------------------------------

    async def migrate(self, directory: Path = MIGRATIONS_DIR) -> list[str]:
        """Apply pending numbered migrations in order; return the names applied."""
        files = await asyncio.to_thread(_migration_files, directory)
        if not files:
            raise ConfigError(f"no migrations in {directory}: a broken installation")
        applied: list[str] = []
        async with self._conn() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {
                    r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")
                }
                for version, path in files:
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(await asyncio.to_thread(path.read_text))
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                            version,
                            path.name,
                        )
                    applied.append(path.name)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        return applied


def _migration_files(directory: Path) -> list[tuple[int, Path]]:
    found = ((_MIGRATION_NAME.match(p.name), p) for p in directory.glob("*.sql"))
    return sorted((int(m.group(1)), p) for m, p in found if m)
