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
