"""The rules of one chat connection, sans I/O: inputs in, actions out.

`ChatConnection` knows the protocol's states (awaiting auth → authenticating → ready, expired
while a refresh is awaited, closing), which frames each state accepts, the streams attached to
the connection (admission, duplicate ids), the invalid-frame window and the timers. It does no
I/O and reads no clock: the driver (server/chat/connection.py) feeds it frames, verification
results and timer firings with the time, and carries out the actions it returns: frames to send,
a close, a token to verify, streams to open, resume or cancel, timers to set.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import deque

from protocol import codec
from protocol.codes import CloseCode, ErrorCode
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
    ServerFrame,
    error_frame,
)
from protocol.limits import DEFAULT_LIMITS, MAX_FRAME_BYTES, ConnectionLimits


class State(enum.Enum):
    """Where a connection is in its life."""

    AWAITING_AUTH = "awaiting_auth"  # no token yet
    AUTHENTICATING = "authenticating"  # the first token is being verified
    READY = "ready"
    EXPIRED = "expired"  # the token expired: a refresh is accepted until the grace ends
    CLOSING = "closing"  # a close was requested: nothing more is read


class Trigger(enum.Enum):
    """What moves a connection from one state to another."""

    TOKEN = "token"
    AUTHENTICATED = "authenticated"
    REJECTED = "rejected"
    AUTH_DEADLINE = "auth_deadline"
    NOT_AUTH = "not_auth"  # the first frame was something else
    TOKEN_EXPIRED = "token_expired"
    GRACE_OVER = "grace_over"
    CLOSE = "close"


_S, _T = State, Trigger
# Every transition there is; anything else leaves the state as it is.
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (_S.AWAITING_AUTH, _T.TOKEN): _S.AUTHENTICATING,
    (_S.AWAITING_AUTH, _T.AUTH_DEADLINE): _S.CLOSING,
    (_S.AWAITING_AUTH, _T.NOT_AUTH): _S.CLOSING,
    (_S.AUTHENTICATING, _T.AUTHENTICATED): _S.READY,
    (_S.AUTHENTICATING, _T.REJECTED): _S.CLOSING,
    (_S.READY, _T.AUTHENTICATED): _S.READY,  # a refresh
    (_S.READY, _T.REJECTED): _S.CLOSING,
    (_S.READY, _T.TOKEN_EXPIRED): _S.EXPIRED,
    (_S.EXPIRED, _T.AUTHENTICATED): _S.READY,
    (_S.EXPIRED, _T.REJECTED): _S.CLOSING,
    (_S.EXPIRED, _T.GRACE_OVER): _S.CLOSING,
    **{(state, _T.CLOSE): _S.CLOSING for state in State},
}


class Timer(enum.Enum):
    """The connection's timers; setting one replaces it."""

    AUTH = "auth"
    EXPIRY = "expiry"
    GRACE = "grace"
    IDLE = "idle"


# ---- actions -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """Queue a control frame (ahead of the streams' frames)."""

    frame: ServerFrame


@dataclasses.dataclass(frozen=True, slots=True)
class Close:
    """Close the socket after the control frames already queued."""

    code: CloseCode
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Verify:
    """Verify this token; answer with `authenticated` or `rejected`."""

    token: str


@dataclasses.dataclass(frozen=True, slots=True)
class OpenStream:
    """Start a stream for this frame; answer `refused` if the process cannot."""

    frame: Ask | Chapter


@dataclasses.dataclass(frozen=True, slots=True)
class ResumeStream:
    """Attach the user's stream `id` to this connection after `after_seq`; `refused` if unknown."""

    id: str
    after_seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class CancelStream:
    """Cancel the user's stream `id`, wherever it runs."""

    id: str


@dataclasses.dataclass(frozen=True, slots=True)
class SetTimer:
    """Call `timer_fired(timer)` after `delay_s` (replacing the earlier one); None cancels it."""

    timer: Timer
    delay_s: float | None


Action = Send | Close | Verify | OpenStream | ResumeStream | CancelStream | SetTimer


