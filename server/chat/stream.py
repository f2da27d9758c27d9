"""A stream: one generation with its own id, seq numbers and frame log, detached from sockets.

Frames are numbered when they are committed, not when they are emitted. A stream whose reader
keeps up commits each frame as soon as the connection's writer asks for it; while the reader is
slow, consecutive deltas wait in the tail and merge into one, so nothing is dropped or
reordered and `seq` still grows by exactly one. A stream with no reader commits at once, so its
log (and the journal behind it) is always complete for a later `resume`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from array import array
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, Protocol

from protocol import codec
from protocol.frames import Delta, Done, StreamFrame, Timings
from server.chat import lifecycle
from server.chat.lifecycle import StreamWork
from server.errors import ChatError
from server.metrics import DELTA_GAP, FIRST_DELTA, LIVE_STREAMS, MERGES, SERVER_ADDED

MAX_MERGED_DELTA = 65_536  # characters in one merged delta frame
DELTA_TICK_S = 0.03  # at most ~33 delta frames a second per stream reach a reader
# Text a stream holds for its reader beyond which the reader is woken at once, tick or not, and
# the connection weighs the socket's whole buffer against its limit.
BUFFER_CHECK_CHARS = 16_384
# A piece of a model's text this long is not a few tokens to merge on the tick: read on at once.
PACED_PIECE_CHARS = 4_096


class Consumer(Protocol):
    """The connection a stream's frames currently go to."""

    def wake(self, stream: Stream) -> None:
        """The stream has frames to take."""


class Journal(Protocol):
    """Where committed frames are persisted, so a stream can be resumed from another process."""

    def frame(self, stream: Stream, seq: int, data: bytes) -> None: ...


class FrameLog:
    """A stream's committed frames, kept for resume and re-encoded when replayed (msgspec's
    encoding is deterministic: byte for byte as sent). A delta keeps only its text, in one
    buffer; another frame its Struct, whose strings (a source's passage) are shared with the
    rest of the server. Encoded frames in a list cost ~100 bytes per delta where the text is a
    few, and the sources once more: most of an active stream's memory."""

    __slots__ = ("_ends", "_others", "_stream_id", "_texts")

    def __init__(self, stream_id: str) -> None:
        self._stream_id = stream_id
        self._texts = bytearray()  # the deltas' texts, UTF-8, back to back
        # per frame, where its text ends in _texts (a stream's log is far below 4 GiB)
        self._ends = array("I")
        self._others: dict[int, StreamFrame] = {}  # frames that are not deltas, by index

    def __len__(self) -> int:
        return len(self._ends)

    def __iter__(self) -> Iterator[bytes]:
        return (self.frame(seq) for seq in range(1, len(self) + 1))

    def add(self, frame: StreamFrame) -> None:
        """Keep a frame that is not a delta."""
        self._others[len(self._ends)] = frame
        self._ends.append(len(self._texts))

    def add_delta(self, text: str) -> None:
        """Keep a delta frame by its text."""
        self._texts += text.encode()
        self._ends.append(len(self._texts))

    def frame(self, seq: int) -> bytes:
        """The encoded frame numbered `seq` (from 1)."""
        i = seq - 1
        other = self._others.get(i)
        if other is not None:
            return codec.encode(other)
        start = self._ends[i - 1] if i else 0
        text = self._texts[start : self._ends[i]].decode()
        return codec.encode(Delta(id=self._stream_id, seq=seq, text=text))


class _Pending:
    __slots__ = ("fields", "frame_type", "size", "texts")

    def __init__(self, frame_type: Callable[..., StreamFrame], fields: dict[str, Any]) -> None:
        self.frame_type = frame_type
        self.fields = fields
        self.texts: list[str] = []
        self.size = 0


