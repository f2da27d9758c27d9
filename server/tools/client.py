"""The Python client of the chat protocol over the `websockets` library: the tests, the
benchmarks and the load tester all speak to the server through it.

Two levels: `open_socket` and `decode_frame` for code that counts microseconds (the load tester
decodes only the fields it reads), and `ChatClient` for code that reads whole streams as dicts.
`ChatClient` checks every stream it reads against the stream contract (protocol/contract.py)
and keeps what it finds in `violations`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from protocol.contract import StreamContract
from protocol.frames import TERMINAL_TYPES

# The server pings and websockets answers on its own; no compression (the server offers none).
SOCKET_OPTIONS: dict[str, Any] = {
    "compression": None,
    "proxy": None,
    "ping_interval": None,
    "close_timeout": 2,
    "max_size": 2**22,
}


class WireUsage(msgspec.Struct, gc=False):
    """The part of `done.usage` clients count."""

    completion_tokens: int = 0
    prompt_tokens: int = 0


class WireFrame(msgspec.Struct, gc=False):
    """The fields of a server frame a client reads; msgspec skips the rest unparsed."""

    type: str = ""
    id: str | None = None
    seq: int | None = None
    code: str | None = None
    text: str | None = None
    finish_reason: str | None = None
    usage: WireUsage | None = None
    cached: bool | None = None
    timings: dict[str, float] | None = None


decode_frame = msgspec.json.Decoder(WireFrame).decode
_encode = msgspec.json.Encoder().encode
_decode_dict = msgspec.json.Decoder(dict[str, Any]).decode


class ContractViolation(AssertionError):
    """A stream broke the protocol's stream contract."""


def close_code(exc: ConnectionClosed) -> int:
    """The close code the server sent (1006 when the socket just went away)."""
    return exc.rcvd.code if exc.rcvd else 1006