class ChatConnection:
    """The protocol state of one socket."""

    def __init__(self, limits: ConnectionLimits = DEFAULT_LIMITS, *, session_id: str) -> None:
        self.limits = limits
        self.session_id = session_id
        self.state = State.AWAITING_AUTH
        self.user_id: str | None = None  # set once authenticated, never changed
        self.expires_at = 0  # of the current token, unix seconds
        self._attached: dict[str, bool] = {}  # stream id -> still live
        self._invalid_at: deque[float] | None = None  # made at the first invalid frame
        self._last_seen = 0.0
        self._out: list[Action] = []

    # ---- inputs --------------------------------------------------------------------------

    def connected(self, header_token: str | None, now: float) -> list[Action]:
        """The socket was accepted; `header_token` is a bearer token from the upgrade request."""
        self._last_seen = now
        if header_token is not None:
            self._move(Trigger.TOKEN)
            self._out.append(Verify(header_token))
        else:
            self._out.append(SetTimer(Timer.AUTH, self.limits.auth_timeout_s))
        return self._take()

    def receive(self, text: str | None, now: float) -> list[Action]:
        """A frame arrived: its text, or None for a binary frame."""
        if self.state is State.CLOSING:
            return []
        self._last_seen = now
        frame = self._decode(text, now)
        if self.state is State.AWAITING_AUTH:
            if isinstance(frame, Auth):
                self._move(Trigger.TOKEN)
                self._out += [SetTimer(Timer.AUTH, None), Verify(frame.token)]
            else:
                self._move(Trigger.NOT_AUTH)
                self._fail_auth(ErrorCode.UNAUTHORIZED, "the first frame must be auth")
        elif self.state is State.AUTHENTICATING:  # drivers verify before reading on
            if frame is not None:
                self._send_error(ErrorCode.UNAUTHORIZED, "wait for ready before sending frames")
        elif frame is not None:
            self._dispatch(frame)
        return self._take()

    def authenticated(self, user_id: str, expires_at: int, wall_now: float) -> list[Action]:
        """The token of the last `Verify` is good (and the driver admitted the connection)."""
        if self.user_id is not None and user_id != self.user_id:
            return self.rejected(
                ErrorCode.UNAUTHORIZED, "a refresh token must be for the same user"
            )
        first = self.user_id is None
        self.user_id = user_id
        self.expires_at = expires_at
        self._move(Trigger.AUTHENTICATED)
        limits = Limits(max_streams=self.limits.max_streams, max_frame_bytes=MAX_FRAME_BYTES)
        ready = Ready(
            session_id=self.session_id, user_id=user_id, expires_at=expires_at, limits=limits
        )
        self._out += [
            Send(ready),
            SetTimer(Timer.GRACE, None),
            SetTimer(Timer.EXPIRY, max(expires_at - wall_now, 0.0)),
        ]
        if first:
            self._out.append(SetTimer(Timer.IDLE, self.limits.idle_timeout_s / 4))
        return self._take()

    def rejected(self, code: ErrorCode, message: str) -> list[Action]:
        """The token of the last `Verify` is not good."""
        self._move(Trigger.REJECTED)
        self._fail_auth(code, message)
        return self._take()

    def timer_fired(self, timer: Timer, now: float) -> list[Action]:
        """A timer set by `SetTimer` went off."""
        if self.state is State.CLOSING:
            return []
        if timer is Timer.AUTH and self.state is State.AWAITING_AUTH:
            self._move(Trigger.AUTH_DEADLINE)
            self._out.append(Close(CloseCode.AUTH_TIMEOUT, "no auth frame in time"))
        elif timer is Timer.EXPIRY and self.state is State.READY:
            self._move(Trigger.TOKEN_EXPIRED)
            self._send_error(
                ErrorCode.TOKEN_EXPIRED, "the token expired; send auth with a fresh token"
            )
            self._out.append(SetTimer(Timer.GRACE, self.limits.token_expiry_grace_s))
        elif timer is Timer.GRACE and self.state is State.EXPIRED:
            self._move(Trigger.GRACE_OVER)
            self._out.append(Close(CloseCode.UNAUTHENTICATED, "token expired"))
        elif timer is Timer.IDLE:
            if not self.live_streams() and now - self._last_seen > self.limits.idle_timeout_s:
                self._close(CloseCode.NORMAL, "idle timeout")
            else:
                self._out.append(SetTimer(Timer.IDLE, self.limits.idle_timeout_s / 4))
        return self._take()

    def refused(self, stream_id: str, error: Error) -> list[Action]:
        """The driver could not open or resume this stream: it is not attached after all."""
        self._attached.pop(stream_id, None)
        self._out.append(Send(_with_id(error, stream_id)))
        return self._take()

    def stream_error(self, stream_id: str, error: Error) -> list[Action]:
        """An error about a stream that changes nothing attached (a cancel of an unknown id)."""
        self._out.append(Send(_with_id(error, stream_id)))
        return self._take()

    def stream_ended(self, stream_id: str) -> None:
        """The stream sent its terminal frame: it no longer counts as live (it stays attached)."""
        if stream_id in self._attached:
            self._attached[stream_id] = False

    def stream_released(self, stream_id: str) -> None:
        """The stream was taken over by another connection of the user."""
        self._attached.pop(stream_id, None)

    def close(self, code: CloseCode, reason: str = "") -> list[Action]:
        """Close for a reason of the driver's (restart, a slow reader, too many connections)."""
        self._close(code, reason)
        return self._take()

    # ---- queries -------------------------------------------------------------------------

    def attached(self) -> list[str]:
        """Ids of the streams attached to this connection."""
        return list(self._attached)

    def live_streams(self) -> int:
        """Streams attached here that have not ended."""
        return sum(self._attached.values())

    # ---- rules ---------------------------------------------------------------------------

    def _move(self, trigger: Trigger) -> None:
        self.state = TRANSITIONS.get((self.state, trigger), self.state)

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _decode(self, text: str | None, now: float) -> ClientFrame | None:
        if text is None:
            self._invalid("binary frames are not accepted; send JSON text frames", None, now)
            return None
        try:
            return codec.decode_client(text)
        except codec.DecodeError as exc:
            self._invalid(f"invalid frame: {exc}", codec.invalid_frame_id(text), now)
            return None

    def _invalid(self, message: str, stream_id: str | None, now: float) -> None:
        self._send_error(ErrorCode.INVALID_MESSAGE, message, stream_id)
        if self._invalid_at is None:
            self._invalid_at = deque()
        window = self._invalid_at
        window.append(now)
        while window and now - window[0] > self.limits.invalid_window_s:
            window.popleft()
        if len(window) > self.limits.invalid_limit:
            self._close(CloseCode.POLICY_VIOLATION, "too many invalid frames")

    def _close(self, code: CloseCode, reason: str) -> None:
        if self.state is not State.CLOSING:
            self._move(Trigger.CLOSE)
            self._out.append(Close(code, reason))

    def _dispatch(self, frame: ClientFrame) -> None:
        match frame:
            case Ping():
                self._out.append(Send(Pong(nonce=frame.nonce)))
            case Auth():
                self._out.append(Verify(frame.token))
            case Cancel():
                self._out.append(CancelStream(frame.id))
            case Ask() | Chapter():
                if self._admit(frame.id, new=True):
                    self._out.append(OpenStream(frame))
            case Resume():
                if self._admit(frame.id, new=False):
                    self._out.append(ResumeStream(frame.id, frame.after_seq))

    def _admit(self, stream_id: str, *, new: bool) -> bool:
        if self.state is State.EXPIRED:
            self._send_error(
                ErrorCode.TOKEN_EXPIRED,
                "the token expired; send auth with a fresh token",
                stream_id,
            )
            return False
        live = self._attached.get(stream_id)
        if live or (live is not None and not new):
            why = "is still running" if new else "is already attached to this connection"
            self._send_error(ErrorCode.DUPLICATE_ID, f"stream {stream_id!r} {why}", stream_id)
            return False
        if self.live_streams() >= self.limits.max_streams:
            self._send_error(
                ErrorCode.TOO_MANY_STREAMS,
                "too many streams on this connection; wait for one to finish",
                stream_id,
            )
            return False
        self._attached[stream_id] = True
        return True

    def _send_error(self, code: ErrorCode, message: str, stream_id: str | None = None) -> None:
        self._out.append(Send(error_frame(code, message, id=stream_id)))

    def _fail_auth(self, code: ErrorCode, message: str) -> None:
        self._out += [
            Send(error_frame(code, message, retryable=False)),
            Close(CloseCode.UNAUTHENTICATED, message),
        ]


def _with_id(error: Error, stream_id: str) -> Error:
    if error.id == stream_id:
        return error
    return error_frame(
        error.code,
        error.message,
        retryable=error.retryable,
        id=stream_id,
        retry_after=error.retry_after,
    )
