"""Stream numbering, delta merging for slow readers and replay (server/chat/stream.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncGenerator, Coroutine
from typing import Any

import pytest

from protocol.contract import StreamContract
from protocol.frames import Delta, Source, Sources, Start
from server.chat.stream import (
    BUFFER_CHECK_CHARS,
    DELTA_TICK_S,
    MAX_MERGED_DELTA,
    PACED_PIECE_CHARS,
    Stream,
)
from server.errors import RateLimited


class Reader:
    """A consumer that counts its wake-ups and takes frames when told."""

    def __init__(self) -> None:
        self.wakes = 0

    def wake(self, stream: Stream) -> None:
        self.wakes += 1


class Journal:
    def __init__(self) -> None:
        self.frames: list[tuple[int, str]] = []

    def frame(self, stream: Stream, seq: int, data: str) -> None:
        self.frames.append((seq, data))


def drain(stream: Stream) -> list[dict[str, Any]]:
    frames = []
    while (data := stream.take()) is not None:
        frames.append(json.loads(data))
    return frames


def checked(frames: list[dict[str, Any]], after_seq: int = 0) -> list[dict[str, Any]]:
    contract = StreamContract(after_seq)
    for f in frames:
        assert contract.check(f["type"], f["seq"]) is None, f
    return frames


async def test_without_a_reader_every_frame_is_committed_and_journaled_at_once() -> None:
    journal = Journal()
    stream = Stream("s", "u", "answer", journal)
    stream.emit(Start, message_id="m")
    stream.emit(Delta, text="a")
    stream.emit(Delta, text="b")
    stream.done(finish_reason="stop", timings=stream.timings())
    assert [seq for seq, _ in journal.frames] == [1, 2, 3, 4]
    assert stream.seq == 4 and len(stream.log) == 4 and stream.ended


async def test_a_slow_reader_gets_consecutive_deltas_merged_in_order() -> None:
    stream = Stream("s", "u", "answer")
    reader = Reader()
    stream.attach(reader, 0)
    stream.emit(Start, message_id="m")
    stream.emit(Sources, sources=[])
    for piece in ("The ", "zero-", "moment ", "point"):
        stream.emit(Delta, text=piece)
    assert stream.seq == 0 and stream.buffered_chars() == len("The zero-moment point")
    frames = checked(drain(stream))
    assert [f["type"] for f in frames] == ["start", "sources", "delta"]
    assert frames[2]["text"] == "The zero-moment point" and frames[2]["seq"] == 3
    assert stream.buffered_chars() == 0


async def test_a_reader_that_keeps_up_gets_each_delta_alone() -> None:
    stream = Stream("s", "u", "answer")
    stream.attach(Reader(), 0)
    stream.emit(Start, message_id="m")
    texts = []
    for piece in ("a", "b", "c"):
        stream.emit(Delta, text=piece)
        texts += [f.get("text") for f in drain(stream)]
    assert texts == [None, "a", "b", "c"]


async def test_merging_stops_at_the_frame_size_bound() -> None:
    stream = Stream("s", "u", "answer")
    stream.attach(Reader(), 0)
    stream.emit(Start, message_id="m")
    chunk = "x" * (MAX_MERGED_DELTA // 2 + 1)
    for _ in range(3):
        stream.emit(Delta, text=chunk)
    frames = checked(drain(stream))
    assert [len(f.get("text", "")) for f in frames[1:]] == [len(chunk)] * 3


async def test_resume_replays_after_seq_then_the_live_rest() -> None:
    stream = Stream("s", "u", "answer")
    stream.emit(Start, message_id="m")
    for piece in "abcd":
        stream.emit(Delta, text=piece)
    reader = Reader()
    stream.attach(reader, 2)
    assert reader.wakes == 1
    stream.emit(Delta, text="e")
    stream.done(finish_reason="stop", timings=stream.timings())
    frames = checked(drain(stream), after_seq=2)
    assert [f.get("text") for f in frames] == ["b", "c", "d", "e", None]
    assert frames[-1]["type"] == "done"


async def test_detaching_commits_what_waited_for_the_reader() -> None:
    journal = Journal()
    stream = Stream("s", "u", "answer", journal)
    reader = Reader()
    stream.attach(reader, 0)
    stream.emit(Start, message_id="m")
    stream.emit(Delta, text="x")
    assert journal.frames == []
    stream.detach(reader)
    assert [seq for seq, _ in journal.frames] == [1, 2] and stream.consumer is None


async def test_an_error_ends_the_stream_with_its_code_and_seq() -> None:
    stream = Stream("s", "u", "answer")
    stream.fail(RateLimited("slow down", retry_after=3.0))
    (error,) = drain(stream)
    assert error == {
        "type": "error",
        "code": "rate_limited",
        "message": "slow down",
        "retryable": True,
        "id": "s",
        "seq": 1,
        "retry_after": 3.0,
    }


async def test_nothing_follows_the_terminal_frame() -> None:
    stream = Stream("s", "u", "answer")
    stream.done(finish_reason="stop", timings=stream.timings())
    with pytest.raises(RuntimeError, match="second terminal"):
        stream.done(finish_reason="stop", timings=stream.timings())
    with pytest.raises(RuntimeError, match="after its terminal"):
        stream.emit(Delta, text="late")


async def test_timings_count_from_the_first_delta() -> None:
    stream = Stream("s", "u", "answer")
    stream.emit(Start, message_id="m")
    assert stream.first_delta_ms is None
    stream.emit(Delta, text="a")
    first = stream.first_delta_ms
    assert first is not None
    timings = stream.timings(retrieval_ms=1.23456, db_ms=None)
    assert timings.first_token_ms == round(first, 2) and timings.retrieval_ms == 1.235
    assert timings.db_ms is None


async def test_a_fast_model_s_deltas_go_out_once_per_tick() -> None:
    """100 tokens a second reach the reader as ~33 frames a second, none held past the tick."""
    stream = Stream("s", "u", "answer")
    reader = Reader()
    stream.attach(reader, 0)
    stream.emit(Start, message_id="m")
    texts: list[str] = []
    woken = reader.wakes

    def take_when_woken() -> None:  # as the socket's writer does
        nonlocal woken
        if reader.wakes > woken:
            woken = reader.wakes
            texts.extend(f["text"] for f in drain(stream) if f["type"] == "delta")

    for n in range(30):  # 0.3 s of a model at 100 tokens/s
        stream.emit(Delta, text=f"{n} ")
        take_when_woken()
        await asyncio.sleep(0.01)
        take_when_woken()
    await asyncio.sleep(DELTA_TICK_S + 0.01)
    take_when_woken()
    assert "".join(texts) == "".join(f"{n} " for n in range(30)), "nothing lost or reordered"
    assert len(texts) <= 0.3 / DELTA_TICK_S + 2, texts
    assert texts[0] == "0 ", "the first delta is not held"


async def test_text_piling_up_within_a_tick_wakes_the_reader_at_once() -> None:
    """An unpaced model can put megabytes in one tick: the connection must see them pile up
    (its buffer limit is weighed on wake-ups), so past BUFFER_CHECK_CHARS the tick does not wait."""
    stream = Stream("s", "u", "answer", tick_s=60.0)
    reader = Reader()
    stream.attach(reader, 0)
    stream.emit(Delta, text="first")  # goes at once; the next ones wait for the tick
    woken = reader.wakes
    piece = "w" * 1000
    for _ in range(BUFFER_CHECK_CHARS // len(piece)):
        stream.emit(Delta, text=piece)
    assert reader.wakes == woken, "below the check, deltas merge for the tick"
    stream.emit(Delta, text=piece)
    assert stream.buffered_chars() > BUFFER_CHECK_CHARS
    assert reader.wakes == woken + 1, "past it, the reader is woken without waiting"
    stream.done(finish_reason="stop", timings=stream.timings())


async def test_a_slow_model_s_deltas_go_out_at_once() -> None:
    stream = Stream("s", "u", "answer")
    stream.attach(Reader(), 0)
    for n in range(3):
        stream.emit(Delta, text=str(n))
        assert [f["text"] for f in drain(stream)] == [str(n)]
        await asyncio.sleep(DELTA_TICK_S + 0.005)  # 20 tokens/s is slower than the tick


async def test_the_log_replays_every_frame_byte_for_byte_as_sent() -> None:
    """Deltas are kept by their text and re-encoded on replay: the bytes must not differ."""
    stream = Stream("s-\u00e9", "u", "answer")
    reader = Reader()
    stream.attach(reader, 0)
    stream.emit(Start, message_id="m")
    source = Source(chapter="c", title="T\u00edtulo", score=0.1234, text='a "passage"\n')
    stream.emit(Sources, sources=[source])
    sent = [stream.take(), stream.take()]
    texts = ['say "hi"\n', "\u0627\u0631\u062f\u0648 ", "\U0001f600", "\\u0000 ", "</script>"]
    live: list[bytes] = []
    for text in texts:
        stream.emit(Delta, text=text)
        while (data := stream.take()) is not None:
            live.append(data)
    stream.done(finish_reason="stop", timings=stream.timings())
    live.append(stream.take() or b"")
    assert [json.loads(d) for d in live][: len(texts)] == [
        {"type": "delta", "id": "s-\u00e9", "seq": 3 + n, "text": t} for n, t in enumerate(texts)
    ]
    replayed = list(stream.log)
    assert replayed == sent + live
    stream.attach(Reader(), 4)  # a resume after seq 4
    resumed = []
    while (data := stream.take()) is not None:
        resumed.append(data)
    assert resumed == live[2:]


async def test_paced_asks_a_fast_model_once_a_tick_and_sends_each_read_at_once() -> None:
    """Pieces that are there as soon as they are asked for (a fast model's tokens, already in
    the socket's buffer) are asked for once a tick, and each goes out the moment it is read:
    the tick is waited for before the read, never again after it."""
    tick = 0.05
    stream = Stream("s", "u", "answer", tick_s=tick)
    reader = Reader()
    stream.attach(reader, 0)
    asked_at: list[float] = []

    async def model() -> AsyncGenerator[str, None]:
        for n in range(5):
            asked_at.append(time.monotonic())
            yield f"{n} "

    texts = []
    async for text in stream.paced(model()):
        woken = reader.wakes
        stream.emit(Delta, text=text)
        assert reader.wakes == woken + 1, "sent when read, not held for another tick"
        texts.extend(f["text"] for f in drain(stream))
    assert texts == [f"{n} " for n in range(5)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(asked_at)]
    assert all(gap >= tick - 0.002 for gap in gaps), gaps  # the loop's timers are milliseconds


_real_sleep = asyncio.sleep


@pytest.fixture
def paced_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays `asyncio.sleep` is asked for from here on (a model's own waits use
    `_real_sleep`). Tests that read it run on a loop of their own (`alone`): on the session's
    loop, other tests' servers sleep too."""
    delays: list[float] = []

    async def recorded_sleep(delay: float) -> None:
        delays.append(delay)
        await _real_sleep(delay)

    monkeypatch.setattr(asyncio, "sleep", recorded_sleep)
    return delays


def alone(scenario: Coroutine[Any, Any, None]) -> None:
    """Run `scenario` on a new event loop, with no other task."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scenario)
    finally:
        loop.close()


def test_paced_asks_for_a_slow_model_s_next_piece_at_once(paced_sleeps: list[float]) -> None:
    """Pieces slower than half a tick are asked for again as soon as each is handled."""
    tick = 0.05
    stream = Stream("s", "u", "answer", tick_s=tick)

    async def model() -> AsyncGenerator[str, None]:
        for n in range(3):
            await _real_sleep(tick)  # 20 tokens/s against a 50 ms tick
            yield str(n)

    async def scenario() -> None:
        assert [piece async for piece in stream.paced(model())] == ["0", "1", "2"]

    alone(scenario())
    assert paced_sleeps == []


def test_paced_does_not_pace_without_a_tick(paced_sleeps: list[float]) -> None:
    """DELTA_TICK_MS=0 sends every token as its own frame: nothing is waited for."""
    stream = Stream("s", "u", "answer", tick_s=0.0)

    async def model() -> AsyncGenerator[str, None]:
        for n in range(100):
            yield str(n)

    async def scenario() -> None:
        assert len([piece async for piece in stream.paced(model())]) == 100

    alone(scenario())
    assert paced_sleeps == []


def test_paced_reads_long_pieces_at_full_speed(paced_sleeps: list[float]) -> None:
    """An unpaced model's long pieces are not held to one a tick: that would cap a stream's
    throughput, and hide from the connection a reader that falls behind."""
    stream = Stream("s", "u", "answer", tick_s=0.05)

    async def model() -> AsyncGenerator[str, None]:
        for _ in range(10):
            yield "w" * PACED_PIECE_CHARS

    async def scenario() -> None:
        assert len([piece async for piece in stream.paced(model())]) == 10

    alone(scenario())
    assert paced_sleeps == []


def test_paced_closes_the_model_s_stream_when_cancelled_between_ticks(
    paced_sleeps: list[float],
) -> None:
    """A stream cancelled while it waits for the tick closes the model's stream (and so its
    HTTP stream) before its task ends, not whenever the collector gets to it."""
    stream = Stream("s", "u", "answer", tick_s=60.0)
    closed = False

    async def model() -> AsyncGenerator[str, None]:
        nonlocal closed
        try:
            while True:
                yield "token "
        finally:
            closed = True

    async def produce() -> None:
        async for _ in stream.paced(model()):
            pass

    async def scenario() -> None:
        task = asyncio.create_task(produce())
        while not paced_sleeps:  # until it waits for the tick
            await _real_sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert closed

    alone(scenario())
