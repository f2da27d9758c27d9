"""Deleting a reader's data while their streams may be running, here or on another process.

A running stream writes as it ends: its message (status and partial answer), its usage, its
journaled frames. Deleted first, those rows would come back a moment later. So the streams the
deletion concerns are cancelled first, on every process, and awaited until each has ended with
its terminal frame and had its frames journaled; then the rows go in one transaction; then every
process forgets the finished streams it kept in memory for late resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from server.chapters.rewrite import profile_fingerprint
from server.cluster.bus import ERASE
from server.cluster.journal import PROCESS_ID
from server.errors import ChatError
from server.profiles import profile_from_claims
from server.readers.scope import Scope
from server.services import Services

log = logging.getLogger(__name__)

STOP_WAIT_S = 10.0  # how long the streams get to end before the deletion goes ahead anyway
POLL_S = 0.05

T = TypeVar("T")


async def with_streams_stopped(
    services: Services, user_id: str, scope: Scope, delete: Callable[[], Awaitable[T]]
) -> tuple[T, int]:
    """Stop the user's streams in `scope` on every process, run `delete`, then make every
    process forget them; returns what `delete` returned and how many streams were stopped."""
    stopped = await _stop(services, user_id, scope)
    result = await delete()
    await _forget(services, user_id, scope)
    return result, stopped


async def erase_reader(
    services: Services, user_id: str, claims: dict[str, object]
) -> tuple[dict[str, int], int]:
    """Delete everything kept about the user; returns rows deleted per table and how many
    streams were stopped first. Idempotent."""
    store = services.store
    saved = await store.get_profile(user_id)
    hashes = sorted(
        {profile_fingerprint(p) for p in (saved, profile_from_claims(dict(claims))) if p} - {""}
    )
    return await with_streams_stopped(
        services, user_id, Scope(everything=True), lambda: store.erase_reader(user_id, hashes)
    )


async def _stop(services: Services, user_id: str, scope: Scope) -> int:
    if scope.empty:
        return 0
    remote = await _remote_streams(services, user_id, scope)  # before the notice stops them
    await _notify(services, user_id, scope)  # the other processes start cancelling at once
    here = services.registry.erase(user_id, scope.matches_stream)
    stopped = len(here) + len(remote)
    for sid in remote:  # also directly, in case a process missed the notice
        with contextlib.suppress(ChatError):
            await services.cluster.cancel_remote(user_id, sid)
    tasks = [s.task for s in here if s.task is not None]
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=STOP_WAIT_S)
        if pending:
            log.warning("%d streams of a reader being erased did not stop in time", len(pending))
    for stream in here:
        stream.commit_pending()
    await services.journal.flush()
    deadline = time.monotonic() + STOP_WAIT_S
    while remote and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        remote = await _remote_streams(services, user_id, scope)
    if remote:
        log.warning("%d remote streams of a reader being erased did not stop in time", len(remote))
    return stopped


async def _remote_streams(services: Services, user_id: str, scope: Scope) -> list[str]:
    found = await services.store.unfinished_streams(user_id, PROCESS_ID)
    return [sid for sid, kind in found if scope.matches(sid, kind)]


async def _forget(services: Services, user_id: str, scope: Scope) -> None:
    """Streams that ended while the deletion waited are still held for late resumes."""
    if scope.empty:
        return
    services.registry.erase(user_id, scope.matches_stream)
    await _notify(services, user_id, scope)


async def _notify(services: Services, user_id: str, scope: Scope) -> None:
    for payload in scope.notices(user_id):
        try:
            await services.store.notify(ERASE, payload)
        except ChatError as exc:  # the deletion itself will say whether the database is there
            log.warning("erase notice not sent: %s", exc.message)
