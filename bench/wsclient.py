"""A lean chat-socket client for benchmarks that need more than the load tester reports:
`done.timings`, the moment a chosen delta arrives, sockets held open idle."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence

import msgspec
from websockets.asyncio.client import ClientConnection, connect

from bench.harness import JWT_SECRET
from server.auth import mint_token


class WireFrame(msgspec.Struct):
    """The fields of a server frame the benchmarks read."""

    type: str
    id: str | None = None
    text: str | None = None
    finish_reason: str | None = None
    code: str | None = None
    timings: dict[str, float] | None = None


decode_frame = msgspec.json.Decoder(WireFrame).decode
TERMINAL = ("done", "error")


def tokens(users: int, prefix: str = "bench-") -> list[str]:
    """One HS256 token per user, valid for an hour."""
    return [mint_token(JWT_SECRET, f"{prefix}{i}", 3600) for i in range(users)]


async def open_socket(url: str, token: str, timeout: float = 20.0) -> ClientConnection:  # noqa: ASYNC109
    """An authenticated socket, its `ready` frame consumed."""
    ws = await connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
        proxy=None,
        ping_interval=None,  # the server pings; websockets answers on its own
        max_size=2**22,
        open_timeout=timeout,
        close_timeout=2,
    )
    ready = decode_frame(await asyncio.wait_for(ws.recv(decode=False), timeout))
    if ready.type != "ready":
        await ws.close()
        raise RuntimeError(f"expected ready, got {ready}")
    return ws


async def open_sockets(
    url: str, token_list: Sequence[str], concurrency: int = 128
) -> list[ClientConnection]:
    """Open one socket per token, `concurrency` handshakes at a time."""
    slots = asyncio.Semaphore(concurrency)

    async def one(token: str) -> ClientConnection:
        async with slots:
            return await open_socket(url, token)

    return list(await asyncio.gather(*(one(t) for t in token_list)))


async def close_sockets(sockets: Sequence[ClientConnection]) -> None:
    """Close them all, ignoring the ones already gone."""
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


@dataclasses.dataclass(slots=True)
class StreamResult:
    """One stream as the client saw it (seconds, perf_counter clock)."""

    sent_at: float
    first_delta_at: float | None = None
    ended_at: float | None = None
    deltas: int = 0
    finish: str | None = None  # finish_reason of `done`, or the error code
    timings: dict[str, float] | None = None

    @property
    def ttfd_ms(self) -> float | None:
        """Ask sent to first delta received."""
        return None if self.first_delta_at is None else (self.first_delta_at - self.sent_at) * 1000


async def send_ask(ws: ClientConnection, stream_id: str, question: str) -> StreamResult:
    """Send an `ask`; the result to pass to `read_stream`."""
    payload = msgspec.json.encode({"type": "ask", "id": stream_id, "question": question})
    result = StreamResult(sent_at=time.perf_counter())
    await ws.send(payload, text=True)
    return result


async def read_stream(
    ws: ClientConnection, stream_id: str, result: StreamResult, until_deltas: int | None = None
) -> StreamResult:
    """Read this stream's frames until its terminal frame (or until `until_deltas` deltas)."""
    while result.ended_at is None:
        if until_deltas is not None and result.deltas >= until_deltas:
            return result
        frame = decode_frame(await ws.recv(decode=False))
        if frame.id != stream_id:
            continue
        now = time.perf_counter()
        if frame.type == "delta":
            if result.first_delta_at is None:
                result.first_delta_at = now
            result.deltas += 1
        elif frame.type in TERMINAL:
            result.ended_at = now
            result.finish = frame.finish_reason if frame.type == "done" else frame.code
            result.timings = frame.timings
    return result


async def ask(ws: ClientConnection, stream_id: str, question: str) -> StreamResult:
    """Ask and read the whole stream."""
    return await read_stream(ws, stream_id, await send_ask(ws, stream_id, question))