async def open_socket(
    url: str,
    token: str | None = None,
    *,
    wait_ready: bool = True,
    open_timeout: float | None = 20.0,
    **options: Any,
) -> ClientConnection:
    """A socket authenticated with a bearer header; its `ready` frame consumed when asked."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    ws = await ws_connect(
        url,
        additional_headers=headers,
        open_timeout=open_timeout,
        **{**SOCKET_OPTIONS, **options},
    )
    if token and wait_ready:
        raw = await asyncio.wait_for(ws.recv(decode=False), open_timeout)
        ready = decode_frame(raw)
        if ready.type != "ready":
            await ws.close()
            raise ConnectionError(f"expected ready, got {bytes(raw)[:200]!r}")
    return ws


async def open_sockets(
    url: str, tokens: Sequence[str], concurrency: int = 128
) -> list[ClientConnection]:
    """One authenticated socket per token, `concurrency` handshakes at a time."""
    slots = asyncio.Semaphore(concurrency)

    async def one(token: str) -> ClientConnection:
        async with slots:
            return await open_socket(url, token)

    return list(await asyncio.gather(*(one(t) for t in tokens)))


async def close_sockets(sockets: Sequence[ClientConnection]) -> None:
    """Close them all, ignoring the ones already gone."""
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


class ChatClient:
    """Sends frames and reads them back as dicts, checking each stream's contract."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.violations: list[str] = []
        self._contracts: dict[str, StreamContract] = {}

    async def send(self, **frame: Any) -> None:
        """Send one frame given as fields (`type=…`)."""
        kind, sid = frame.get("type"), frame.get("id")
        if isinstance(sid, str) and kind in ("ask", "chapter"):
            self._contracts[sid] = StreamContract()
        elif isinstance(sid, str) and kind == "resume" and isinstance(frame.get("after_seq"), int):
            self._contracts[sid] = StreamContract(frame["after_seq"])
        await self.ws.send(_encode(frame).decode())

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The next frame."""
        frame = _decode_dict(await asyncio.wait_for(self.ws.recv(decode=False), timeout))
        sid, seq = frame.get("id"), frame.get("seq")
        if isinstance(sid, str) and seq is not None:  # an error without seq is a refusal
            contract = self._contracts.setdefault(sid, StreamContract())
            violation = contract.check(frame["type"], seq)
            if violation is not None:
                self.violations.append(f"stream {sid}: {violation} ({frame['type']} seq {seq})")
        return frame

    async def recv_type(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The next frame of this type, skipping others."""
        while True:
            frame = await self.recv(timeout)
            if frame["type"] == kind:
                return frame

    async def stream(self, stream_id: str, timeout: float = 30.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
        """Every frame of one stream, up to and including its terminal frame (or its refusal)."""
        frames: list[dict[str, Any]] = []
        while True:
            frame = await self.recv(timeout)
            if frame.get("id") != stream_id:
                continue
            frames.append(frame)
            if frame["type"] in TERMINAL_TYPES:
                return frames

    async def ends(self, ids: set[str], timeout: float = 30.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
        """The terminal frames of these streams, all running on this socket."""
        ends: dict[str, dict[str, Any]] = {}
        while len(ends) < len(ids):
            frame = await self.recv(timeout)
            if frame.get("id") in ids and frame["type"] in TERMINAL_TYPES:
                ends[frame["id"]] = frame
        return list(ends.values())

    async def until_closed(self) -> tuple[list[dict[str, Any]], int | None]:
        """Every frame until the server closes the socket, and the close code it sent."""
        frames: list[dict[str, Any]] = []
        try:
            while True:
                frames.append(await self.recv())
        except ConnectionClosed as closed:
            return frames, closed.rcvd.code if closed.rcvd else None

    async def ask(self, stream_id: str, question: str, **fields: Any) -> list[dict[str, Any]]:
        """Ask and read the whole stream."""
        await self.send(type="ask", id=stream_id, question=question, **fields)
        return await self.stream(stream_id)

    def assert_contract(self) -> None:
        """Raise ContractViolation if any stream read so far broke the contract."""
        if self.violations:
            raise ContractViolation("; ".join(self.violations[:10]))


@contextlib.asynccontextmanager
async def connect(url: str, token: str | None = None, **options: Any) -> AsyncIterator[ChatClient]:
    """A `ChatClient` on a new socket (`ready` consumed when a token is given); on a normal exit
    every stream it read must have kept the contract."""
    options.setdefault("open_timeout", 10.0)
    ws = await open_socket(url, token, **options)
    client = ChatClient(ws)
    try:
        yield client
    finally:
        await ws.close()
    client.assert_contract()


def deltas(frames: list[dict[str, Any]]) -> str:
    """The answer text of a stream."""
    return "".join(f["text"] for f in frames if f["type"] == "delta")


# ---- timed streams, for the benchmarks ---------------------------------------------------


@dataclasses.dataclass(slots=True)
class StreamResult:
    """One stream as the client saw it (seconds, perf_counter clock)."""

    sent_at: float
    first_delta_at: float | None = None
    ended_at: float | None = None
    deltas: int = 0
    finish: str | None = None  # finish_reason of `done`, or the error code
    timings: dict[str, float] | None = None
    # checked across read_stream calls: a stream read in parts (until some deltas, then to its
    # end) goes on from the seq it reached
    contract: StreamContract = dataclasses.field(default_factory=StreamContract)

    @property
    def ttfd_ms(self) -> float | None:
        """Ask sent to first delta received."""
        return None if self.first_delta_at is None else (self.first_delta_at - self.sent_at) * 1000


async def send_ask(ws: ClientConnection, stream_id: str, question: str) -> StreamResult:
    """Send an `ask`; the result to pass to `read_stream`."""
    payload = _encode({"type": "ask", "id": stream_id, "question": question})
    result = StreamResult(sent_at=time.perf_counter())
    await ws.send(payload, text=True)
    return result


async def read_stream(
    ws: ClientConnection, stream_id: str, result: StreamResult, until_deltas: int | None = None
) -> StreamResult:
    """Read this stream's frames until its terminal frame (or until `until_deltas` deltas)."""
    contract = result.contract
    while result.ended_at is None:
        if until_deltas is not None and result.deltas >= until_deltas:
            return result
        frame = decode_frame(await ws.recv(decode=False))
        if frame.id != stream_id:
            continue
        now = time.perf_counter()
        if frame.seq is not None and (violation := contract.check(frame.type, frame.seq)):
            raise ContractViolation(f"stream {stream_id}: {violation}")
        if frame.type == "delta":
            if result.first_delta_at is None:
                result.first_delta_at = now
            result.deltas += 1
        elif frame.type in TERMINAL_TYPES:
            result.ended_at = now
            result.finish = frame.finish_reason if frame.type == "done" else frame.code
            result.timings = frame.timings
    return result


async def timed_ask(ws: ClientConnection, stream_id: str, question: str) -> StreamResult:
    """Ask and read the whole stream, timed."""
    return await read_stream(ws, stream_id, await send_ask(ws, stream_id, question))
