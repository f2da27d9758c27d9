"""Answers left half-way by a process that died (SIGKILL, a crash, a lost node): their messages
become `interrupted` with the text the journal holds, and their streams end with
`done {finish_reason: "cancelled"}` for anyone resuming — as a drain would have done.

A process is gone when it stopped heartbeating (PRESENCE_TTL_S), or, at start, when it ran on
this host and its pid is no longer alive (or is this process's own: a restart reuses pids).
"""

from __future__ import annotations

import json
import logging
import os
import socket

import psutil

from protocol import codec
from protocol.frames import Done, Timings
from server.cluster.bus import FRAMES
from server.errors import ChatError
from server.store import Orphan, Store

log = logging.getLogger(__name__)

_NO_TIMINGS = Timings(first_token_ms=0.0, total_ms=0.0)


def dead_on_this_host(owners: list[str], me: str) -> list[str]:
    """Process ids (`host:pid:start`) of this host whose process no longer runs."""
    host, pid = socket.gethostname(), os.getpid()
    dead = []
    for owner in owners:
        parts = owner.rsplit(":", 2)
        if owner == me or len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        other = int(parts[1])
        if other == pid or not psutil.pid_exists(other):
            dead.append(owner)
    return dead


async def recover_orphans(store: Store, me: str, *, at_start: bool = False) -> int:
    """Settle every message whose process is gone; how many were settled here."""
    dead = dead_on_this_host(await store.process_owners(), me) if at_start else []
    settled = 0
    for orphan in await store.orphaned_messages(me, dead):
        try:
            if await _settle(store, orphan):
                settled += 1
        except ChatError as exc:
            log.warning("could not settle message %s: %s", orphan.message_id, exc.message)
    if settled:
        log.info("settled %d answers left streaming by processes that are gone", settled)
    return settled


async def _settle(store: Store, orphan: Orphan) -> bool:
    text, stream_id = "", None
    if orphan.stream_key is not None:
        for _, data in await store.stream_frames(orphan.stream_key, 0):
            frame = json.loads(data)
            stream_id = frame.get("id", stream_id)
            if frame.get("type") == "delta":
                text += frame.get("text", "")
    end = None
    if orphan.stream_key is not None and stream_id is not None and not orphan.finished:
        seq = orphan.last_seq + 1
        done = Done(id=stream_id, seq=seq, finish_reason="cancelled", timings=_NO_TIMINGS)
        end = (orphan.stream_key, seq, codec.encode(done).decode())
    if not await store.interrupt_orphan(orphan.message_id, text, end):
        return False
    if end is not None:
        await store.notify(FRAMES, orphan.stream_key or "")  # followers read the end at once
    return True
