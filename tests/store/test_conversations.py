"""An answer's rows (server/store/conversations.py), on a real Postgres: what they hold, and that
each step is one statement (one round trip, the pool's own included), counted by asyncpg's query
logger on a pool made as the server makes it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from server.errors import NotFound
from server.store import Store
from server.store.base import POOL_OPTIONS
from server.store.conversations import MessageOutcome


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[tuple[Store, list[str]]]:
    statements: list[str] = []

    async def count(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda record: statements.append(record.query))

    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=2, init=count, **POOL_OPTIONS
    )
    store = Store(pool, database_url)
    await store.migrate()
    statements.clear()
    try:
        yield store, statements
    finally:
        await store.close()


async def answer(
    store: Store, user: str, conversation: str | None, question: str, tokens: int | None
) -> str:
    conversation_id, _, new = await store.open_conversation(user, conversation, 10)
    message_id = str(uuid.uuid4())
    await store.begin_message(
        message_id=message_id,
        conversation_id=conversation_id,
        new_conversation=new,
        user_id=user,
        stream_id=f"s-{message_id[:8]}",
        question=question,
        selection=None,
        chapter_id=None,
        model="m",
        owner="p",
    )
    outcome = MessageOutcome(status="complete", answer=f"answer to {question}")
    outcome.completion_tokens = tokens
    await store.finish_message(message_id, [], outcome, user_id=user)
    return conversation_id


async def test_a_new_conversation_s_answer_is_two_statements(
    store: tuple[Store, list[str]],
) -> None:
    db, statements = store
    user = f"u-{uuid.uuid4().hex[:8]}"
    conversation = await answer(db, user, None, "What is ROS 2?", tokens=7)
    assert len(statements) == 2, statements
    assert [c["title"] for c in await db.list_conversations(user)] == ["What is ROS 2?"]
    [message] = await db.list_messages(user, conversation)
    assert message["status"] == "complete" and message["completion_tokens"] == 7
    requests, tokens_today, _ = await db.count_request(user)
    assert (requests, tokens_today) == (1, 7), "the answer's tokens count in the user's day"


async def test_a_continued_conversation_brings_its_turns_in_one_statement(
    store: tuple[Store, list[str]],
) -> None:
    db, statements = store
    user = f"u-{uuid.uuid4().hex[:8]}"
    conversation = await answer(db, user, None, "first", tokens=None)
    await answer(db, user, conversation, "second", tokens=3)
    statements.clear()
    found, turns, new = await db.open_conversation(user, conversation, 10)
    assert len(statements) == 1
    assert (found, new) == (conversation, False)
    assert [t.question for t in turns] == ["first", "second"], "oldest first"
    _, last_only, _ = await db.open_conversation(user, conversation, 1)
    assert [t.question for t in last_only] == ["second"]
    _, tokens_today, _ = await db.count_request(user)
    assert tokens_today == 3, "an answer without usage adds nothing"


async def test_someone_else_s_or_a_malformed_conversation_is_not_found(
    store: tuple[Store, list[str]],
) -> None:
    db, _ = store
    conversation = await answer(db, "owner-1", None, "mine", tokens=None)
    for user, conv in [("intruder", conversation), ("owner-1", "not-a-uuid")]:
        with pytest.raises(NotFound):
            await db.open_conversation(user, conv, 10)
    with pytest.raises(NotFound):
        await db.open_conversation("owner-1", str(uuid.uuid4()), 10)
    _, turns, _ = await db.open_conversation("owner-1", conversation, 10)
    assert [t.answer for t in turns] == ["answer to mine"]
