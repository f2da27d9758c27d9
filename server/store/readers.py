"""What readers do with their own data: rate answers, rename and delete conversations, export,
and erase everything the server keeps about them in one transaction."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from server.errors import InvalidMessage, NotFound
from server.store.base import StoreBase
from server.store.sessions import PRESENCE_TTL_S

RATING_VALUES = {"up": 1, "down": -1}
RATING_NAMES = {v: k for k, v in RATING_VALUES.items()}

# Every table holding a reader's user id, in the order the erasure empties it (children first).
# tests/readers checks this list against information_schema, so a new table cannot be forgotten.
ERASED_TABLES = (
    "ratings",
    "messages",
    "conversations",
    "chapter_cache_readers",
    "profiles",
    "streams",
    "rate_windows",
    "usage_daily",
    "presence",
)


@dataclasses.dataclass(frozen=True, slots=True)
class RatingRow:
    """A reader's rating of one of their answers."""

    message_id: str
    value: str  # "up" | "down"
    comment: str | None
    updated_at: str


class ReaderQueries(StoreBase):
    """A reader's ratings, conversations and the erasure of all their data."""

    # ---- ratings -------------------------------------------------------------------------

    async def rate_message(
        self, user_id: str, message_id: str, value: str, comment: str | None
    ) -> RatingRow:
        """Rate (or re-rate) one of the user's finished answers; NotFound for anyone else's."""
        mid = _uuid(message_id)
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "INSERT INTO ratings (message_id, user_id, rating, comment)"
                " SELECT id, user_id, $3, $4 FROM messages"
                "  WHERE id = $1 AND user_id = $2 AND status <> 'streaming'"
                " ON CONFLICT (message_id) DO UPDATE SET rating = $3, comment = $4, updated_at = now()"
                " RETURNING updated_at",
                mid, user_id, RATING_VALUES[value], comment,
            )  # fmt: skip
            if row is None:
                status = await conn.fetchval(
                    "SELECT status FROM messages WHERE id = $1 AND user_id = $2", mid, user_id
                )
                if status == "streaming":
                    raise InvalidMessage("the answer is still being written; rate it once it ends")
                raise NotFound("no such message")
        return RatingRow(str(mid), value, comment, row["updated_at"].isoformat())

    async def withdraw_rating(self, user_id: str, message_id: str) -> None:
        """Remove the user's rating of one of their answers (none is fine); NotFound for
        anyone else's message."""
        mid = _uuid(message_id)
        async with self._conn() as conn:
            owned = await conn.fetchval(
                "WITH gone AS (DELETE FROM ratings WHERE message_id = $1 AND user_id = $2)"
                " SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1 AND user_id = $2)",
                mid,
                user_id,
            )
        if not owned:
            raise NotFound("no such message")

    # ---- conversations -------------------------------------------------------------------

    async def rename_conversation(
        self, user_id: str, conversation_id: str, title: str
    ) -> dict[str, Any]:
        """Give one of the user's conversations a new title."""
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "UPDATE conversations SET title = $3 WHERE id = $1 AND user_id = $2"
                " RETURNING id::text AS id, title, created_at, updated_at",
                _uuid(conversation_id, "conversation"),
                user_id,
                title,
            )
        if row is None:
            raise NotFound("no such conversation")
        return {
            **dict(row),
            "created_at": row["created_at"].isoformat(),
            "updated_at": row["updated_at"].isoformat(),
        }

    async def conversation_streams(self, user_id: str, conversation_id: str) -> list[str]:
        """Stream ids of every answer in one of the user's conversations; NotFound for anyone
        else's."""
        conv = _uuid(conversation_id, "conversation")
        async with self._conn() as conn:
            owner = await conn.fetchval("SELECT user_id FROM conversations WHERE id = $1", conv)
            if owner != user_id:
                raise NotFound("no such conversation")
            rows = await conn.fetch(
                "SELECT stream_id FROM messages WHERE conversation_id = $1 AND user_id = $2",
                conv,
                user_id,
            )
        return [r["stream_id"] for r in rows]

    async def delete_conversations(self, user_id: str, conversation_id: str | None) -> int:
        """Delete one of the user's conversations (NotFound if it is not theirs), or all of them,
        with their messages, ratings and journaled answer streams; returns how many went."""
        conv = _uuid(conversation_id, "conversation") if conversation_id else None
        async with self._conn() as conn, conn.transaction():
            await _lock_reader(conn, user_id)
            ids = [
                r["id"]
                for r in await conn.fetch(
                    "SELECT id FROM conversations WHERE user_id = $1"
                    " AND ($2::uuid IS NULL OR id = $2) FOR UPDATE",
                    user_id,
                    conv,
                )
            ]
            if conv is not None and not ids:
                raise NotFound("no such conversation")
            streams = (
                "SELECT stream_id FROM messages WHERE user_id = $1"
                " AND conversation_id = ANY($2::uuid[])"
            )
            await conn.execute(
                "DELETE FROM stream_frames WHERE stream_key IN (SELECT stream_key FROM streams"
                f" WHERE user_id = $1 AND stream_id IN ({streams}))",
                user_id,
                ids,
            )
            await conn.execute(
                f"DELETE FROM streams WHERE user_id = $1 AND stream_id IN ({streams})", user_id, ids
            )
            # messages and their ratings go by ON DELETE CASCADE
            await conn.execute(
                "DELETE FROM conversations WHERE user_id = $1 AND id = ANY($2::uuid[])",
                user_id,
                ids,
            )
        return len(ids)

    # ---- streams of other processes ------------------------------------------------------

    async def unfinished_streams(self, user_id: str, except_owner: str) -> list[tuple[str, str]]:
        """(id, kind) of the user's streams still generating on other live processes."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT s.stream_id, s.kind FROM streams s JOIN owners o USING (owner)"
                " WHERE s.user_id = $1 AND NOT s.finished AND s.owner <> $2"
                " AND o.heartbeat > now() - make_interval(secs => $3)",
                user_id, except_owner, PRESENCE_TTL_S,
            )  # fmt: skip
        return [(r["stream_id"], r["kind"]) for r in rows]

    # ---- personalized chapters -----------------------------------------------------------

    async def note_chapter_reader(self, user_id: str, key: str) -> None:
        """A personalized chapter (cache key) was rendered for this user's profile."""
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO chapter_cache_readers (user_id, key) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING",
                user_id,
                key,
            )

    # ---- erasure and export --------------------------------------------------------------

    async def erase_reader(self, user_id: str, profile_hashes: Sequence[str]) -> dict[str, int]:
        """Delete everything kept about the user, in one transaction; returns rows deleted per
        table (all zero the second time). Personalized chapters rendered for them, or for a
        profile fingerprint in `profile_hashes`, go too: for readers who share that fingerprint
        they are only a cache, rendered again on the next request."""
        counts: dict[str, int] = {}
        async with self._conn() as conn, conn.transaction():
            await _lock_reader(conn, user_id)
            counts["stream_frames"] = _count(
                await conn.execute(
                    "DELETE FROM stream_frames WHERE stream_key IN"
                    " (SELECT stream_key FROM streams WHERE user_id = $1)",
                    user_id,
                )
            )
            counts["chapter_cache"] = _count(
                await conn.execute(
                    "DELETE FROM chapter_cache WHERE key IN"
                    " (SELECT key FROM chapter_cache_readers WHERE user_id = $1)"
                    " OR (mode = 'personalize' AND profile_hash = ANY($2::text[]))",
                    user_id,
                    list(profile_hashes),
                )
            )
            for table in ERASED_TABLES:
                counts[table] = _count(
                    await conn.execute(f"DELETE FROM {table} WHERE user_id = $1", user_id)
                )
        return counts

    async def export_reader(self, user_id: str) -> dict[str, Any]:
        """The user's profile and every conversation with its messages and ratings."""
        async with self._conn() as conn, conn.transaction(isolation="repeatable_read"):
            profile = await conn.fetchrow(
                "SELECT software_background, hardware_background, level, language FROM profiles"
                " WHERE user_id = $1",
                user_id,
            )
            conversations = await conn.fetch(
                "SELECT id, title, created_at, updated_at FROM conversations WHERE user_id = $1"
                " ORDER BY created_at",
                user_id,
            )
            messages = await conn.fetch(
                "SELECT m.id, m.conversation_id, m.question, m.selection, m.chapter_id, m.answer,"
                " m.sources, m.status, m.model, m.created_at, m.finished_at,"
                " r.rating, r.comment, r.updated_at AS rated_at"
                " FROM messages m LEFT JOIN ratings r ON r.message_id = m.id"
                " WHERE m.user_id = $1 ORDER BY m.created_at",
                user_id,
            )
        by_conversation: dict[uuid.UUID, list[dict[str, Any]]] = {}
        for m in messages:
            by_conversation.setdefault(m["conversation_id"], []).append(_exported_message(m))
        return {
            "user_id": user_id,
            "profile": dict(profile) if profile else None,
            "conversations": [
                {
                    "id": str(c["id"]),
                    "title": c["title"],
                    "created_at": c["created_at"].isoformat(),
                    "updated_at": c["updated_at"].isoformat(),
                    "messages": by_conversation.get(c["id"], []),
                }
                for c in conversations
            ],
        }


def rating_of(value: int | None, comment: str | None) -> dict[str, Any] | None:
    """A rating as the API shows it, from the row's columns."""
    if value is None:
        return None
    return {"value": RATING_NAMES[value], "comment": comment}


def _exported_message(m: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(m["id"]),
        "question": m["question"],
        "selection": json.loads(m["selection"]) if m["selection"] else None,
        "chapter_id": m["chapter_id"],
        "answer": m["answer"],
        "sources": json.loads(m["sources"]),
        "status": m["status"],
        "model": m["model"],
        "created_at": m["created_at"].isoformat(),
        "finished_at": m["finished_at"].isoformat() if m["finished_at"] else None,
        "rating": rating_of(m["rating"], m["comment"]),
    }


async def _lock_reader(conn: Any, user_id: str) -> None:
    # Deletions of one reader's data run one at a time: concurrent ones would otherwise take
    # the same rows' locks in different orders and deadlock.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('tc-reader:' || $1, 0))", user_id
    )


def _count(status: str) -> int:
    """Rows affected, from a command tag such as `DELETE 3`."""
    return int(status.rsplit(" ", 1)[-1])


def _uuid(value: str, what: str = "message") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"no such {what}") from None
