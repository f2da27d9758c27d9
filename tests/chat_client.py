"""A small protocol client over the real `websockets` library, for end-to-end tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

TERMINAL = ("done", "error")


class ChatClient:
    """Sends frames and reads them back as dicts."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        frame: dict[str, Any] = json.loads(raw)
        return frame

    async def recv_type(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
        while True:
            frame = await self.recv(timeout)
            if frame["type"] == kind:
                return frame

    async def stream(self, stream_id: str, timeout: float = 30.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
        """Every frame of one stream, up to and including its terminal frame."""
        frames: list[dict[str, Any]] = []
        while True:
            frame = await self.recv(timeout)
            if frame.get("id") != stream_id:
                continue
            frames.append(frame)
            if frame["type"] in TERMINAL:
                return frames

    async def ends(self, ids: set[str], timeout: float = 30.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
        """The terminal frames of these streams, all running on this socket."""
        ends: dict[str, dict[str, Any]] = {}
        while len(ends) < len(ids):
            frame = await self.recv(timeout)
            if frame.get("id") in ids and frame["type"] in TERMINAL:
                ends[frame["id"]] = frame
        return list(ends.values())

    async def until_closed(self) -> tuple[list[dict[str, Any]], int | None]:
        """Every frame until the server closes the socket, and the close code it sent."""
        frames: list[dict[str, Any]] = []
        try:
            while True:
                frames.append(await self.recv())
        except websockets.ConnectionClosed as closed:
            return frames, closed.rcvd.code if closed.rcvd else None

    async def ask(self, stream_id: str, question: str, **fields: Any) -> list[dict[str, Any]]:
        await self.send(type="ask", id=stream_id, question=question, **fields)
        return await self.stream(stream_id)


@asynccontextmanager
async def connect(url: str, token: str | None = None, **kwargs: Any) -> AsyncIterator[ChatClient]:
    """Open a socket, authenticating with a header when a token is given; `ready` is consumed."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with websockets.connect(url, additional_headers=headers, **kwargs) as ws:
        client = ChatClient(ws)
        if token:
            ready = await client.recv()
            assert ready["type"] == "ready", ready
        yield client


def deltas(frames: list[dict[str, Any]]) -> str:
    """The answer text of a stream."""
    return "".join(f["text"] for f in frames if f["type"] == "delta")
