"""Frames of every stream persisted in batches, so any process can replay them; never per token."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg

from server.errors import ChatError
from server.store import Store

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.2
FOLLOWED_INTERVAL_S = 0.02  # streams someone reads from another process are flushed promptly
FOLLOW_TTL_S = 60.0
MAX_BUFFERED_FRAMES = 200_000
PRUNE_INTERVAL_S = 60.0
ABANDONED_S = 3600.0  # an unfinished stream nobody wrote to for an hour lost its process
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}"


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
    frames: list[tuple[str, int, str]] = field(default_factory=list)
    progress: dict[str, tuple[str, str, int, bool]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.starts) + len(self.frames) + len(self.progress)


class FrameJournal:
    """Collects stream starts, frames and ends, and writes them every few tens of milliseconds."""

    def __init__(
        self, store: Store, *, retention_s: float, interval_s: float = FLUSH_INTERVAL_S
    ) -> None:
        self._store = store
        self._retention_s = retention_s
        self._interval_s = interval_s
        self._batch = _Batch()
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()  # cuts the wait for a batch short
        self._task: asyncio.Task[None] | None = None
        self._pruned_at = time.monotonic()
        self._followed: dict[str, float] = {}
        self._soon = False
        self._closed = False

    def started(self, stream: Journaled) -> None:
        """A new stream (replacing any earlier one with the same user and id)."""
        self._batch.starts.append((stream.user_id, stream.id, stream.key, stream.kind))
        self._poke()
        self._soon = True  # another process may be asked to resume it any moment

    def frame(self, stream: Journaled, seq: int, data: str) -> None:
        """A committed frame."""
        if len(self._batch.frames) >= MAX_BUFFERED_FRAMES:
            log.warning("frame journal full (database down?): dropping the oldest frames")
            del self._batch.frames[: MAX_BUFFERED_FRAMES // 10]
        self._batch.frames.append((stream.key, seq, data))
        self._batch.progress[stream.key] = (stream.user_id, stream.id, seq, stream.ended)
        self._poke()

    def mark_followed(self, key: str) -> None:
        """Another process reads this stream live: flush its frames without the usual wait."""
        self._followed[key] = time.monotonic() + FOLLOW_TTL_S
        self._poke()
        self._urgent.set()  # the reader is waiting now: do not finish a 200 ms wait first

    def _interval(self) -> float:
        if self._soon:
            self._soon = False
            return FOLLOWED_INTERVAL_S
        if self._followed:
            now = time.monotonic()
            self._followed = {k: t for k, t in self._followed.items() if t > now}
            if any(k in self._followed for k in self._batch.progress):
                return FOLLOWED_INTERVAL_S
        return self._interval_s

    def _poke(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="frame-journal")
        if not self._wake.is_set():
            self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            with contextlib.suppress(TimeoutError):  # gather a batch
                await asyncio.wait_for(self._urgent.wait(), self._interval())
            self._urgent.clear()
            self._wake.clear()
            await self._write()
            if time.monotonic() - self._pruned_at > PRUNE_INTERVAL_S:
                self._pruned_at = time.monotonic()
                await self._prune()

    async def _prune(self) -> None:
        try:
            await self._store.prune_streams(self._retention_s, ABANDONED_S)
            await self._store.prune_rate_windows()
            await self._store.prune_chapter_jobs()
        except ChatError as exc:
            log.warning("pruning old streams failed: %s", exc.message)

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
        """Write everything collected so far."""
        await self._write()

    async def close(self) -> None:
        """Flush and stop."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        await self._write()


def _merge(old: _Batch, new: _Batch) -> _Batch:
    merged = _Batch(
        old.starts + new.starts, old.frames + new.frames, {**old.progress, **new.progress}
    )
    return merged
