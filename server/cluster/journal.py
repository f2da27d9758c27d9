"""Frames of every stream persisted in batches, so any process can replay them; never per token."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg

from server.cluster.bus import FRAMES, batches
from server.errors import ChatError
from server.store import Store

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.2
FOLLOWED_INTERVAL_S = 0.02  # streams someone reads from another process are flushed promptly
FOLLOW_TTL_S = 60.0
MAX_FOLLOWED = 1024
MAX_BUFFERED_FRAMES = 200_000
# per start: a restarted container has the same host name and pid, and must not look alive
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Journaled(Protocol):
    """What the journal needs to know of a stream (a reader's stream, or a shared chapter job)."""

    @property
    def user_id(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def ended(self) -> bool: ...


@dataclass(slots=True)
class _Batch:
    starts: list[tuple[str, str, str, str]] = field(default_factory=list)
    frames: list[tuple[str, int, bytes]] = field(default_factory=list)
    progress: dict[str, tuple[str, str, int, bool]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.starts) + len(self.frames) + len(self.progress)


class FrameJournal:
    """Collects stream starts, frames and ends, and writes them every few tens of milliseconds."""

    def __init__(self, store: Store, *, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self._store = store
        self._interval_s = interval_s
        self._batch = _Batch()
        self._wake = asyncio.Event()
        self._due: float | None = None  # when the batch being gathered is written (monotonic)
        self._hurry = asyncio.Event()  # `_due` moved closer
        self._task: asyncio.Task[None] | None = None
        self._writing: asyncio.Task[None] | None = None  # the batch being written now
        self._followed: dict[str, float] = {}  # stream key -> until when
        self._closed = False

    def started(self, stream: Journaled) -> None:
        """A new stream (replacing any earlier one with the same user and id)."""
        self._batch.starts.append((stream.user_id, stream.id, stream.key, stream.kind))
        self._poke()
        self._bring_forward(FOLLOWED_INTERVAL_S)  # another process may be asked to resume it

    def frame(self, stream: Journaled, seq: int, data: bytes) -> None:
        """A committed frame."""
        if len(self._batch.frames) >= MAX_BUFFERED_FRAMES:
            log.warning("frame journal full (database down?): dropping the oldest frames")
            del self._batch.frames[: MAX_BUFFERED_FRAMES // 10]
        self._batch.frames.append((stream.key, seq, data))
        self._batch.progress[stream.key] = (stream.user_id, stream.id, seq, stream.ended)
        self._poke()
        if self._followed and self._followed.get(stream.key, 0.0) > time.monotonic():
            self._bring_forward(FOLLOWED_INTERVAL_S)

    def mark_followed(self, key: str) -> None:
        """Another process reads this stream live (it asks again while it does): flush its
        frames every FOLLOWED_INTERVAL_S instead of the usual wait."""
        now = time.monotonic()
        if len(self._followed) > MAX_FOLLOWED:  # every process hears every follow
            self._followed = {k: t for k, t in self._followed.items() if t > now}
        self._followed[key] = now + FOLLOW_TTL_S
        if key in self._batch.progress:
            self._bring_forward(0.0)  # the reader is waiting for these now

    def _poke(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="frame-journal")
        if self._due is None:
            self._due = time.monotonic() + self._interval_s
        if not self._wake.is_set():
            self._wake.set()

    def _bring_forward(self, within_s: float) -> None:
        due = time.monotonic() + within_s
        if self._due is None or due < self._due:
            self._due = due
            self._hurry.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            while self._due is not None and (left := self._due - time.monotonic()) > 0:
                self._hurry.clear()
                with contextlib.suppress(TimeoutError):  # gather a batch
                    await asyncio.wait_for(self._hurry.wait(), left)
            self._due = None
            self._wake.clear()
            # Stopping the loop must not cancel a write half done: its frames would be lost
            # while later ones (a stream's terminal frame) are written by close().
            self._writing = asyncio.create_task(self._write(), name="frame-journal-write")
            await asyncio.shield(self._writing)
            if self._followed:
                now = time.monotonic()
                self._followed = {k: t for k, t in self._followed.items() if t > now}

    async def _write(self) -> None:
        batch, self._batch = self._batch, _Batch()
        if not len(batch):
            return
        try:
            await self._store.write_journal(
                batch.starts,
                batch.frames,
                [(key, *rest) for key, rest in batch.progress.items()],
                PROCESS_ID,
                [(FRAMES, keys) for keys in batches(sorted(batch.progress))],
            )
        except asyncpg.PostgresError:  # this batch cannot be stored; the journal must go on
            log.exception("frame journal dropped a batch it could not store")
            return
        except ChatError as exc:
            log.warning("frame journal write failed (%s); retrying", exc.message)
            self._batch = _merge(batch, self._batch)
            self._poke()
            await asyncio.sleep(0.5)

    async def flush(self) -> None:
        """Write everything collected so far, after the write in progress if there is one."""
        if self._writing is not None:
            await asyncio.shield(self._writing)
        await self._write()

    async def close(self) -> None:
        """Flush and stop."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        if self._writing is not None:
            await self._writing
        await self._write()


def _merge(old: _Batch, new: _Batch) -> _Batch:
    merged = _Batch(
        old.starts + new.starts, old.frames + new.frames, {**old.progress, **new.progress}
    )
    return merged
