"""Two minimal relays of a model's stream over the chat socket: baselines for the full server.

Run: .venv/bin/python -m bench.relays sdk|raw --port 8010 [--model-url http://127.0.0.1:8100/v1]

`sdk` forwards the openai SDK's parsed chunks (`chat.completions.create(stream=True)`); `raw`
reads the SSE lines through `with_streaming_response` and decodes them with msgspec. Both speak
enough of protocol v1 for the load tester: `ready` on connect (any Authorization header is
ignored), `ask` -> `start`, `delta`..., `done` with timings, `cancel`, `ping`. No auth, no
retrieval, no database, no resume: a socket that goes away cancels its streams at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

import httpx2
import msgspec
import openai
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from protocol import codec
from protocol.codes import ErrorCode
from protocol.frames import (
    Ask,
    Cancel,
    Delta,
    Done,
    Error,
    Limits,
    Ping,
    Pong,
    Ready,
    Start,
    Timings,
    Usage,
)
from protocol.limits import MAX_FRAME_BYTES

RelayKind = Literal["sdk", "raw"]
KINDS: tuple[RelayKind, ...] = ("sdk", "raw")


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


class ModelStream:
    """One completion's text pieces, through the SDK's parsed chunks or self-parsed SSE lines."""

    def __init__(self, client: openai.AsyncOpenAI, kind: RelayKind, model: str) -> None:
        self._client = client
        self._kind = kind
        self._model = model
        self.usage: Usage | None = None

    def pieces(self, question: str) -> AsyncGenerator[str, None]:
        """The answer's text, piece by piece; closing the iterator closes the upstream stream."""
        return self._sdk(question) if self._kind == "sdk" else self._raw(question)

    def _request(self, question: str) -> dict[str, Any]:
        return {
            "model": self._model,
            "messages": [{"role": "user", "content": question}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    async def _sdk(self, question: str) -> AsyncGenerator[str, None]:
        stream = await self._client.chat.completions.create(**self._request(question))
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    self.usage = Usage(
                        prompt_tokens=chunk.usage.prompt_tokens,
                        completion_tokens=chunk.usage.completion_tokens,
                    )
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield choice.delta.content

    async def _raw(self, question: str) -> AsyncGenerator[str, None]:
        create = self._client.chat.completions.with_streaming_response.create
        async with create(**self._request(question)) as response:
            async for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = _decode_chunk(data)
                if chunk.usage is not None:
                    self.usage = Usage(
                        prompt_tokens=chunk.usage.prompt_tokens,
                        completion_tokens=chunk.usage.completion_tokens,
                    )
                for choice in chunk.choices:
                    if choice.delta is not None and choice.delta.content:
                        yield choice.delta.content


class RelaySocket:
    """One chat socket of a relay: a task per stream, sends serialised by a lock."""

    def __init__(self, ws: WebSocket, client: openai.AsyncOpenAI, kind: RelayKind) -> None:
        self.ws = ws
        self.client = client
        self.kind = kind
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.closed = False
        self._send_lock = asyncio.Lock()

    async def serve(self) -> None:
        """Accept, send `ready`, then read frames until the peer leaves."""
        await self.ws.accept()
        limits = Limits(max_streams=64, max_frame_bytes=MAX_FRAME_BYTES)
        await self._send(
            Ready(
                session_id=str(uuid.uuid4()),
                user_id="relay",
                expires_at=int(time.time()) + 3600,
                limits=limits,
            )
        )
        try:
            while True:
                text = await self.ws.receive_text()
                try:
                    frame = codec.decode_client(text)
                except codec.DecodeError as exc:
                    await self._send(
                        Error(code=ErrorCode.INVALID_MESSAGE, message=str(exc), retryable=False)
                    )
                    continue
                if isinstance(frame, Ask):
                    task = asyncio.create_task(self._answer(frame))
                    self.tasks[frame.id] = task
                    task.add_done_callback(functools.partial(self._forget, frame.id))
                elif isinstance(frame, Cancel):
                    running = self.tasks.get(frame.id)
                    if running is not None:
                        running.cancel()
                elif isinstance(frame, Ping):
                    await self._send(Pong(nonce=frame.nonce))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self.closed = True
            running_tasks = list(self.tasks.values())
            for task in running_tasks:
                task.cancel()
            await asyncio.gather(*running_tasks, return_exceptions=True)

    def _forget(self, sid: str, task: asyncio.Task[None]) -> None:
        if self.tasks.get(sid) is task:
            del self.tasks[sid]

    async def _send(self, frame: Any) -> None:
        data = codec.encode(frame).decode()
        async with self._send_lock:
            await self.ws.send_text(data)

    async def _answer(self, ask: Ask) -> None:
        sid = ask.id
        began = time.perf_counter()
        seq = 1
        model = ModelStream(self.client, self.kind, self.ws.app.state.model)
        first_chunk_at: float | None = None
        first_sent_at: float | None = None
        finish: Literal["stop", "cancelled"] = "stop"
        try:
            await self._send(Start(id=sid, seq=seq, message_id=str(uuid.uuid4())))
            requested = time.perf_counter()
            try:
                # aclosing: a cancel that lands in _send must still close the upstream stream now
                async with contextlib.aclosing(model.pieces(ask.question)) as pieces:
                    async for piece in pieces:
                        if first_chunk_at is None:
                            first_chunk_at = time.perf_counter()
                        seq += 1
                        await self._send(Delta(id=sid, seq=seq, text=piece))
                        if first_sent_at is None:
                            first_sent_at = time.perf_counter()
            except asyncio.CancelledError:
                if self.closed:
                    raise  # the socket is gone: nobody to tell
                finish = "cancelled"
            # the SDK raises its transport's errors unwrapped while a raw stream is read
            except (openai.APIError, httpx2.HTTPError, msgspec.DecodeError) as exc:
                seq += 1
                await self._send(
                    Error(
                        id=sid,
                        seq=seq,
                        code=ErrorCode.UPSTREAM_UNAVAILABLE,
                        message=f"model stream failed: {type(exc).__name__}",
                        retryable=True,
                    )
                )
                return
            now = time.perf_counter()
            timings = Timings(
                first_token_ms=round(((first_sent_at or now) - began) * 1000, 2),
                total_ms=round((now - began) * 1000, 2),
                model_first_chunk_ms=None
                if first_chunk_at is None
                else round((first_chunk_at - requested) * 1000, 3),
                server_added_ms=None
                if first_chunk_at is None or first_sent_at is None
                else round((first_sent_at - first_chunk_at) * 1000, 3),
            )
            seq += 1
            await self._send(
                Done(id=sid, seq=seq, finish_reason=finish, timings=timings, usage=model.usage)
            )
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the socket closed while we were sending


def create_relay_app(
    kind: RelayKind, model_url: str, *, model: str = "fake-model", api_key: str = "bench"
) -> Starlette:
    """A Starlette app relaying `/v1/chat` asks to the OpenAI-compatible server at `model_url`."""
    if kind not in KINDS:
        raise ValueError(f"relay kind must be one of {KINDS}, not {kind!r}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The same client options as the full server's (server/services.py openai_client).
        client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=model_url,
            timeout=openai.Timeout(60.0, connect=5.0),
            max_retries=2,
        )
        app.state.client = client
        app.state.model = model
        try:
            yield
        finally:
            await client.close()

    async def chat(ws: WebSocket) -> None:
        await RelaySocket(ws, ws.app.state.client, kind).serve()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "relay": kind})

    return Starlette(
        routes=[WebSocketRoute("/v1/chat", chat), Route("/healthz", healthz)], lifespan=lifespan
    )


def relay_config(app: Starlette, host: str, port: int) -> uvicorn.Config:
    """uvicorn configured with the full server's socket options (server/serve.py)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ws_max_size=MAX_FRAME_BYTES,
        ws_per_message_deflate=False,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.relays sdk|raw --port N`."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.relays", description=__doc__.splitlines()[0]
    )
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--model-url", default="http://127.0.0.1:8100/v1")
    parser.add_argument("--model", default="fake-model")
    args = parser.parse_args(argv)
    app = create_relay_app(args.kind, args.model_url, model=args.model)
    uvicorn.Server(relay_config(app, args.host, args.port)).run()


if __name__ == "__main__":
    main()
