"""The frame journal against real Postgres: stopping it never loses a batch being written."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import asyncpg

from server.cluster.journal import FrameJournal
from server.services import Services


@dataclasses.dataclass
class JournaledStream:
    user_id: str
    id: str
    key: str
    kind: str = "answer"
    ended: bool = False


def _frame(seq: int, kind: str = "delta") -> str:
    return json.dumps({"type": kind, "id": "s", "seq": seq})


async def test_close_waits_for_the_write_in_flight(services: Services, database_url: str) -> None:
    store = services.store
    journal = FrameJournal(store)
    stream = JournaledStream("journal-user", "s", "journal-close-key")
    journal.started(stream)
    journal.frame(stream, 1, _frame(1))
    blocker = await asyncpg.connect(database_url)
    try:
        # the write of frame 1 starts and waits on the lock
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE streams IN EXCLUSIVE MODE")
            await asyncio.sleep(0.3)
            journal.frame(stream, 2, _frame(2))
            stream.ended = True
            journal.frame(stream, 3, _frame(3, "done"))
            closing = asyncio.create_task(journal.close())
            await asyncio.sleep(0.3)
            assert not closing.done(), "close waits for the write in flight"
        await asyncio.wait_for(closing, 10)
    finally:
        await blocker.close()
    stored = await store.stream_frames("journal-close-key", 0)
    assert [seq for seq, _ in stored] == [1, 2, 3]
    record = await store.stream_record("journal-user", "s", 600)
    assert record is not None and (record.last_seq, record.finished) == (3, True)


async def test_a_batch_retried_after_its_commit_was_lost_keeps_the_new_frames(
    services: Services,
) -> None:
    """When Postgres restarts, a batch's commit can succeed while its answer is lost; the
    journal then writes that batch again with the next frames. That retry once failed on its own
    earlier rows (a unique violation), and the whole batch, every stream's frames, was dropped."""
    store = services.store
    key = "journal-retry-key"
    start = [("journal-user", "retry", key, "answer")]
    first = [(key, seq, _frame(seq)) for seq in (1, 2, 3)]
    await store.write_journal(start, first, [(key, "journal-user", "retry", 3, False)], "p")
    retried = first + [(key, seq, _frame(seq)) for seq in (4, 5)]
    await store.write_journal(start, retried, [(key, "journal-user", "retry", 5, False)], "p")
    later = [(key, 6, _frame(6, "done"))]
    await store.write_journal([], later, [(key, "journal-user", "retry", 6, True)], "p")
    assert [seq for seq, _ in await store.stream_frames(key, 0)] == [1, 2, 3, 4, 5, 6]
    # the same when the stream began in an earlier batch
    key = "journal-retry-later-key"
    start = [("journal-user", "retry-later", key, "answer")]
    head = [(key, seq, _frame(seq)) for seq in (1, 2)]
    await store.write_journal(start, head, [(key, "journal-user", "retry-later", 2, False)], "p")
    lost = [(key, seq, _frame(seq)) for seq in (3, 4)]
    await store.write_journal([], lost, [(key, "journal-user", "retry-later", 4, False)], "p")
    retry = [*lost, (key, 5, _frame(5, "done"))]
    await store.write_journal([], retry, [(key, "journal-user", "retry-later", 5, True)], "p")
    assert [seq for seq, _ in await store.stream_frames(key, 0)] == [1, 2, 3, 4, 5]
