"""Postgres: migrations, book metadata, conversations and messages. All SQL lives here and in sql/."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from protocol.profile import Profile
from server.errors import DatabaseUnavailable, NotFound

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "sql"
_MIGRATION_NAME = re.compile(r"^(\d{3,})_[\w-]+\.sql$")
_MIGRATION_LOCK = 0x7E47B00C  # advisory lock id: concurrent starters migrate one at a time

_UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    TimeoutError,
)


@contextlib.contextmanager
def _unavailable_as_chat_error() -> Any:
    try:
        yield
    except _UNAVAILABLE as exc:
        log.warning("database unavailable: %s", type(exc).__name__)
        raise DatabaseUnavailable("the database is unavailable; try again shortly") from exc


@dataclasses.dataclass(frozen=True, slots=True)
class ChapterRow:
    """A chapter's metadata (and markdown) as stored by ingest."""

    id: str
    title: str
    url: str
    source_path: str
    position: int
    content_hash: str
    markdown: str


@dataclasses.dataclass(frozen=True, slots=True)
class SectionRow:
    """A section of a chapter."""

    id: str
    chapter_id: str
    title: str
    heading_path: list[str]
    level: int
    position: int


@dataclasses.dataclass(frozen=True, slots=True)
class Turn:
    """One earlier question and its answer, for conversation history."""

    question: str
    answer: str


@dataclasses.dataclass(frozen=True, slots=True)
class CachedChapter:
    """A finished personalized or translated chapter."""

    body: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclasses.dataclass(slots=True)
class MessageOutcome:
    """How a message ended, as saved."""

    status: str
    answer: str
    error_code: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    timings: dict[str, float] | None = None


