"""Conversations, messages and reader profiles."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import asyncpg

from protocol.profile import Profile
from server.errors import NotFound
from server.store.base import StoreBase, add_usage_sql
from server.store.readers import rating_of


@dataclasses.dataclass(frozen=True, slots=True)
class Turn:
    """One earlier question and its answer, for conversation history."""

    question: str
    answer: str


@dataclasses.dataclass(slots=True)
class MessageOutcome:
    """How a message ended, as saved."""

    status: str
    answer: str
    error_code: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    timings: dict[str, float] | None = None
    best_similarity: float | None = None  # see sql/009_ratings_and_insights.sql
    not_covered: bool | None = None


class ConversationQueries(StoreBase):
    """The readers' own data."""

    async def open_conversation(
        self, user_id: str, conversation_id: str | None, history_limit: int
    ) -> tuple[str, list[Turn], bool]:
        """The user's conversation with its recent turns, or a new one's id (the conversation is
        created with its first message, in `begin_message`'s statement); True when it is new."""
        if conversation_id is None:
            return str(uuid.uuid4()), [], True
        conv = _parse_uuid(conversation_id)
        if conv is None:
            raise NotFound("no such conversation")
        async with self._conn() as conn:
            # One round trip: the owner and the turns (none: one row of NULLs).
            rows = await conn.fetch(
                "SELECT c.user_id, t.question, t.answer FROM conversations c LEFT JOIN LATERAL"
                " (SELECT question, answer, created_at FROM messages WHERE conversation_id = c.id"
                " AND status = 'complete' ORDER BY created_at DESC LIMIT $2) t ON true"
                " WHERE c.id = $1 ORDER BY t.created_at",
                conv,
                history_limit,
            )
        if not rows or rows[0]["user_id"] != user_id:
            raise NotFound("no such conversation")
        turns = [Turn(r["question"], r["answer"]) for r in rows if r["question"] is not None]
        return conversation_id, turns, False

    async def begin_message(
        self,
        *,
        message_id: str,
        conversation_id: str,
        new_conversation: bool,
        user_id: str,
        stream_id: str,
        question: str,
        selection: dict[str, Any] | None,
        chapter_id: str | None,
        model: str,
        owner: str,
    ) -> None:
        """Record a message as streaming (by the process `owner`), so a partial answer can be
        saved whatever happens, even to that process; a new conversation (titled by its first
        question) in the same statement."""
        insert_message = (
            "INSERT INTO messages (id, conversation_id, user_id, stream_id, question, selection,"
            " chapter_id, status, model, owner)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, 'streaming', $8, $9)"
        )
        if new_conversation:
            statement = (
                "WITH c AS (INSERT INTO conversations (id, user_id, title) VALUES ($2, $3, $10))"
                f" {insert_message}"
            )
            extra: tuple[str, ...] = (question[:200],)
        else:
            statement, extra = insert_message, ()
        async with self._conn() as conn:
            try:
                await conn.execute(
                    statement,
                    uuid.UUID(message_id), uuid.UUID(conversation_id), user_id, stream_id, question,
                    json.dumps(selection) if selection else None, chapter_id, model, owner, *extra,
                )  # fmt: skip
            except asyncpg.ForeignKeyViolationError:  # the reader deleted it meanwhile
                raise NotFound("no such conversation") from None

    async def finish_message(
        self,
        message_id: str,
        sources: list[dict[str, Any]],
        outcome: MessageOutcome,
        *,
        user_id: str,
    ) -> None:
        """Save how a message ended (its answer, partial if cut short, sources, usage and
        status), touch its conversation and add its completion tokens to the user's day: one
        statement, one round trip."""
        async with self._conn() as conn:
            await conn.execute(
                "WITH m AS (UPDATE messages SET status = $2, answer = $3, sources = $4, error_code = $5,"
                " prompt_tokens = $6, completion_tokens = $7, timings = $8, best_similarity = $9,"
                " not_covered = $10, finished_at = now() WHERE id = $1 RETURNING conversation_id),"
                " c AS (UPDATE conversations SET updated_at = now()"
                " WHERE id = (SELECT conversation_id FROM m))"
                f" {add_usage_sql('$11', '$7')}",
                uuid.UUID(message_id), outcome.status, outcome.answer, json.dumps(sources), outcome.error_code,
                outcome.prompt_tokens, outcome.completion_tokens,
                json.dumps(outcome.timings) if outcome.timings else None,
                outcome.best_similarity, outcome.not_covered, user_id,
            )  # fmt: skip

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
        async with self._conn() as conn:
            conv = await _owned_conversation(conn, user_id, conversation_id)
            rows = await conn.fetch(
                "SELECT m.id::text AS id, stream_id, question, selection, chapter_id, answer, sources, status,"
                " error_code, prompt_tokens, completion_tokens, model, timings, m.created_at, finished_at,"
                " r.rating, r.comment AS rating_comment"
                " FROM messages m LEFT JOIN ratings r ON r.message_id = m.id"
                " WHERE conversation_id = $1 ORDER BY m.created_at",
                conv,
            )  # fmt: skip
        out = []
        for r in rows:
            item = dict(r)
            item["rating"] = rating_of(item.pop("rating"), item.pop("rating_comment"))
            for key in ("selection", "sources", "timings"):
                item[key] = json.loads(item[key]) if item[key] is not None else None
            item["created_at"] = r["created_at"].isoformat()
            item["finished_at"] = r["finished_at"].isoformat() if r["finished_at"] else None
            out.append(item)
        return out

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


async def _owned_conversation(conn: Any, user_id: str, conversation_id: str) -> uuid.UUID:
    """The conversation's id if it belongs to this user; NotFound otherwise (also for bad ids)."""
    conv = _parse_uuid(conversation_id)
    owner = (
        await conn.fetchval("SELECT user_id FROM conversations WHERE id = $1", conv)
        if conv
        else None
    )
    if conv is None or owner != user_id:
        raise NotFound("no such conversation")
    return conv


def _parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
