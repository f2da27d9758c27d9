"""Streams outlive sockets (server/chat/registry.py): grace for a resume, retention for late
readers, per-user counts and the drain."""

from __future__ import annotations

import asyncio
from typing import Any

from protocol.frames import Delta, Start
from server.chat.lifecycle import Outcome
from server.chat.registry import StreamRegistry
from server.chat.stream import Stream
from server.errors import ChatError


class Work:
    """Streams `pieces` deltas, one per `pause` seconds; remembers how it was settled."""

    def __init__(self, pieces: int = 1000, pause: float = 0.01) -> None:
        self.pieces = pieces
        self.pause = pause
        self.outcome: Outcome | None = None

    async def produce(self, stream: Stream) -> None:
        stream.emit(Start, message_id="m")
        for n in range(self.pieces):
            await asyncio.sleep(self.pause)
            stream.emit(Delta, text=str(n))

    async def settle(
        self, stream: Stream, outcome: Outcome, error: ChatError | None
    ) -> ChatError | None:
        self.outcome = outcome
        return error

    def done_fields(self, stream: Stream, outcome: Outcome) -> dict[str, Any]:
        return {"finish_reason": "cancelled", "timings": stream.timings()}


def started(registry: StreamRegistry, sid: str, work: Work, user: str = "u") -> Stream:
    stream = Stream(sid, user, "answer")
    registry.add(stream)
    stream.start(work, registry.finished)
    return stream


async def test_a_detached_stream_is_interrupted_after_the_grace() -> None:
    registry = StreamRegistry(grace_s=0.05, retention_s=60)
    work = Work()
    stream = started(registry, "s", work)
    registry.detached(stream)
    assert stream.task is not None
    await asyncio.wait_for(stream.task, 5)
    assert work.outcome is Outcome.INTERRUPTED and stream.interrupted and stream.ended


async def test_a_resume_within_the_grace_keeps_it_running() -> None:
    registry = StreamRegistry(grace_s=0.05, retention_s=60)
    work = Work(pieces=20)
    stream = started(registry, "s", work)
    registry.detached(stream)
    registry.attached(stream)
    assert stream.task is not None
    await asyncio.wait_for(stream.task, 5)
    assert work.outcome is Outcome.COMPLETE


async def test_a_finished_stream_is_kept_for_the_retention_then_forgotten() -> None:
    registry = StreamRegistry(grace_s=1, retention_s=0.05)
    stream = started(registry, "s", Work(pieces=1, pause=0))
    assert stream.task is not None
    await stream.task
    assert registry.get("u", "s") is stream and registry.live_count("u") == 0
    await asyncio.sleep(0.1)
    assert registry.get("u", "s") is None and registry.counts() == []


async def test_an_id_asked_again_replaces_the_finished_stream() -> None:
    registry = StreamRegistry(grace_s=1, retention_s=0.05)
    first = started(registry, "s", Work(pieces=1, pause=0))
    assert first.task is not None
    await first.task
    second = started(registry, "s", Work())
    await asyncio.sleep(0.1)  # the first's retention timer must not forget the second
    assert registry.get("u", "s") is second
    await registry.close()


async def test_counts_by_user() -> None:
    registry = StreamRegistry(grace_s=1, retention_s=1)
    conn = object()
    assert registry.connect("u", conn) == 1
    streams = [started(registry, f"s{n}", Work()) for n in range(2)]
    started(registry, "x", Work(), user="v")
    assert registry.live_count("u") == 2
    assert sorted(registry.counts()) == [("u", 1, 2), ("v", 0, 1)]
    registry.disconnect("u", conn)
    assert registry.connections() == []
    await registry.close()
    assert all(s.ended for s in streams) and registry.live_streams() == []


async def test_a_stream_cancelled_before_its_task_ran_still_ends_and_settles() -> None:
    registry = StreamRegistry(grace_s=1, retention_s=1)
    work = Work()
    stream = started(registry, "s", work)
    stream.cancel()  # in the same turn of the loop as the start: its task has not run yet
    assert stream.task is not None
    await asyncio.wait_for(stream.task, 5)
    assert stream.ended and work.outcome is Outcome.CANCELLED


async def test_drain_waits_for_live_streams_up_to_the_deadline() -> None:
    registry = StreamRegistry(grace_s=1, retention_s=1)
    quick = started(registry, "quick", Work(pieces=2))
    slow = started(registry, "slow", Work(pieces=1000))
    assert await registry.drain(0.2) == 1
    assert registry.draining and quick.ended and not slow.ended
    await registry.close()
    assert slow.ended and slow.interrupted
