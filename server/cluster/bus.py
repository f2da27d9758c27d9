"""Signals between server processes over Postgres LISTEN/NOTIFY: new frames, follows, cancels,
readers of shared chapter jobs.

LISTEN needs a direct (session) connection: through a transaction-pooling proxy (PgBouncer,
Neon's pooled endpoint) notifications never arrive, and resume across processes falls back to
polling the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

SEP = "\x1f"  # between the fields of a payload
FRAMES = "tc_frames"  # payload: stream keys with new journaled frames, comma-separated
FOLLOW = "tc_follow"  # payload: a stream key someone on another process reads live
CANCEL = "tc_cancel"  # payload: user \x1f stream id \x1f stream key
CHAPTER = "tc_chapter"  # payload: journal id of a chapter job one of whose remote readers left
PRESENCE = "tc_presence"  # payload: the id of a process that just started
ERASE = "tc_erase"  # payload: user \x1f which streams (server/readers/erase.py)
CHANNELS = (FRAMES, FOLLOW, CANCEL, CHAPTER, PRESENCE, ERASE)
RECONNECT_S = 1.0
MAX_PAYLOAD = 7900  # Postgres refuses notification payloads of 8000 bytes or more


class Bus:
    """One listening connection per process, and callbacks by channel."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._handlers: defaultdict[str, list[Callable[[str], None]]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self.connected = asyncio.Event()

    def on(self, channel: str, handler: Callable[[str], None]) -> None:
        """Call `handler(payload)` for every notification on `channel`."""
        self._handlers[channel].append(handler)

    def off(self, channel: str, handler: Callable[[str], None]) -> None:
        """Stop calling `handler`."""
        with contextlib.suppress(ValueError):
            self._handlers[channel].remove(handler)

    def start(self) -> None:
        """Listen in the background, reconnecting as needed."""
        self._task = asyncio.create_task(self._run(), name="pg-bus")

    async def _run(self) -> None:
        while True:
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning(
                    "notification listener cannot connect (%s); retrying", type(exc).__name__
                )
                await asyncio.sleep(RECONNECT_S)
                continue
            self._conn = conn
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c, lost=lost: lost.set())
            try:
                for channel in CHANNELS:
                    await conn.add_listener(channel, self._dispatch)
                self.connected.set()
                await lost.wait()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("notification listener lost (%s); reconnecting", type(exc).__name__)
            finally:
                self.connected.clear()
                self._conn = None
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)
            await asyncio.sleep(RECONNECT_S)

    def _dispatch(self, _conn: Any, _pid: int, channel: str, payload: object) -> None:
        for handler in list(self._handlers.get(channel, ())):
            try:
                handler(str(payload))
            except Exception:
                log.exception("notification handler failed on %s", channel)

    async def close(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def batches(keys: list[str]) -> list[str]:
    """Comma-joined payloads of at most MAX_PAYLOAD bytes."""
    out: list[str] = []
    current: list[str] = []
    size = 0
    for key in keys:
        if current and size + len(key) + 1 > MAX_PAYLOAD:
            out.append(",".join(current))
            current, size = [], 0
        current.append(key)
        size += len(key) + 1
    if current:
        out.append(",".join(current))
    return out
