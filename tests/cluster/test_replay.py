"""Replay of a journaled stream (server/cluster/replay.py) against real Postgres: a page at a time
as the reader takes it, every frame exactly once, then the live rest."""

from __future__ import annotations

import asyncio
import json
import uuid

from protocol import codec
from protocol.contract import StreamContract
from protocol.frames import Delta, Done, Start, Timings
from server.cluster.replay import PAGE_RUNS, StoredStream
from server.services import Services
from server.store import Store


class Reader:
    def __init__(self) -> None:
        self.woken = asyncio.Event()
        self.ended = False

    def wake(self, stream: StoredStream) -> None:
        self.woken.set()

    def replayed(self, stream: StoredStream) -> None:
        self.ended = True


def _frames(sid: str, first: int, count: int, *, end: bool = False) -> list[tuple[int, str]]:
    out = []
    for seq in range(first, first + count):
        frame = (
            Start(id=sid, seq=seq, message_id="m")
            if seq == 1
            else Delta(id=sid, seq=seq, text=f"{seq} " * 20)
        )
        out.append((seq, codec.encode(frame).decode()))
    if end:
        seq = first + count
        done = Done(id=sid, seq=seq, finish_reason="stop", timings=Timings(1.0, 2.0))
        out.append((seq, codec.encode(done).decode()))
    return out


async def _journal(store: Store, user: str, sid: str, runs: list[list[tuple[int, str]]]) -> str:
    """Write a stream as the journal would: one row per run of frames."""
    key = uuid.uuid4().hex
    await store.write_journal([(user, sid, key, "answer")], [], [], "test-process")
    for run in runs:
        last = run[-1][0]
        ended = json.loads(run[-1][1])["type"] == "done"
        await store.write_journal(
            [], [(key, seq, data) for seq, data in run], [(key, user, sid, last, ended)], "test"
        )
    return key


def _runs(sid: str, runs: int, per_run: int, *, end: bool) -> list[list[tuple[int, str]]]:
    out, seq = [], 1
    for n in range(runs):
        last_run = n == runs - 1
        run = _frames(sid, seq, per_run, end=end and last_run)
        out.append(run)
        seq += len(run)
    return out


async def test_a_long_stored_stream_is_read_a_page_at_a_time(services: Services) -> None:
    store = services.store
    runs = _runs("long", PAGE_RUNS * 4, 10, end=True)
    await _journal(store, "replay-user", "long", runs)
    reader = Reader()
    stored = await StoredStream.open(store, "replay-user", "long", 0, 600, reader)
    assert stored is not None
    page = sum(len(run) for run in runs[:PAGE_RUNS])
    total = sum(len(run) for run in runs)
    assert stored.buffered_chars() == sum(len(d) for run in runs[:PAGE_RUNS] for _, d in run)
    await asyncio.sleep(0.2)
    assert stored.buffered_chars() > 0 and not stored.ended, "nothing more is read until taken"
    contract, seen = StreamContract(), 0
    async with asyncio.timeout(10):
        while True:
            data = stored.take()
            if data is None:
                reader.woken.clear()
                await reader.woken.wait()
                continue
            frame = json.loads(data)
            assert contract.check(frame["type"], frame["seq"]) is None
            seen += 1
            if contract.ended:
                break
    assert seen == total > page and reader.ended
    await stored.aclose()


async def test_resume_after_seq_then_the_live_rest(services: Services) -> None:
    store = services.store
    runs = _runs("live", 3, 5, end=False)
    key = await _journal(store, "replay-user", "live", runs)
    reader = Reader()
    stored = await StoredStream.open(store, "replay-user", "live", 7, 600, reader)
    assert stored is not None
    taken = [json.loads(d)["seq"] for d in iter(stored.take, None)]
    assert taken == list(range(8, 16))
    more = _frames("live", 16, 3, end=True)
    await store.write_journal(
        [], [(key, s, d) for s, d in more], [(key, "replay-user", "live", 19, True)], "test"
    )
    async with asyncio.timeout(10):  # polled without a notification bus
        while not stored.ended or stored.has_output():
            data = stored.take()
            if data is None:
                reader.woken.clear()
                await reader.woken.wait()
            else:
                taken.append(json.loads(data)["seq"])
    assert taken == list(range(8, 20))
    await stored.aclose()
