"""One WebSocket connection: authenticate, then one reader, one writer that alone sends, a task per stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from protocol import codec
from protocol.codes import CloseCode
from protocol.frames import (
    Ask,
    Auth,
    Cancel,
    Chapter,
    ClientFrame,
    Error,
    Limits,
    Ping,
    Pong,
    Ready,
    Resume,
)
from server.answer import AnswerRun
from server.auth import Identity
from server.chapters import ChapterRun
from server.errors import (
    ChatError,
    DuplicateId,
    InvalidMessage,
    NotFound,
    TooManyStreams,
    Unauthorized,
)
from server.services import Services
from server.stream import Stream

log = logging.getLogger(__name__)

OUTBOX_FRAMES = 256
MAX_FRAME_BYTES = 131_072
ABUSE_WINDOW_S = 10.0
ABUSE_LIMIT = 50  # invalid frames per window before 1008
STREAM_DRAIN_S = 2.0


class _Close:
    """Outbox sentinel: close the socket with this code after what was queued before it."""

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason


class Connection:
    """Serves one authenticated socket."""

    def __init__(self, ws: WebSocket, services: Services) -> None:
        self.ws = ws
        self.services = services
        self.session_id = str(uuid.uuid4())
        self.identity: Identity | None = None
        self.streams: dict[str, Stream] = {}
        self.outbox: asyncio.Queue[bytes | _Close] = asyncio.Queue(OUTBOX_FRAMES)
        self.closing = False
        self._invalid_at: deque[float] = deque()

    # ---- lifecycle -----------------------------------------------------------------------

    async def serve(self) -> None:
        """Run the connection until the peer leaves or we close it."""
        settings = self.services.settings
        origin = self.ws.headers.get("origin")
        if (
            settings.allowed_origins
            and origin is not None
            and origin.rstrip("/") not in settings.allowed_origins
        ):
            await self.ws.close(code=CloseCode.POLICY_VIOLATION)  # before accept: HTTP 403
            return
        header = self.ws.headers.get("authorization", "")
        await self.ws.accept()
        writer = asyncio.create_task(self._write_loop(), name=f"writer:{self.session_id}")
        try:
            if await self._authenticate(header):
                await self._read_loop()
        finally:
            self.closing = True
            await self._stop_streams()
            if not writer.done():
                with contextlib.suppress(asyncio.QueueFull):
                    self.outbox.put_nowait(_Close(CloseCode.NORMAL))
                try:
                    await asyncio.wait_for(writer, timeout=1.0)
                except TimeoutError:
                    writer.cancel()
                    await asyncio.gather(writer, return_exceptions=True)

    async def _authenticate(self, header: str) -> bool:
        token: str | None = None
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        else:
            try:
                message = await asyncio.wait_for(
                    self.ws.receive(), timeout=self.services.settings.auth_timeout_s
                )
            except TimeoutError:
                await self._close(CloseCode.AUTH_TIMEOUT, "no auth frame in time")
                return False
            if message["type"] == "websocket.disconnect":
                return False
            frame = self._decode(message)
            if not isinstance(frame, Auth):
                await self._fail_auth(Unauthorized("the first frame must be auth"))
                return False
            token = frame.token
        try:
            self.identity = await self.services.verifier.verify(token)
        except ChatError as exc:
            await self._fail_auth(exc)
            return False
        await self._send_ready()
        return True

    async def _fail_auth(self, exc: ChatError) -> None:
        await self._send(codec.encode(Error(code=exc.code, message=exc.message, retryable=False)))
        await self._close(CloseCode.UNAUTHENTICATED, exc.message)

    async def _send_ready(self) -> None:
        assert self.identity is not None
        limits = Limits(
            max_streams=self.services.settings.max_streams_per_connection,
            max_frame_bytes=MAX_FRAME_BYTES,
        )
        ready = Ready(
            session_id=self.session_id,
            user_id=self.identity.user_id,
            expires_at=self.identity.expires_at,
            limits=limits,
        )
        await self._send(codec.encode(ready))

    # ---- reading -------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while not self.closing:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            frame = self._decode(message)
            if frame is None:
                if self._abusive():
                    await self._close(CloseCode.POLICY_VIOLATION, "too many invalid frames")
                    return
                continue
            await self._dispatch(frame)

    def _decode(self, message: Mapping[str, Any]) -> ClientFrame | None:
        text = message.get("text")
        if text is None:
            self._reject(InvalidMessage("binary frames are not accepted; send JSON text frames"))
            return None
        try:
            return codec.decode_client(text)
        except codec.DecodeError as exc:
            self._reject(InvalidMessage(f"invalid frame: {exc}"), _stream_id_of(text))
            return None

    def _abusive(self) -> bool:
        now = time.monotonic()
        self._invalid_at.append(now)
        while self._invalid_at and now - self._invalid_at[0] > ABUSE_WINDOW_S:
            self._invalid_at.popleft()
        return len(self._invalid_at) > ABUSE_LIMIT

    async def _dispatch(self, frame: ClientFrame) -> None:
        match frame:
            case Ping():
                await self._send(codec.encode(Pong(nonce=frame.nonce)))
            case Ask():
                self._start_stream(frame)
            case Cancel():
                stream = self.streams.get(frame.id)
                if stream is None or stream.ended:
                    self._reject(NotFound(f"no live stream {frame.id!r}"), frame.id)
                else:
                    stream.cancel()
            case Auth():
                await self._refresh(frame.token)
            case Chapter():
                self._start_stream(frame)
            case Resume():
                self._reject(NotFound(f"no stream {frame.id!r} to resume"), frame.id)

    async def _refresh(self, token: str) -> None:
        assert self.identity is not None
        try:
            identity = await self.services.verifier.verify(token)
        except ChatError as exc:
            await self._fail_auth(exc)
            return
        if identity.user_id != self.identity.user_id:
            await self._fail_auth(Unauthorized("a refresh token must be for the same user"))
            return
        self.identity = identity
        await self._send_ready()

    # ---- streams -------------------------------------------------------------------------

    def _start_stream(self, frame: Ask | Chapter) -> None:
        assert self.identity is not None
        stream_id = frame.id
        existing = self.streams.get(stream_id)
        if existing is not None and not existing.ended:
            self._reject(DuplicateId(f"stream {stream_id!r} is still running"), stream_id)
            return
        live = sum(1 for s in self.streams.values() if not s.ended)
        if live >= self.services.settings.max_streams_per_connection:
            self._reject(
                TooManyStreams("too many streams on this connection; wait for one to finish"),
                stream_id,
            )
            return
        work: AnswerRun | ChapterRun
        if isinstance(frame, Ask):
            work = AnswerRun(self.services, self.identity.user_id, frame)
        else:
            s = self.services
            work = ChapterRun(s.store, s.generative_model, s.chapters, self.identity, frame)
        stream = Stream(
            stream_id, self.identity.user_id, "answer" if isinstance(frame, Ask) else "chapter"
        )
        stream.sink = self._send
        self.streams[stream_id] = stream
        stream.start(work, self._forget)

    def _forget(self, stream: Stream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]

    async def _stop_streams(self) -> None:
        streams = list(self.streams.values())
        for stream in streams:
            stream.sink = None  # the socket is gone; the stream ends and saves what it has
            stream.cancel()
        tasks = [s.task for s in streams if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=STREAM_DRAIN_S)

    # ---- writing -------------------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        if not self.closing:
            await self.outbox.put(data)

    def _reject(self, exc: ChatError, stream_id: str | None = None) -> None:
        """Queue an error frame without waiting; dropped if the outbox is full (the peer is flooding us)."""
        frame = Error(code=exc.code, message=exc.message, retryable=exc.retryable, id=stream_id)
        with contextlib.suppress(asyncio.QueueFull):
            self.outbox.put_nowait(codec.encode(frame))

    async def _close(self, code: int, reason: str = "") -> None:
        self.closing = True
        await self.outbox.put(_Close(code, reason[:120]))

    async def _write_loop(self) -> None:
        ws = self.ws
        try:
            while True:
                item = await self.outbox.get()
                if isinstance(item, _Close):
                    await ws.close(code=item.code, reason=item.reason)
                    return
                await ws.send({"type": "websocket.send", "text": item.decode()})
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.closing = True  # the peer is gone; the reader sees the disconnect


def _stream_id_of(text: str) -> str | None:
    """The `id` of an invalid frame, when it has a usable one, so the error can name the stream."""
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None
    if isinstance(value, dict):
        sid = value.get("id")
        if isinstance(sid, str) and 0 < len(sid) <= 64:
            return sid
    return None