class Stream:
    """A generation that numbers its frames and keeps them for replay."""

    def __init__(
        self,
        stream_id: str,
        user_id: str,
        kind: str,
        journal: Journal | None = None,
        *,
        tick_s: float = DELTA_TICK_S,
    ) -> None:
        self.id = stream_id
        self.user_id = user_id
        self.kind = kind
        self.key = uuid.uuid4().hex
        self.started = time.monotonic()
        self.seq = 0
        self.log = FrameLog(stream_id)
        self.consumer: Consumer | None = None
        self.cursor = 0  # frames of the log the consumer has taken
        self.task: asyncio.Task[None] | None = None
        self.ended = False  # a terminal frame was emitted
        self.finished_at: float | None = None
        self.interrupted = False  # cancelled because nobody came back for it
        self.journal = journal
        self.first_chunk_at: float | None = None  # perf_counter when the model's first text came in
        self.server_added_ms: float | None = None  # from then until the first delta was sent
        self.last_delta_sent_at: float | None = None
        self.first_delta_ms: float | None = None  # since the stream began, when it was emitted
        # a few frames at most (deltas merge; a reader that far behind is closed): a list, as an
        # empty deque is ~600 bytes on every stream
        self._tail: list[_Pending] = []
        self._tail_chars = 0
        self.cancel_requested = False
        self._running = False
        self._tick_s = tick_s
        self._woken_at = 0.0  # monotonic time deltas were last handed to the reader
        self._tick_timer: asyncio.TimerHandle | None = None

    # ---- producing ---------------------------------------------------------------------

    def emit(self, frame_type: Callable[..., StreamFrame], **fields: Any) -> None:
        """Queue one frame (`Start`, `Sources` or `Delta`); it is numbered when the reader takes
        it (at once without a reader)."""
        if self.ended:
            raise RuntimeError(f"stream {self.id}: a frame after its terminal frame")
        if frame_type is Delta:
            text: str = fields["text"]
            if self.first_delta_ms is None:
                self.first_delta_ms = self.elapsed_ms()
                FIRST_DELTA.labels(self.kind).observe(self.first_delta_ms / 1000.0)
            last = self._tail[-1] if self._tail else None
            if (
                last is None
                or last.frame_type is not Delta
                or last.size + len(text) > MAX_MERGED_DELTA
            ):
                last = _Pending(Delta, {})
                self._tail.append(last)
            else:
                MERGES.inc()  # the reader is behind: this delta joins the waiting one
            last.texts.append(text)
            last.size += len(text)
            self._tail_chars += len(text)
            if self.consumer is not None:
                self._tick()
                return
        else:
            self._tail.append(_Pending(frame_type, fields))
        self._queued()

    async def paced(self, pieces: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
        """`pieces` (a model's text as it reads it), asked for at most once a tick while they
        come faster than half a tick, a few tokens each: a fast model's tokens then wait in the
        HTTP client's buffer and are parsed, handled and sent together when the tick is due
        (one task wake, one pass through the HTTP client and one frame for several), no later
        than the tick would have sent them. Slower pieces are read the moment they arrive, and
        so are long ones: pacing must not cap a stream's throughput (nor hide a reader that
        falls behind it)."""
        tick_s = self._tick_s
        # closed however this ends (a cancel while waiting for the tick included): closing a
        # model's stream closes its HTTP stream
        async with contextlib.aclosing(pieces):
            while True:
                asked = time.monotonic()
                try:
                    piece = await anext(pieces)
                except StopAsyncIteration:
                    return
                got = time.monotonic()
                yield piece
                if got - asked < tick_s / 2 and len(piece) < PACED_PIECE_CHARS and not self.ended:
                    delay = got + tick_s - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                        # the loop's timer measured the tick, as it does for _tick_due
                        self._woken_at = time.monotonic() - tick_s

    def _tick(self) -> None:
        """Hand deltas to the reader at most every tick (DELTA_TICK_MS): a fast model's tokens merge
        into one frame per tick (fewer frames to encode, send and journal), never held longer
        than the tick; at 20 tokens/s each token still goes out alone, at once."""
        if self._tick_timer is not None:
            if self._tail_chars > BUFFER_CHECK_CHARS:
                # A reader this far behind is not kept waiting for the tick either: the
                # connection must see the text pile up (an unpaced model fills a tick with MBs).
                self._queued()
            return  # a wake is due: this delta joins the one waiting
        now = time.monotonic()
        due = self._woken_at + self._tick_s
        if now >= due:
            self._woken_at = now
            self._queued()
        else:
            self._tick_timer = asyncio.get_running_loop().call_at(due, self._tick_due)

    def _tick_due(self) -> None:
        self._tick_timer = None
        self._woken_at = time.monotonic()
        self._queued()

    def done(self, **fields: Any) -> None:
        """End the stream with `done`."""
        self._end(_Pending(Done, fields))

    def fail(self, error: ChatError) -> None:
        """End the stream with `error`."""
        self._end(_Pending(error.frame, {}))

    def _end(self, pending: _Pending) -> None:
        if self.ended:
            raise RuntimeError(f"stream {self.id}: a second terminal frame")
        self.ended = True
        if self._tick_timer is not None:  # the last deltas go out with the end, now
            self._tick_timer.cancel()
            self._tick_timer = None
        self._tail.append(pending)
        self._queued()

    def _queued(self) -> None:
        if self.consumer is None:
            self._commit_all()
        else:
            self.consumer.wake(self)

    def commit_pending(self) -> None:
        """Number and journal every frame still waiting for a slow reader, now; the reader then
        takes them from the log."""
        self._commit_all()

    def _commit_all(self) -> None:
        while self._tail:
            self._commit()

    def _commit(self) -> bytes:
        pending = self._tail.pop(0)
        self.seq += 1
        if pending.frame_type is Delta:
            text = "".join(pending.texts)
            self._tail_chars -= pending.size
            data = codec.encode(Delta(id=self.id, seq=self.seq, text=text))
            self.log.add_delta(text)
        else:
            frame = pending.frame_type(id=self.id, seq=self.seq, **pending.fields)
            data = codec.encode(frame)
            self.log.add(frame)
        if self.journal is not None:
            self.journal.frame(self, self.seq, data)
        return data

    # ---- consuming ---------------------------------------------------------------------

    def has_output(self) -> bool:
        """True when the consumer has frames to take."""
        return self.cursor < self.seq or bool(self._tail)

    def take(self) -> bytes | None:
        """The consumer's next frame: a replayed one first, then the oldest pending one."""
        if self.cursor < self.seq:
            data = self.log.frame(self.cursor + 1)
        elif self._tail:
            data = self._commit()
        else:
            return None
        self.cursor += 1
        return data

    def sent_delta(self, now: float) -> None:
        """The writer sent one of this stream's deltas (for latency metrics)."""
        if self.last_delta_sent_at is None:
            if self.first_chunk_at is not None:
                self.server_added_ms = (now - self.first_chunk_at) * 1000.0
                SERVER_ADDED.observe(now - self.first_chunk_at)
        else:
            DELTA_GAP.observe(now - self.last_delta_sent_at)
        self.last_delta_sent_at = now

    def attach(self, consumer: Consumer, after_seq: int) -> None:
        """Send this stream's frames after `after_seq` to `consumer`, then the live rest."""
        self.consumer = consumer
        self.cursor = min(after_seq, self.seq)
        if self.has_output():
            consumer.wake(self)

    def detach(self, consumer: Consumer) -> None:
        """The consumer is gone; commit what was waiting for it."""
        if self.consumer is consumer:
            self.consumer = None
            self._commit_all()

    def buffered_chars(self) -> int:
        """Text waiting for a slow reader."""
        return self._tail_chars

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self, work: StreamWork, on_exit: Callable[[Stream], None]) -> None:
        """Run `work` in the stream's own task, to its terminal frame; `on_exit` runs when it ends."""

        async def run() -> None:
            self._running = True
            LIVE_STREAMS.inc()
            try:
                await lifecycle.run(work, self)
            finally:
                LIVE_STREAMS.dec()
                self.finished_at = time.monotonic()
                on_exit(self)

        self.task = asyncio.create_task(run(), name=f"stream:{self.id}")

    @property
    def live(self) -> bool:
        """Still generating."""
        return self.task is not None and not self.task.done()

    def cancel(self, *, interrupted: bool = False) -> None:
        """Ask the stream's task to stop; it ends itself with a terminal frame."""
        if self.live and not self.ended:
            self.interrupted = self.interrupted or interrupted
            self.cancel_requested = True
            # A task cancelled before its first step never enters its coroutine, so nothing
            # would end the stream: one that has not run yet sees the request when it starts.
            if self._running and self.task is not None:
                self.task.cancel()

    def elapsed_ms(self) -> float:
        """Milliseconds since the stream was created."""
        return (time.monotonic() - self.started) * 1000.0

    def timings(self, **spans: float | None) -> Timings:
        """The `done.timings` of this stream so far, with the work's own spans (ms)."""
        total = round(self.elapsed_ms(), 2)
        first = self.first_delta_ms
        added = self.server_added_ms
        return Timings(
            first_token_ms=round(first, 2) if first is not None else total,
            total_ms=total,
            server_added_ms=round(added, 3) if added is not None else None,
            **{k: round(v, 3) for k, v in spans.items() if v is not None},
        )
