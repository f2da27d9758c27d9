"""Resume of a stream this process does not hold: its frames come from the journal in Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from protocol import codec
from protocol.contract import is_terminal
from server.errors import ChatError, InvalidMessage, UpstreamUnavailable
from server.store import Store

log = logging.getLogger(__name__)

JOURNAL_LAG_S = 1.0  # how long the journal may trail the process generating a stream
POLL_S = 1.0  # without notifications (no listener, or a pooled connection) polling still finishes the job
FOLLOW_RENEW_S = 30.0  # the owner flushes a followed stream promptly for 60 s per request
STALLED_S = 60.0
PAGE_RUNS = 8  # journal rows (runs of frames) read at a time  # an unfinished stream with no new frame for this long lost its process


class Reader(Protocol):
    """The connection the replayed frames go to."""

    def wake(self, stream: StoredStream) -> None: ...

    def replayed(self, stream: StoredStream) -> None:
        """The stream's terminal frame was taken: it no longer counts as running."""


class Watcher(Protocol):
    """Tells when new frames of a stream are journaled (Cluster)."""

    def watch(self, key: str, wake: Callable[[], None]) -> None: ...

    def unwatch(self, key: str, wake: Callable[[], None]) -> None: ...


class StoredStream:
    """Frames of a journaled stream after `after_seq`, then, while it still runs elsewhere, the
    new ones. Read a page at a time, as the reader takes them: a long stream replayed to a
    reader that does not read costs one page of memory, not the whole stream."""

    def __init__(
        self, store: Store, stream_id: str, key: str, reader: Reader, watcher: Watcher | None = None
    ) -> None:
        self.id = stream_id
        self.consumer: Reader | None = reader
        self.ended = False  # its terminal frame has been read from the journal
        self._store = store
        self._key = key
        self._frames: deque[str] = deque()
        self._chars = 0
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._last_progress = time.monotonic()
        self._watcher = watcher
        self._new_frames = asyncio.Event()
        self._taken = asyncio.Event()  # the reader emptied the page

    @classmethod
    async def open(
        cls,
        store: Store,
        user_id: str,
        stream_id: str,
        after_seq: int,
        retention_s: float,
        reader: Reader,
        watcher: Watcher | None = None,
    ) -> StoredStream | None:
        """The stored stream, or None when there is none for this user within retention."""
        record = await store.stream_record(user_id, stream_id, retention_s)
        for _ in range(int(JOURNAL_LAG_S / 0.1)):
            if record is not None:
                break
            # the process generating it journals in batches: a client that reconnected at once
            # may be ahead of the journal
            await asyncio.sleep(0.1)
            record = await store.stream_record(user_id, stream_id, retention_s)
        if record is None:
            return None
        if record.finished and after_seq > record.last_seq:
            raise InvalidMessage(
                f"after_seq {after_seq} is past the stream's last frame ({record.last_seq})"
            )
        stream = cls(store, stream_id, record.key, reader, watcher)
        stream._seq = after_seq
        await stream._fetch()
        if not stream.ended:
            if watcher is not None and not record.finished:
                watcher.watch(record.key, stream._new_frames.set)
            stream._task = asyncio.create_task(stream._pump(), name=f"replay:{stream_id}")
        return stream

    async def _fetch(self) -> int:
        """Read the next page; how many frames it held."""
        rows = await self._store.stream_frames(self._key, self._seq, limit_runs=PAGE_RUNS)
        for seq, data in rows:
            self._frames.append(data)
            self._chars += len(data)
            self._seq = seq
            self.ended = self.ended or is_terminal(data)
        if rows:
            self._last_progress = time.monotonic()
            if self.consumer is not None:
                self.consumer.wake(self)
        return len(rows)

    async def _pump(self) -> None:
        """The next page once the reader took this one; new frames as they are journaled."""
        renew_at = time.monotonic() + FOLLOW_RENEW_S
        while not self.ended:
            if self._frames:
                await self._taken.wait()
                self._taken.clear()
                self._last_progress = time.monotonic()  # a slow reader is not a stalled stream
                continue
            try:
                if await self._fetch():
                    continue  # more may be stored already
            except ChatError:
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_frames.wait(), POLL_S)
            self._new_frames.clear()
            if self._watcher is not None and time.monotonic() > renew_at:
                renew_at = time.monotonic() + FOLLOW_RENEW_S
                self._watcher.watch(self._key, self._new_frames.set)
            if not self._frames and time.monotonic() - self._last_progress > STALLED_S:
                gone = UpstreamUnavailable("the server generating this stream went away; ask again")
                self._frames.append(codec.encode(gone.frame(self.id, self._seq + 1)).decode())
                self.ended = True
                if self.consumer is not None:
                    self.consumer.wake(self)

    def has_output(self) -> bool:
        """True when frames are waiting."""
        return bool(self._frames)

    def take(self) -> str | None:
        """The next frame, or None."""
        if not self._frames:
            return None
        data = self._frames.popleft()
        self._chars -= len(data)
        if not self._frames:
            self._taken.set()
            if self.ended and self.consumer is not None:
                self.consumer.replayed(self)
        return data

    def buffered_chars(self) -> int:
        """Text read from the journal that the reader has not taken yet."""
        return self._chars

    def close(self) -> None:
        """The reader is gone: stop following."""
        self.consumer = None
        if self._watcher is not None:
            self._watcher.unwatch(self._key, self._new_frames.set)
        if self._task is not None:
            self._task.cancel()

    async def aclose(self) -> None:
        """Stop following and wait for it."""
        self.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