class Store:
    """The project's Postgres access; one pool per process."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 1, max_size: int = 10) -> Store:
        """Open a pool; raise DatabaseUnavailable if the server cannot be reached."""
        with _unavailable_as_chat_error():
            pool = await asyncpg.create_pool(
                dsn, min_size=min_size, max_size=max_size, command_timeout=30, init=_init_connection
            )
        return cls(pool)

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        with _unavailable_as_chat_error():
            async with self._pool.acquire(timeout=10) as conn:
                yield conn

    async def ping(self) -> None:
        """Raise DatabaseUnavailable unless a trivial query succeeds."""
        async with self._conn() as conn:
            await conn.fetchval("SELECT 1")

    # ---- migrations --------------------------------------------------------------------

    async def migrate(self, directory: Path = MIGRATIONS_DIR) -> list[str]:
        """Apply pending numbered migrations in order; return the names applied."""
        files = await asyncio.to_thread(_migration_files, directory)
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

    # ---- book metadata -----------------------------------------------------------------

    async def chapter_hashes(self) -> dict[str, str]:
        """Chapter id → content hash of every stored chapter."""
        async with self._conn() as conn:
            rows = await conn.fetch("SELECT id, content_hash FROM chapters")
        return {r["id"]: r["content_hash"] for r in rows}

    async def save_chapter(self, chapter: ChapterRow, sections: Sequence[SectionRow]) -> None:
        """Insert or replace a chapter and its sections."""
        async with self._conn() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO chapters (id, title, url, source_path, position, content_hash, markdown)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT (id) DO UPDATE SET title = $2, url = $3, source_path = $4, position = $5,"
                " content_hash = $6, markdown = $7, updated_at = now()",
                chapter.id, chapter.title, chapter.url, chapter.source_path,
                chapter.position, chapter.content_hash, chapter.markdown,
            )  # fmt: skip
            await conn.execute("DELETE FROM sections WHERE chapter_id = $1", chapter.id)
            await conn.executemany(
                "INSERT INTO sections (id, chapter_id, title, heading_path, level, position)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                [
                    (s.id, s.chapter_id, s.title, s.heading_path, s.level, s.position)
                    for s in sections
                ],
            )

    async def delete_chapters_except(self, keep: Iterable[str]) -> list[str]:
        """Delete chapters not in `keep`; return the deleted ids."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "DELETE FROM chapters WHERE NOT (id = ANY($1::text[])) RETURNING id", list(keep)
            )
        return [r["id"] for r in rows]

    async def get_chapter(self, chapter_id: str) -> ChapterRow | None:
        """A chapter by id, or None."""
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT id, title, url, source_path, position, content_hash, markdown FROM chapters WHERE id = $1",
                chapter_id,
            )
        return ChapterRow(**dict(row)) if row else None

    async def chapter_titles(self) -> dict[str, tuple[str, str]]:
        """Chapter id → (title, url) for every chapter."""
        async with self._conn() as conn:
            rows = await conn.fetch("SELECT id, title, url FROM chapters ORDER BY position")
        return {r["id"]: (r["title"], r["url"]) for r in rows}

    # ---- conversations -----------------------------------------------------------------

    async def open_conversation(
        self, user_id: str, conversation_id: str | None, title: str, history_limit: int
    ) -> tuple[str, list[Turn]]:
        """Continue the user's conversation (with its recent turns) or start a new one."""
        async with self._conn() as conn:
            if conversation_id is None:
                new_id = uuid.uuid4()
                await conn.execute(
                    "INSERT INTO conversations (id, user_id, title) VALUES ($1, $2, $3)",
                    new_id,
                    user_id,
                    title[:200],
                )
                return str(new_id), []
            conv = _parse_uuid(conversation_id)
            owner = (
                await conn.fetchval("SELECT user_id FROM conversations WHERE id = $1", conv)
                if conv
                else None
            )
            if owner != user_id:
                raise NotFound("no such conversation")
            rows = await conn.fetch(
                "SELECT question, answer FROM messages WHERE conversation_id = $1 AND status = 'complete'"
                " ORDER BY created_at DESC LIMIT $2",
                conv,
                history_limit,
            )
        return conversation_id, [Turn(r["question"], r["answer"]) for r in reversed(rows)]

    async def begin_message(
        self,
        *,
        message_id: str,
        conversation_id: str,
        user_id: str,
        stream_id: str,
        question: str,
        selection: dict[str, Any] | None,
        chapter_id: str | None,
        model: str,
    ) -> None:
        """Record a message as streaming, so a partial answer can be saved whatever happens."""
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO messages (id, conversation_id, user_id, stream_id, question, selection, chapter_id,"
                " status, model) VALUES ($1, $2, $3, $4, $5, $6, $7, 'streaming', $8)",
                uuid.UUID(message_id), uuid.UUID(conversation_id), user_id, stream_id, question,
                json.dumps(selection) if selection else None, chapter_id, model,
            )  # fmt: skip

    async def finish_message(
        self, message_id: str, sources: list[dict[str, Any]], outcome: MessageOutcome
    ) -> None:
        """Save how a message ended: its answer (partial if cut short), sources, usage and status."""
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE messages SET status = $2, answer = $3, sources = $4, error_code = $5, prompt_tokens = $6,"
                " completion_tokens = $7, timings = $8, finished_at = now() WHERE id = $1",
                uuid.UUID(message_id), outcome.status, outcome.answer, json.dumps(sources), outcome.error_code,
                outcome.prompt_tokens, outcome.completion_tokens,
                json.dumps(outcome.timings) if outcome.timings else None,
            )  # fmt: skip
            await conn.execute(
                "UPDATE conversations SET updated_at = now() WHERE id ="
                " (SELECT conversation_id FROM messages WHERE id = $1)",
                uuid.UUID(message_id),
            )

    async def list_conversations(self, user_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The user's conversations, newest first."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT id::text AS id, title, created_at, updated_at FROM conversations"
                " WHERE user_id = $1 ORDER BY updated_at DESC LIMIT $2",
                user_id,
                limit,
            )
        return [
            {
                **dict(r),
                "created_at": r["created_at"].isoformat(),
                "updated_at": r["updated_at"].isoformat(),
            }
            for r in rows
        ]

    async def list_messages(self, user_id: str, conversation_id: str) -> list[dict[str, Any]]:
        """Messages of the user's conversation, oldest first; NotFound for anyone else's."""
        conv = _parse_uuid(conversation_id)
        async with self._conn() as conn:
            owner = (
                await conn.fetchval("SELECT user_id FROM conversations WHERE id = $1", conv)
                if conv
                else None
            )
            if owner != user_id:
                raise NotFound("no such conversation")
            rows = await conn.fetch(
                "SELECT id::text AS id, stream_id, question, selection, chapter_id, answer, sources, status,"
                " error_code, prompt_tokens, completion_tokens, model, timings, created_at, finished_at"
                " FROM messages WHERE conversation_id = $1 ORDER BY created_at",
                conv,
            )
        out = []
        for r in rows:
            item = dict(r)
            for key in ("selection", "sources", "timings"):
                item[key] = json.loads(item[key]) if item[key] is not None else None
            item["created_at"] = r["created_at"].isoformat()
            item["finished_at"] = r["finished_at"].isoformat() if r["finished_at"] else None
            out.append(item)
        return out

    # ---- profiles ----------------------------------------------------------------------

    async def get_profile(self, user_id: str) -> Profile | None:
        """The reader's saved profile, or None."""
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT software_background, hardware_background, level, language FROM profiles"
                " WHERE user_id = $1",
                user_id,
            )
        return Profile(**dict(row)) if row else None

    async def put_profile(self, user_id: str, profile: Profile) -> None:
        """Save (replace) the reader's profile."""
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO profiles (user_id, software_background, hardware_background, level, language)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id) DO UPDATE SET"
                " software_background = $2, hardware_background = $3, level = $4, language = $5,"
                " updated_at = now()",
                user_id, profile.software_background, profile.hardware_background,
                profile.level, profile.language,
            )  # fmt: skip

    # ---- chapter cache -----------------------------------------------------------------

    async def get_cached_chapter(self, key: str) -> CachedChapter | None:
        """A finished chapter rendering by cache key, or None."""
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT body, prompt_tokens, completion_tokens, finish_reason FROM chapter_cache WHERE key = $1",
                key,
            )
        return CachedChapter(**dict(row)) if row else None

    async def put_cached_chapter(
        self, key: str, fields: dict[str, str], chapter: CachedChapter
    ) -> None:
        """Keep a finished rendering; `fields` are the parts of the key, for inspection and cleanup."""
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO chapter_cache (key, chapter_id, content_hash, mode, language, profile_hash,"
                " model, body, prompt_tokens, completion_tokens, finish_reason)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (key) DO NOTHING",
                key, fields["chapter_id"], fields["content_hash"], fields["mode"], fields["language"],
                fields["profile_hash"], fields["model"], chapter.body, chapter.prompt_tokens,
                chapter.completion_tokens, chapter.finish_reason,
            )  # fmt: skip

    # ---- stream journal ----------------------------------------------------------------

    async def write_journal(
        self,
        starts: list[tuple[str, str, str, str]],
        frames: list[tuple[str, int, str]],
        progress: list[tuple[str, str, str, int, bool]],
        owner: str,
    ) -> None:
        """Persist a batch: new streams, their frames, and how far each got."""
        async with self._conn() as conn, conn.transaction():
            for user_id, stream_id, key, kind in starts:
                await conn.execute(
                    "DELETE FROM stream_frames WHERE stream_key ="
                    " (SELECT stream_key FROM streams WHERE user_id = $1 AND stream_id = $2)",
                    user_id,
                    stream_id,
                )
                await conn.execute(
                    "INSERT INTO streams (user_id, stream_id, stream_key, kind, owner) VALUES ($1, $2, $3, $4, $5)"
                    " ON CONFLICT (user_id, stream_id) DO UPDATE SET stream_key = $3, kind = $4, owner = $5,"
                    " last_seq = 0, finished = false, created_at = now(), updated_at = now()",
                    user_id, stream_id, key, kind, owner,
                )  # fmt: skip
            if frames:
                await conn.copy_records_to_table(
                    "stream_frames",
                    records=_runs(frames),
                    columns=("stream_key", "first_seq", "last_seq", "frames"),
                )
            if progress:
                await conn.executemany(
                    "UPDATE streams SET last_seq = $4, finished = $5, updated_at = now()"
                    " WHERE user_id = $2 AND stream_id = $3 AND stream_key = $1",
                    progress,
                )

    async def stream_record(
        self, user_id: str, stream_id: str, max_age_s: float
    ) -> tuple[str, str, int, bool] | None:
        """(key, owner, last_seq, finished) of a user's stream touched within `max_age_s`, or None."""
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT stream_key, owner, last_seq, finished FROM streams WHERE user_id = $1 AND stream_id = $2"
                " AND updated_at > now() - make_interval(secs => $3)",
                user_id, stream_id, max_age_s,
            )  # fmt: skip
        return (row["stream_key"], row["owner"], row["last_seq"], row["finished"]) if row else None

    async def stream_frames(self, key: str, after_seq: int) -> list[tuple[int, str]]:
        """Stored frames of one stream after `after_seq`, in order."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT first_seq, frames FROM stream_frames WHERE stream_key = $1 AND last_seq > $2"
                " ORDER BY first_seq",
                key,
                after_seq,
            )
        out = []
        for row in rows:
            for offset, frame in enumerate(row["frames"].split("\n")):
                seq = row["first_seq"] + offset
                if seq > after_seq:
                    out.append((seq, frame))
        return out

    async def prune_streams(self, finished_age_s: float, abandoned_age_s: float) -> int:
        """Forget finished streams older than `finished_age_s` and unfinished ones nobody updated."""
        async with self._conn() as conn, conn.transaction():
            keys = await conn.fetch(
                "DELETE FROM streams WHERE (finished AND updated_at < now() - make_interval(secs => $1))"
                " OR updated_at < now() - make_interval(secs => $2) RETURNING stream_key",
                finished_age_s, abandoned_age_s,
            )  # fmt: skip
            await conn.execute(
                "DELETE FROM stream_frames WHERE stream_key = ANY($1::text[])",
                [k["stream_key"] for k in keys],
            )
        return len(keys)

    # ---- limits ------------------------------------------------------------------------

    async def count_request(self, user_id: str) -> tuple[int, int, float]:
        """Count a request in the user's current minute; return (requests this minute,
        completion tokens today, seconds left in the minute)."""
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "WITH hit AS (INSERT INTO rate_windows (user_id, window_start, requests)"
                " VALUES ($1, date_trunc('minute', now()), 1) ON CONFLICT (user_id, window_start)"
                " DO UPDATE SET requests = rate_windows.requests + 1 RETURNING requests)"
                " SELECT (SELECT requests FROM hit) AS requests,"
                " COALESCE((SELECT completion_tokens FROM usage_daily WHERE user_id = $1"
                " AND day = (now() AT TIME ZONE 'utc')::date), 0) AS tokens,"
                " extract(epoch FROM date_trunc('minute', now()) + interval '1 minute' - now()) AS left_s",
                user_id,
            )
        assert row is not None
        return int(row["requests"]), int(row["tokens"]), float(row["left_s"])

    async def add_usage(self, user_id: str, completion_tokens: int) -> None:
        """Add to the user's completion tokens for today (UTC)."""
        if completion_tokens <= 0:
            return
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO usage_daily (user_id, day, completion_tokens)"
                " VALUES ($1, (now() AT TIME ZONE 'utc')::date, $2) ON CONFLICT (user_id, day)"
                " DO UPDATE SET completion_tokens = usage_daily.completion_tokens + $2",
                user_id,
                completion_tokens,
            )

    async def prune_rate_windows(self) -> None:
        """Forget minute windows that are over."""
        async with self._conn() as conn:
            await conn.execute(
                "DELETE FROM rate_windows WHERE window_start < now() - interval '5 minutes'"
            )


def _runs(frames: list[tuple[str, int, str]]) -> list[tuple[str, int, int, str]]:
    """Consecutive frames of each stream as (key, first_seq, last_seq, frames joined by newlines)."""
    runs: list[tuple[str, int, int, str]] = []
    by_key: dict[str, list[tuple[int, str]]] = {}
    for key, seq, frame in frames:
        by_key.setdefault(key, []).append((seq, frame))
    for key, items in by_key.items():
        start = 0
        for i in range(1, len(items) + 1):
            if i == len(items) or items[i][0] != items[i - 1][0] + 1:
                run = items[start:i]
                runs.append((key, run[0][0], run[-1][0], "\n".join(f for _, f in run)))
                start = i
    return runs


def _migration_files(directory: Path) -> list[tuple[int, Path]]:
    found = ((_MIGRATION_NAME.match(p.name), p) for p in directory.glob("*.sql"))
    return sorted((int(m.group(1)), p) for m, p in found if m)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.execute("SET application_name = 'textbook-chat'")


def _parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
