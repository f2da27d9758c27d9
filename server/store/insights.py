"""What the authors' insights read: the questions of a period with how they were answered and
rated. Reader ids leave this module only to be counted (k-anonymity), never to be shown."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from server.store.base import StoreBase


@dataclasses.dataclass(frozen=True, slots=True)
class QuestionRow:
    """One question asked in the period, with what the answer recorded."""

    message_id: str
    reader: str  # only ever counted
    question: str
    selection: str | None
    page_chapter: str | None  # the chapter the reader was on, when the widget knew it
    sources: list[dict[str, Any]]
    answer: str
    status: str
    best_similarity: float | None
    not_covered: bool | None
    rating: int | None  # 1 up, -1 down
    comment: str | None
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class BookChapter:
    """A chapter of the book, in reading order, with its sections' titles."""

    id: str
    title: str
    url: str
    sections: list[str]


class InsightQueries(StoreBase):
    """Read-only queries for `textbook-chat insights` and GET /v1/insights."""

    async def questions_between(self, since: dt.datetime, until: dt.datetime) -> list[QuestionRow]:
        """Every question asked in [since, until), oldest first; answers still streaming are left
        out (they have no outcome yet)."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT m.id::text AS message_id, m.user_id AS reader, m.question,"
                " m.selection ->> 'text' AS selection, m.chapter_id AS page_chapter, m.sources,"
                " m.answer, m.status, m.best_similarity, m.not_covered, r.rating, r.comment,"
                " m.created_at"
                " FROM messages m LEFT JOIN ratings r ON r.message_id = m.id"
                " WHERE m.created_at >= $1 AND m.created_at < $2 AND m.status <> 'streaming'"
                " ORDER BY m.created_at, m.id",
                since,
                until,
            )
        return [
            QuestionRow(
                **{
                    **dict(r),
                    "sources": json.loads(r["sources"]),
                    # a `real` column: 0.1626, not 0.16259999573230743
                    "best_similarity": _round(r["best_similarity"]),
                }
            )
            for r in rows
        ]

    async def book_outline(self) -> list[BookChapter]:
        """The book's chapters in order, each with its sections' titles in order."""
        async with self._conn() as conn:
            chapters = await conn.fetch("SELECT id, title, url FROM chapters ORDER BY position, id")
            sections = await conn.fetch(
                "SELECT chapter_id, title FROM sections ORDER BY chapter_id, position"
            )
        by_chapter: dict[str, list[str]] = {}
        for s in sections:
            by_chapter.setdefault(s["chapter_id"], []).append(s["title"])
        return [
            BookChapter(c["id"], c["title"], c["url"], by_chapter.get(c["id"], []))
            for c in chapters
        ]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
