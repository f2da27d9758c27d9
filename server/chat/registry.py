"""Every stream and connection of this process, by user: resume, grace, retention and limits."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from server.chat.stream import Stream

log = logging.getLogger(__name__)


class StreamRegistry:
    """Streams outlive sockets: detached ones wait `grace_s` for a resume, finished ones are kept
    `retention_s` for late readers."""

    def __init__(self, *, grace_s: float, retention_s: float) -> None:
        self.grace_s = grace_s
        self.retention_s = retention_s
        self._streams: dict[tuple[str, str], Stream] = {}
        self._by_user: defaultdict[str, set[Stream]] = defaultdict(set)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._connections: defaultdict[str, set[Any]] = defaultdict(set)
        self.draining = False
        self.on_change: Callable[[], None] = lambda: None  # per-user counts changed

    # ---- streams -----------------------------------------------------------------------

    def get(self, user_id: str, stream_id: str) -> Stream | None:
        """A live or recently finished stream of this user."""
        return self._streams.get((user_id, stream_id))

    def add(self, stream: Stream) -> None:
        """Track a new stream (replacing a finished one with the same id)."""
        key = (stream.user_id, stream.id)
        old = self._streams.get(key)
        if old is not None:
            self._cancel_timer(old)
            self._by_user[stream.user_id].discard(old)
        self._streams[key] = stream
        self._by_user[stream.user_id].add(stream)
        self.on_change()

    def live_count(self, user_id: str) -> int:
        """Streams of this user still generating, across all its connections."""
        return sum(1 for s in self._by_user.get(user_id, ()) if s.live)

    def live_streams(self) -> list[Stream]:
        """Every stream still generating."""
        return [s for s in self._streams.values() if s.live]

    def erase(self, user_id: str, matches: Callable[[Stream], bool]) -> list[Stream]:
        """The user's data is being deleted: cancel their matching live streams (each still ends
        with its terminal frame, saved) and forget the finished ones, whose frame logs would
        otherwise stay resumable from memory. Returns the streams cancelled."""
        cancelled = []
        for stream in list(self._by_user.get(user_id, ())):
            if not matches(stream):
                continue
            if stream.live:
                stream.cancel()
                cancelled.append(stream)
            else:
                stream.commit_pending()  # journaled now, so the deletion that follows has it all
                self._cancel_timer(stream)
                self._forget(stream)
        return cancelled

    def detached(self, stream: Stream) -> None:
        """Its socket went away: cancel it unless someone resumes it within the grace period."""
        if stream.live:
            self._schedule(stream, self.grace_s, self._expire_detached)

    def attached(self, stream: Stream) -> None:
        """Someone is reading it again."""
        if stream.live:
            self._cancel_timer(stream)

    def finished(self, stream: Stream) -> None:
        """It ended; keep it for late readers, then forget it."""
        self._schedule(stream, self.retention_s, self._forget)
        self.on_change()

    def _expire_detached(self, stream: Stream) -> None:
        if stream.consumer is None and stream.live:
            log.info("stream %s of %s not resumed in time: interrupted", stream.id, stream.user_id)
            stream.cancel(interrupted=True)

    def _forget(self, stream: Stream) -> None:
        self._timers.pop(stream.key, None)
        if self._streams.get((stream.user_id, stream.id)) is stream:
            del self._streams[(stream.user_id, stream.id)]
            mine = self._by_user[stream.user_id]
            mine.discard(stream)
            if not mine:
                del self._by_user[stream.user_id]

    def _schedule(self, stream: Stream, delay: float, action: Any) -> None:
        self._cancel_timer(stream)
        self._timers[stream.key] = asyncio.get_running_loop().call_later(delay, action, stream)

    def _cancel_timer(self, stream: Stream) -> None:
        timer = self._timers.pop(stream.key, None)
        if timer is not None:
            timer.cancel()

    # ---- connections -------------------------------------------------------------------

    def connect(self, user_id: str, connection: Any) -> int:
        """Count a connection of this user; returns how many it now has."""
        self._connections[user_id].add(connection)
        self.on_change()
        return len(self._connections[user_id])

    def disconnect(self, user_id: str, connection: Any) -> None:
        """Forget a connection."""
        conns = self._connections.get(user_id)
        if conns is not None:
            conns.discard(connection)
            if not conns:
                del self._connections[user_id]
            self.on_change()

    def counts(self) -> list[tuple[str, int, int]]:
        """(user, connections, live streams) for every user with either."""
        users = set(self._connections) | set(self._by_user)
        rows = [(u, len(self._connections.get(u, ())), self.live_count(u)) for u in users]
        return [r for r in rows if r[1] or r[2]]

    def connections(self) -> list[Any]:
        """Every open connection."""
        return [c for conns in self._connections.values() for c in conns]

    # ---- shutdown ----------------------------------------------------------------------

    async def drain(self, deadline_s: float) -> int:
        """Refuse new streams and wait for live ones to end, up to the deadline; returns how many still run."""
        self.draining = True
        tasks = [s.task for s in self.live_streams() if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=deadline_s)
        return len(self.live_streams())

    async def close(self) -> None:
        """Cancel every live stream (saved as interrupted) and wait for them to save."""
        streams = self.live_streams()
        for stream in streams:
            stream.cancel(interrupted=True)
        tasks = [s.task for s in streams if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
