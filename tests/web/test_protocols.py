"""The socket protocol's lean parts: its receive queue, its writable flag, and what it keeps."""

from __future__ import annotations

import asyncio
import gc
import types

import pytest
from websockets.http11 import Request

from server.tools.client import connect
from server.web.protocols import _Flag, _Inbox
from tests.conftest import LiveServer, token_for


async def test_the_inbox_hands_out_messages_in_order_and_waits_for_the_next() -> None:
    inbox = _Inbox()
    inbox.put_nowait("first")
    inbox.put_nowait("second")
    assert await inbox.get() == "first"
    assert await inbox.get() == "second"
    assert inbox.empty()
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    inbox.put_nowait("third")
    assert await waiting == "third"


async def test_the_inbox_has_one_reader() -> None:
    inbox = _Inbox()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one reader"):
        await inbox.get()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    inbox.put_nowait("kept")  # a cancelled reader loses nothing
    assert await inbox.get() == "kept"


async def test_the_flag_waits_until_set() -> None:
    flag = _Flag()
    assert not flag.is_set()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True]
    assert await flag.wait() is True  # set: at once
    flag.clear()
    assert not flag.is_set()


def _kept_by_a_generator(request: Request) -> bool:
    return any(
        isinstance(r, (types.GeneratorType, types.FrameType)) for r in gc.get_referrers(request)
    )


async def test_an_open_socket_keeps_no_parsed_upgrade_request(live: LiveServer) -> None:
    """websockets' parser kept the server's parsed request (~3 KiB) for the socket's life."""
    async with connect(live.ws_url, token_for("lean")) as chat:
        frames = await chat.ask("q", "What is a node? [[fake:tokens=3]]")  # frames still parse
        assert frames[-1]["type"] == "done"
        gc.collect()
        requests = [o for o in gc.get_objects() if isinstance(o, Request)]
        assert requests  # the client's own, at least
        kept = [request for request in requests if _kept_by_a_generator(request)]
        assert kept == []
