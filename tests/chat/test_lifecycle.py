"""One lifecycle for every stream (server/chat/lifecycle.py): exactly one terminal frame however
the work ends, even when saving fails or the stream is cancelled while it saves."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from protocol.frames import Delta, Start
from server.chat.lifecycle import Outcome
from server.chat.stream import Stream
from server.errors import ChatError, DatabaseUnavailable, NotFound


class Work:
    def __init__(self, *, fail: BaseException | None = None, settle_fails: bool = False) -> None:
        self.fail = fail
        self.settle_fails = settle_fails
        self.settled: list[tuple[Outcome, ChatError | None]] = []
        self.settling = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def produce(self, stream: Stream) -> None:
        stream.emit(Start, message_id="m")
        stream.emit(Delta, text="partial")
        if self.fail is not None:
            raise self.fail
        await asyncio.sleep(0)

    async def settle(
        self, stream: Stream, outcome: Outcome, error: ChatError | None
    ) -> ChatError | None:
        self.settling.set()
        await self.release.wait()
        self.settled.append((outcome, error))
        if self.settle_fails:
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")
        return error

    def done_fields(self, stream: Stream, outcome: Outcome) -> dict[str, Any]:
        reason = "stop" if outcome is Outcome.COMPLETE else "cancelled"
        return {"finish_reason": reason, "timings": stream.timings()}


async def run(work: Work) -> tuple[Stream, list[dict[str, Any]]]:
    stream = Stream("s", "u", "answer")
    ended: list[Stream] = []
    stream.start(work, ended.append)
    assert stream.task is not None
    await asyncio.wait_for(stream.task, 5)
    assert ended == [stream]
    return stream, [json.loads(data) for data in stream.log]


def terminal(frames: list[dict[str, Any]]) -> dict[str, Any]:
    ends = [f for f in frames if f["type"] in ("done", "error")]
    assert len(ends) == 1 and ends[0] is frames[-1], frames
    return ends[0]


async def test_complete_work_ends_with_done() -> None:
    work = Work()
    _, frames = await run(work)
    assert terminal(frames)["finish_reason"] == "stop"
    assert work.settled == [(Outcome.COMPLETE, None)]


@pytest.mark.parametrize(
    ("fail", "code"),
    [(NotFound("no chapter"), "not_found"), (KeyError("bug"), "internal")],
)
async def test_failed_work_ends_with_its_error(fail: BaseException, code: str) -> None:
    work = Work(fail=fail)
    _, frames = await run(work)
    assert terminal(frames)["code"] == code
    assert work.settled[0][0] is Outcome.FAILED


async def test_a_save_that_raises_still_ends_the_stream() -> None:
    work = Work(settle_fails=True)
    _, frames = await run(work)
    assert terminal(frames)["code"] == "internal"


async def test_a_failed_save_keeps_the_original_error() -> None:
    work = Work(fail=DatabaseUnavailable("down"), settle_fails=True)
    _, frames = await run(work)
    assert terminal(frames)["code"] == "database_unavailable"


async def test_cancelled_while_saving_the_save_finishes_first() -> None:
    work = Work()
    work.release.clear()
    stream = Stream("s", "u", "answer")
    stream.start(work, lambda s: None)
    await work.settling.wait()
    assert stream.task is not None
    stream.task.cancel()  # a shutdown racing the save
    await asyncio.sleep(0.01)
    assert not stream.task.done()
    work.release.set()
    await asyncio.wait_for(stream.task, 5)
    frames = [json.loads(data) for data in stream.log]
    assert terminal(frames)["type"] == "done" and work.settled == [(Outcome.COMPLETE, None)]
