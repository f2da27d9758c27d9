"""One WebSocket connection: authenticate, then one reader, one writer that alone sends
(server/outbox.py), a task per stream."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any

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
from server.auth import Identity
from server.chapters.run import ChapterRun
from server.chat.answer import AnswerRun
from server.chat.outbox import Outbox
from server.chat.stream import Stream
from server.cluster.replay import StoredStream
from server.errors import (
    ChatError,
    DuplicateId,
    InvalidMessage,
    NotFound,
    TokenExpired,
    TooManyStreams,
    Unauthorized,
    UpstreamUnavailable,
    error_fields,
)
from server.metrics import CONNECTIONS, ERRORS, SLOW_CLOSES
from server.services import Services

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 131_072
ABUSE_WINDOW_S = 10.0
ABUSE_LIMIT = 50  # invalid frames per window before 1008
MAX_BUFFERED_CHARS = 1_000_000  # text waiting for a slow reader, across its streams
BUFFER_CHECK_CHARS = 16_384


class Connection:
    """Serves one socket: frames in, the streams' frames out, in one writer."""

    def __init__(self, ws: WebSocket, services: Services) -> None:
        self.ws = ws
        self.services = services
        self.settings = services.settings
        self.session_id = str(uuid.uuid4())
        self.identity: Identity | None = None
        self.streams: dict[str, Stream | StoredStream] = {}
        self._outbox = Outbox(
            ws, self, send_timeout_s=self.settings.slow_client_s, too_slow=self._too_slow
        )
        self._invalid_at: deque[float] | None = None  # made at the first invalid frame
        self._last_seen = time.monotonic()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._registered = False

    # ---- lifecycle -----------------------------------------------------------------------

    async def serve(self) -> None:
        """Run the connection until the peer leaves or we close it."""
        origin = self.ws.headers.get("origin")
        allowed = self.settings.allowed_origins
        if allowed and origin is not None and origin.rstrip("/") not in allowed:
            await self.ws.close(code=CloseCode.POLICY_VIOLATION)  # before accept: HTTP 403
            return
        header = self.ws.headers.get("authorization", "")
        await self.ws.accept()
        CONNECTIONS.inc()
        writer = asyncio.create_task(self._outbox.run(), name=f"writer:{self.session_id}")
        try:
            if await self._authenticate(header):
                await self._read_loop()
        except WebSocketDisconnect:
            pass
        finally:
            for timer in self._timers.values():
                timer.cancel()
            self._release_streams()
            if self._registered and self.identity is not None:
                self.services.registry.disconnect(self.identity.user_id, self)
            self.close(CloseCode.NORMAL)
            try:
                await asyncio.wait_for(writer, timeout=2.0)
            except TimeoutError:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            CONNECTIONS.dec()

    def _release_streams(self) -> None:
        """The socket is gone: its streams go on for a while, waiting for a resume."""
        for stream in list(self.streams.values()):
            if isinstance(stream, Stream):
                stream.detach(self)
                if stream.consumer is None:
                    self.services.registry.detached(stream)
            else:
                stream.close()
        self.streams.clear()
        self._outbox.drop_streams()

    async def _authenticate(self, header: str) -> bool:
        token: str | None = None
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        else:
            try:
                message = await asyncio.wait_for(
                    self.ws.receive(), timeout=self.settings.auth_timeout_s
                )
            except TimeoutError:
                self.close(CloseCode.AUTH_TIMEOUT, "no auth frame in time")
                return False
            if message["type"] == "websocket.disconnect":
                return False
            frame = self._decode(message)
            if not isinstance(frame, Auth):
                self._fail_auth(Unauthorized("the first frame must be auth"))
                return False
            token = frame.token
        try:
            self.identity = await self.services.verifier.verify(token)
        except ChatError as exc:
            self._fail_auth(exc)
            return False
        count = self.services.registry.connect(self.identity.user_id, self)
        self._registered = True
        if count <= self.settings.max_connections_per_user:
            count += (await self.services.cluster.elsewhere(self.identity.user_id))[0]
        if count > self.settings.max_connections_per_user:
            self.close(CloseCode.TOO_MANY_CONNECTIONS, "too many connections for this user")
            return False
        self._send_ready()
        self._schedule_idle_check()
        return True

    def _fail_auth(self, exc: ChatError) -> None:
        self._send_control(Error(code=exc.code, message=exc.message, retryable=False))
        self.close(CloseCode.UNAUTHENTICATED, exc.message)

    def _send_ready(self) -> None:
        assert self.identity is not None
        limits = Limits(
            max_streams=self.settings.max_streams_per_connection, max_frame_bytes=MAX_FRAME_BYTES
        )
        self._send_control(
            Ready(
                session_id=self.session_id,
                user_id=self.identity.user_id,
                expires_at=self.identity.expires_at,
                limits=limits,
            )
        )
        self._schedule("expiry", self.identity.expires_at - time.time(), self._token_expired)

    def _token_expired(self) -> None:
        exc = TokenExpired("the token expired; send auth with a fresh token")
        self._send_control(Error(code=exc.code, message=exc.message, retryable=True))
        self._schedule(
            "expiry",
            self.settings.token_expiry_grace_s,
            lambda: self.close(CloseCode.UNAUTHENTICATED, "token expired"),
        )

    def _schedule_idle_check(self) -> None:
        self._schedule("idle", self.settings.idle_timeout_s / 4, self._idle_check)

    def _idle_check(self) -> None:
        busy = any(isinstance(s, Stream) and s.live for s in self.streams.values())
        if not busy and time.monotonic() - self._last_seen > self.settings.idle_timeout_s:
            self.close(CloseCode.NORMAL, "idle timeout")
        else:
            self._schedule_idle_check()

    def _schedule(self, name: str, delay: float, action: Any) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        self._timers[name] = asyncio.get_running_loop().call_later(max(delay, 0.0), action)

    # ---- reading -------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while self._outbox.close_request is None:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            self._last_seen = time.monotonic()
            frame = self._decode(message)
            if frame is None:
                if self._abusive():
                    self.close(CloseCode.POLICY_VIOLATION, "too many invalid frames")
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
            self._reject(InvalidMessage(f"invalid frame: {exc}"), codec.invalid_frame_id(text))
            return None

    def _abusive(self) -> bool:
        now = time.monotonic()
        if self._invalid_at is None:
            self._invalid_at = deque()
        self._invalid_at.append(now)
        while self._invalid_at and now - self._invalid_at[0] > ABUSE_WINDOW_S:
            self._invalid_at.popleft()
        return len(self._invalid_at) > ABUSE_LIMIT

    async def _dispatch(self, frame: ClientFrame) -> None:
        match frame:
            case Ping():
                self._send_control(Pong(nonce=frame.nonce))
            case Ask() | Chapter():
                self._start_stream(frame)
            case Cancel():
                await self._cancel(frame.id)
            case Resume():
                await self._resume(frame.id, frame.after_seq)
            case Auth():
                await self._refresh(frame.token)

    async def _refresh(self, token: str) -> None:
        assert self.identity is not None
        try:
            identity = await self.services.verifier.verify(token)
        except ChatError as exc:
            self._fail_auth(exc)
            return
        if identity.user_id != self.identity.user_id:
            self._fail_auth(Unauthorized("a refresh token must be for the same user"))
            return
        self.identity = identity
        self._send_ready()

    # ---- streams -------------------------------------------------------------------------

    def _start_stream(self, frame: Ask | Chapter) -> None:
        assert self.identity is not None
        user, sid = self.identity.user_id, frame.id
        registry = self.services.registry
        if registry.draining:
            self._reject(
                UpstreamUnavailable("the server is restarting; reconnect and ask again"), sid
            )
            return
        known = registry.get(user, sid)
        if (known is not None and known.live) or (
            sid in self.streams and not self.streams[sid].ended
        ):
            self._reject(DuplicateId(f"stream {sid!r} is still running"), sid)
            return
        mine = sum(1 for s in self.streams.values() if isinstance(s, Stream) and s.live)
        if mine >= self.settings.max_streams_per_connection:
            self._reject(
                TooManyStreams("too many streams on this connection; wait for one to finish"), sid
            )
            return
        if registry.live_count(user) >= self.settings.max_streams_per_user:
            self._reject(
                TooManyStreams("too many streams for this user; wait for one to finish"), sid
            )
            return
        s = self.services
        work: AnswerRun | ChapterRun
        if isinstance(frame, Ask):
            work = AnswerRun(s, user, frame)
        else:
            work = ChapterRun(
                s.store, s.generative_model, s.chapters, s.limiter, self.identity, frame
            )
        stream = Stream(sid, user, "answer" if isinstance(frame, Ask) else "chapter", s.journal)
        registry.add(stream)
        s.journal.started(stream)
        self.streams[sid] = stream
        stream.attach(self, 0)
        stream.start(work, self._stream_ended)

    def _stream_ended(self, stream: Stream) -> None:
        self.services.registry.finished(stream)

    async def _cancel(self, sid: str) -> None:
        assert self.identity is not None
        stream = self.services.registry.get(self.identity.user_id, sid)
        if stream is not None and stream.live and not stream.ended:
            stream.cancel()
            return
        if stream is None:  # it may be generating in another process
            try:
                if await self.services.cluster.cancel_remote(self.identity.user_id, sid):
                    return
            except ChatError as exc:
                self._reject(exc, sid)
                return
        self._reject(NotFound(f"no live stream {sid!r}"), sid)

    async def _resume(self, sid: str, after_seq: int) -> None:
        assert self.identity is not None
        user = self.identity.user_id
        stream = self.services.registry.get(user, sid)
        if stream is None:
            await self._resume_stored(sid, after_seq)
            return
        if stream.consumer is self:
            self._reject(DuplicateId(f"stream {sid!r} is already attached to this connection"), sid)
            return
        if after_seq > stream.seq:
            self._reject(
                InvalidMessage(
                    f"after_seq {after_seq} is past the stream's last frame ({stream.seq})"
                ),
                sid,
            )
            return
        previous = stream.consumer
        if isinstance(previous, Connection):
            previous.streams.pop(sid, None)  # the newer socket of the same user takes it over
        stream.attach(self, after_seq)
        self.services.registry.attached(stream)
        self.streams[sid] = stream

    async def _resume_stored(self, sid: str, after_seq: int) -> None:
        """A stream this process does not hold: replay it from the journal (another process, or a restart)."""
        assert self.identity is not None
        try:
            stored = await StoredStream.open(
                self.services.store,
                self.identity.user_id,
                sid,
                after_seq,
                self.settings.resume_retention_s,
                self,
                self.services.cluster,
            )
        except ChatError as exc:
            self._reject(exc, sid)
            return
        if stored is None:
            self._reject(NotFound(f"no stream {sid!r} to resume"), sid)
            return
        self.streams[sid] = stored

    # ---- writing -------------------------------------------------------------------------

    def wake(self, stream: Stream | StoredStream) -> None:
        """A stream has frames for this socket."""
        self._outbox.ready(stream)
        # The sum over the socket's streams (a cost on every delta) is taken only once this
        # stream holds BUFFER_CHECK_CHARS: the total stays under the limit plus that much per
        # stream.
        if (
            isinstance(stream, Stream)
            and stream.buffered_chars() > BUFFER_CHECK_CHARS
            and self._buffered_chars() > MAX_BUFFERED_CHARS
        ):
            self._too_slow("the client reads too slowly")

    def _send_control(self, frame: Any) -> None:
        if isinstance(frame, Error):
            ERRORS.labels(frame.code.value).inc()
        if not self._outbox.control(codec.encode(frame).decode()):
            self.close(CloseCode.POLICY_VIOLATION, "too many frames without reading the answers")

    def _reject(self, exc: ChatError, stream_id: str | None = None) -> None:
        self._send_control(Error(id=stream_id, **error_fields(exc)))

    def close(self, code: int, reason: str = "") -> None:
        """Close after the control frames already queued (streams stay resumable)."""
        self._outbox.close(code, reason)

    def _buffered_chars(self) -> int:
        return sum(s.buffered_chars() for s in self.streams.values() if isinstance(s, Stream))

    def _too_slow(self, why: str) -> None:
        log.info("closing %s with 1013: %s", self.session_id, why)
        SLOW_CLOSES.inc()
        self._outbox.drop_control()
        self._release_streams()
        self.close(CloseCode.TRY_AGAIN_LATER, why)
