"""This process among others sharing one database: presence for per-user limits, cancel and
follow across processes. Everything here degrades to single-process behaviour if Postgres
notifications are unavailable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable

from server.chat.registry import StreamRegistry
from server.cluster.bus import CANCEL, FOLLOW, FRAMES, PRESENCE, SEP, Bus
from server.cluster.journal import PROCESS_ID, FrameJournal
from server.cluster.recovery import recover_orphans
from server.errors import ChatError, TooManyStreams
from server.settings import Settings
from server.store import Store

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
PRUNE_INTERVAL_S = 60.0
ABANDONED_S = 3600.0  # an unfinished stream nobody wrote to for an hour lost its process
BUS_WAIT_S = 2.0
SYNC_DELAY_S = 0.2  # changes within this window go out in one presence update


class Cluster:
    """Presence, cross-process cancel and live follow, over Postgres."""

    def __init__(
        self, store: Store, registry: StreamRegistry, journal: FrameJournal, settings: Settings
    ) -> None:
        self._store = store
        self._registry = registry
        self._journal = journal
        self._settings = settings
        self.bus: Bus | None = None
        self._watchers: defaultdict[str, set[Callable[[], None]]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()
        self._others_alive = True  # until the first heartbeat says otherwise
        self._newcomer = asyncio.Event()  # another process started
        self._newcomer_until = 0.0  # counted as alive until its own heartbeat must show it
        registry.on_change = self._dirty.set

    def start(self, dsn: str | None) -> None:
        """Heartbeat, and listen for other processes when a DSN for a listening connection is known."""
        if dsn is not None:
            self.bus = Bus(dsn)
            self.bus.on(FRAMES, self._on_frames)
            self.bus.on(FOLLOW, self._journal.mark_followed)
            self.bus.on(CANCEL, self._on_cancel)
            self.bus.on(PRESENCE, self._on_newcomer)
            self.bus.start()
        self._task = asyncio.create_task(self._presence_loop(), name="presence")
        self._housekeeping = asyncio.create_task(self._prune_loop(), name="prune")

    def on(self, channel: str, handler: Callable[[str], None]) -> None:
        """Call `handler(payload)` for notifications on `channel` from any process, if listening."""
        if self.bus is not None:
            self.bus.on(channel, handler)

    async def _presence_loop(self) -> None:
        announced = False
        while True:
            self._dirty.clear()
            self._newcomer.clear()
            try:
                others = await self._store.heartbeat(PROCESS_ID, self._registry.counts())
                self._others_alive = others > 0 or time.monotonic() < self._newcomer_until
            except ChatError as exc:
                log.warning("presence update failed: %s", exc.message)
            if not announced:  # alive in `owners` first, then say so to lone processes
                announced = True
                await self._announce()
            # Only other processes read the counts: alone, rewriting them on every change
            # (each socket and stream) would be wasted work.
            wake = self._dirty if self._others_alive else self._newcomer
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), HEARTBEAT_S)
            await asyncio.sleep(SYNC_DELAY_S)

    async def _prune_loop(self) -> None:
        """Settle answers of processes that died; forget what outlived its use: streams past
        retention, rate windows, chapter claims."""
        at_start = True
        while True:
            try:
                await recover_orphans(self._store, PROCESS_ID, at_start=at_start)
                if not at_start:
                    await self._store.prune_streams(self._settings.resume_retention_s, ABANDONED_S)
                    await self._store.prune_rate_windows()
                    await self._store.prune_chapter_jobs()
            except ChatError as exc:
                log.warning("pruning failed: %s", exc.message)
            at_start = False
            await asyncio.sleep(PRUNE_INTERVAL_S)

    async def _announce(self) -> None:
        if self.bus is not None:  # listening first: of two starting together, one hears the other
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.bus.connected.wait(), BUS_WAIT_S)
        with contextlib.suppress(ChatError):  # a lone process wakes up to count its users now
            await self._store.notify(PRESENCE, PROCESS_ID)

    def _on_newcomer(self, process_id: str) -> None:
        if process_id != PROCESS_ID:
            self._others_alive = True
            self._newcomer_until = time.monotonic() + 2 * HEARTBEAT_S
            self._newcomer.set()

    # ---- limits ------------------------------------------------------------------------

    async def elsewhere(self, user_id: str) -> tuple[int, int]:
        """(connections, live streams) of the user on other processes; (0, 0) if unknown."""
        if not self._others_alive:  # a lone process: no round trip
            return 0, 0
        try:
            return await self._store.presence_elsewhere(PROCESS_ID, user_id)
        except ChatError:
            return 0, 0  # fail open: per-process limits still hold

    async def admit_stream(self, user_id: str) -> None:
        """Raise TooManyStreams when the user's live streams across processes exceed the limit."""
        _, remote = await self.elsewhere(user_id)
        if (
            remote
            and remote + self._registry.live_count(user_id) > self._settings.max_streams_per_user
        ):
            raise TooManyStreams("too many streams for this user; wait for one to finish")

    # ---- cancel ------------------------------------------------------------------------

    async def cancel_remote(self, user_id: str, stream_id: str) -> bool:
        """Ask the process generating this user's stream to cancel it; False if there is none."""
        record = await self._store.stream_record(
            user_id, stream_id, self._settings.resume_retention_s
        )
        if record is None or record.finished:
            return False
        await self._store.notify(CANCEL, SEP.join((user_id, stream_id, record.key)))
        return True

    def _on_cancel(self, payload: str) -> None:
        user_id, stream_id, key = payload.split(SEP)
        stream = self._registry.get(user_id, stream_id)
        if stream is not None and stream.key == key:
            stream.cancel()

    # ---- follow ------------------------------------------------------------------------

    def watch(self, key: str, wake: Callable[[], None]) -> None:
        """Call `wake` when new frames of `key` are journaled, and ask its owner to flush promptly."""
        self._watchers[key].add(wake)
        if self.bus is not None:
            asyncio.get_running_loop().create_task(self._follow(key))

    async def _follow(self, key: str) -> None:
        with contextlib.suppress(ChatError):
            await self._store.notify(FOLLOW, key)

    def unwatch(self, key: str, wake: Callable[[], None]) -> None:
        """Stop calling `wake`."""
        watchers = self._watchers.get(key)
        if watchers is not None:
            watchers.discard(wake)
            if not watchers:
                del self._watchers[key]

    def _on_frames(self, payload: str) -> None:
        for key in payload.split(","):
            for wake in list(self._watchers.get(key, ())):
                wake()

    async def close(self) -> None:
        """Stop, and tell the others this process's users are gone."""
        for task in (self._task, self._housekeeping):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.bus is not None:
            await self.bus.close()
        with contextlib.suppress(ChatError):
            await self._store.drop_owner(PROCESS_ID)
