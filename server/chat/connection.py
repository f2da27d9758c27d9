"""One WebSocket connection: the I/O driver of the protocol's rules (protocol/connection.py).

It reads frames and feeds them to the rules, then carries out what they ask: control frames to
the one writer (server/chat/outbox.py), token verification, streams to open, resume or cancel,
timers. Streams run in tasks of their own and outlive the socket (server/chat/registry.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from starlette.websockets import WebSocket, WebSocketDisconnect

from protocol import codec
from protocol.codes import CloseCode
from protocol.connection import (
    Action,
    CancelStream,
    ChatConnection,
    Close,
    OpenStream,
    ResumeStream,
    Send,
    SetTimer,
    Timer,
    Verify,
)
from protocol.frames import Ask, Chapter, Error
from protocol.limits import ConnectionLimits
from server.auth import Identity
from server.chapters.run import ChapterRun
from server.chat.answer import AnswerRun
from server.chat.outbox import Outbox
from server.chat.stream import BUFFER_CHECK_CHARS, Stream
from server.cluster.replay import StoredStream
from server.errors import (
    ChatError,
    DuplicateId,
    InvalidMessage,
    NotFound,
    TooManyStreams,
    UpstreamUnavailable,
)
from server.metrics import CONNECTIONS, ERRORS, SLOW_CLOSES
from server.services import Services

log = logging.getLogger(__name__)


class Connection:
    """Serves one socket: frames in, the streams' frames out, in one writer."""

    def __init__(self, ws: WebSocket, services: Services) -> None:
        self.ws = ws
        self.services = services
        self.settings = services.settings
        s = self.settings
        self.limits = ConnectionLimits(
            max_streams=s.max_streams_per_connection,
            auth_timeout_s=s.auth_timeout_s,
            token_expiry_grace_s=s.token_expiry_grace_s,
            idle_timeout_s=s.idle_timeout_s,
        )
        self.rules = ChatConnection(self.limits, session_id=str(uuid.uuid4()))
        self.identity: Identity | None = None  # the last verified token's
        self.streams: dict[str, Stream | StoredStream] = {}
        self._outbox = Outbox(
            ws,
            self,
            send_timeout_s=s.slow_client_s,
            too_slow=self._too_slow,
            control_limit=self.limits.control_frames,
        )
        self._timers: dict[Timer, asyncio.TimerHandle] = {}
        self._registered = False

    @property
    def session_id(self) -> str:
        """This connection's id, as `ready` tells it."""
        return self.rules.session_id

    # ---- lifecycle -----------------------------------------------------------------------

    async def serve(self) -> None:
        """Run the connection until the peer leaves or we close it."""
        origin = self.ws.headers.get("origin")
        allowed = self.settings.allowed_origins
        if allowed and origin is not None and origin.rstrip("/") not in allowed:
            await self.ws.close(code=CloseCode.POLICY_VIOLATION)  # before accept: HTTP 403
            return
        header = self.ws.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        await self.ws.accept()
        CONNECTIONS.inc()
        try:
            await self._carry_out(self.rules.connected(token, time.monotonic()))
            while self._outbox.close_request is None:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                actions = self.rules.receive(message.get("text"), time.monotonic())
                await self._carry_out(actions)
                if self._outbox.backlogged:  # read no more until the answers went out
                    await self._outbox.drained()
        except WebSocketDisconnect:
            pass
        finally:
            for timer in self._timers.values():
                timer.cancel()
            self._release_streams()
            if self._registered and self.rules.user_id is not None:
                self.services.registry.disconnect(self.rules.user_id, self)
            self._outbox.close(CloseCode.NORMAL)
            await self._outbox.finished(timeout_s=2.0)
            CONNECTIONS.dec()

    def close(self, code: CloseCode, reason: str = "") -> None:
        """Close after the control frames already queued (streams stay resumable)."""
        self._carry_out_now(self.rules.close(code, reason))

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

    # ---- carrying out the rules' actions -------------------------------------------------

    async def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Verify():
                    await self._verify(action.token)
                case OpenStream():
                    self._open(action.frame)
                case ResumeStream():
                    await self._resume(action.id, action.after_seq)
                case CancelStream():
                    await self._cancel(action.id)
                case _:
                    self._carry_out_now([action])

    def _carry_out_now(self, actions: list[Action]) -> None:
        """The actions that need no waiting: sends, closes and timers."""
        for action in actions:
            match action:
                case Send():
                    self._send(action.frame)
                case Close():
                    self._outbox.close(action.code, action.reason)
                case SetTimer():
                    self._set_timer(action.timer, action.delay_s)
                case _:
                    raise AssertionError(f"{action} needs the reader")

    def _send(self, frame: object) -> None:
        if isinstance(frame, Error):
            ERRORS.labels(frame.code.value).inc()
        self._outbox.control(codec.encode(frame))

    def _set_timer(self, timer: Timer, delay_s: float | None) -> None:
        old = self._timers.pop(timer, None)
        if old is not None:
            old.cancel()
        if delay_s is not None:
            self._timers[timer] = asyncio.get_running_loop().call_later(
                delay_s, self._timer_fired, timer
            )

    def _timer_fired(self, timer: Timer) -> None:
        self._timers.pop(timer, None)
        self._carry_out_now(self.rules.timer_fired(timer, time.monotonic()))

    def _refuse(self, stream_id: str, exc: ChatError) -> None:
        self._carry_out_now(self.rules.refused(stream_id, exc.frame(stream_id)))

    # ---- auth ----------------------------------------------------------------------------

    async def _verify(self, token: str) -> None:
        try:
            identity = await self.services.verifier.verify(token)
        except ChatError as exc:
            self._carry_out_now(self.rules.rejected(exc.code, exc.message))
            return
        # the first token: count the connection against the user
        if self.identity is None and not await self._admit(identity.user_id):
            return
        actions = self.rules.authenticated(identity.user_id, identity.expires_at, time.time())
        if self.rules.user_id == identity.user_id:  # the rules refuse another user's refresh
            self.identity = identity
        self._carry_out_now(actions)

    async def _admit(self, user_id: str) -> bool:
        count = self.services.registry.connect(user_id, self)
        self._registered = True
        if count <= self.settings.max_connections_per_user:
            count += (await self.services.cluster.elsewhere(user_id))[0]
        if count > self.settings.max_connections_per_user:
            self.services.registry.disconnect(user_id, self)
            self._registered = False
            self.close(CloseCode.TOO_MANY_CONNECTIONS, "too many connections for this user")
            return False
        return True

    # ---- streams -------------------------------------------------------------------------

    def _user(self) -> Identity:
        if self.identity is None:  # the rules open streams only once authenticated
            raise AssertionError("a stream before authentication")
        return self.identity

    def _open(self, frame: Ask | Chapter) -> None:
        identity = self._user()
        user, sid = identity.user_id, frame.id
        registry = self.services.registry
        if registry.draining:
            self._refuse(
                sid, UpstreamUnavailable("the server is restarting; reconnect and ask again")
            )
            return
        known = registry.get(user, sid)
        if known is not None and known.live:
            self._refuse(sid, DuplicateId(f"stream {sid!r} is still running"))
            return
        if registry.live_count(user) >= self.settings.max_streams_per_user:
            self._refuse(
                sid, TooManyStreams("too many streams for this user; wait for one to finish")
            )
            return
        s = self.services
        work: AnswerRun | ChapterRun
        if isinstance(frame, Ask):
            work = AnswerRun(s, user, frame)
        else:
            work = ChapterRun(s.store, s.generative_model, s.chapters, s.limiter, identity, frame)
        kind = "answer" if isinstance(frame, Ask) else "chapter"
        stream = Stream(sid, user, kind, s.journal, tick_s=self.settings.delta_tick_ms / 1000)
        registry.add(stream)
        s.journal.started(stream)
        self.streams[sid] = stream
        stream.attach(self, 0)
        stream.start(work, self._stream_ended)

    def _stream_ended(self, stream: Stream) -> None:
        self.services.registry.finished(stream)
        if self.streams.get(stream.id) is stream:
            self.rules.stream_ended(stream.id)

    async def _cancel(self, sid: str) -> None:
        user = self._user().user_id
        stream = self.services.registry.get(user, sid)
        if stream is not None and stream.live and not stream.ended:
            stream.cancel()
            return
        if stream is None:  # it may be generating in another process
            try:
                if await self.services.cluster.cancel_remote(user, sid):
                    return
            except ChatError as exc:
                self._carry_out_now(self.rules.stream_error(sid, exc.frame(sid)))
                return
        error = NotFound(f"no live stream {sid!r}")
        self._carry_out_now(self.rules.stream_error(sid, error.frame(sid)))

    async def _resume(self, sid: str, after_seq: int) -> None:
        user = self._user().user_id
        stream = self.services.registry.get(user, sid)
        if stream is None:
            await self._resume_stored(sid, after_seq)
            return
        if after_seq > stream.seq:
            past = f"after_seq {after_seq} is past the stream's last frame ({stream.seq})"
            self._refuse(sid, InvalidMessage(past))
            return
        previous = stream.consumer
        if isinstance(previous, Connection) and previous is not self:
            previous.streams.pop(sid, None)  # the newer socket of the same user takes it over
            previous.rules.stream_released(sid)
        stream.attach(self, after_seq)
        self.services.registry.attached(stream)
        self.streams[sid] = stream
        if not stream.live:
            self.rules.stream_ended(sid)

    async def _resume_stored(self, sid: str, after_seq: int) -> None:
        """A stream this process does not hold: replay it from the journal (another process, or
        a restart)."""
        try:
            stored = await StoredStream.open(
                self.services.store,
                self._user().user_id,
                sid,
                after_seq,
                self.settings.resume_retention_s,
                self,
                self.services.cluster,
            )
        except ChatError as exc:
            self._refuse(sid, exc)
            return
        if stored is None:
            self._refuse(sid, NotFound(f"no stream {sid!r} to resume"))
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
            stream.buffered_chars() > BUFFER_CHECK_CHARS
            and self._buffered_chars() > self.limits.max_buffered_chars
        ):
            self._too_slow("the client reads too slowly")

    def replayed(self, stream: StoredStream) -> None:
        """A stored stream's terminal frame went out: it counts as running no more."""
        if self.streams.get(stream.id) is stream:
            self.rules.stream_ended(stream.id)

    def _buffered_chars(self) -> int:
        return sum(s.buffered_chars() for s in self.streams.values())

    def _too_slow(self, why: str) -> None:
        log.info("closing %s with 1013: %s", self.session_id, why)
        SLOW_CLOSES.inc()
        self._outbox.drop_control()
        self._release_streams()
        self.close(CloseCode.TRY_AGAIN_LATER, why)
