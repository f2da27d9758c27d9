"""A stream: one generation with its own id, seq counter and frame log, owned by a task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from protocol import codec
from protocol.frames import Done, Error, StreamFrame


class Sink(Protocol):
    """Where a stream's encoded frames go: a connection's outbox."""

    def __call__(self, data: bytes) -> Awaitable[None]: ...


class Stream:
    """A generation that numbers its frames and keeps them, so a later socket could replay them."""

    def __init__(self, stream_id: str, user_id: str, kind: str) -> None:
        self.id = stream_id
        self.user_id = user_id
        self.kind = kind
        self.started = time.monotonic()
        self.seq = 0
        self.log: list[bytes] = []
        self.sink: Sink | None = None
        self.task: asyncio.Task[None] | None = None
        self.finished = False
        self.ended = False

    async def emit(self, frame_type: Callable[..., StreamFrame], **fields: Any) -> None:
        """Number, encode, keep and forward one frame of this stream."""
        self.seq += 1
        frame = frame_type(id=self.id, seq=self.seq, **fields)
        if isinstance(frame, Done | Error):
            self.ended = True
        data = codec.encode(frame)
        self.log.append(data)
        sink = self.sink
        if sink is not None:
            await sink(data)

    def start(
        self, work: Callable[[Stream], Awaitable[None]], on_exit: Callable[[Stream], None]
    ) -> None:
        """Run `work` in the stream's own task; `on_exit` runs when it ends."""

        async def run() -> None:
            try:
                await work(self)
            finally:
                self.finished = True
                on_exit(self)

        self.task = asyncio.create_task(run(), name=f"stream:{self.id}")

    def cancel(self) -> None:
        """Ask the stream's task to stop; it ends itself with a terminal frame."""
        if self.task is not None and not self.task.done() and not self.ended:
            self.task.cancel()

    def elapsed_ms(self) -> float:
        """Milliseconds since the stream was created."""
        return (time.monotonic() - self.started) * 1000.0
