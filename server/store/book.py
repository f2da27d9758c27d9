"""Book metadata written by ingest, and the cache of finished chapter renderings."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from server.store.base import StoreBase


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
class CachedChapter:
    """A finished personalized or translated chapter."""

    body: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class BookQueries(StoreBase):
    """Chapters, sections and the chapter cache."""

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
