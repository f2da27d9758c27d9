"""The one writer of a socket: control frames first, then the streams' frames in turn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect

from protocol.codes import CloseCode
from protocol.limits import DEFAULT_LIMITS
from server.chat.stream import Stream

_DELTA = b'{"type":"delta"'
# The scope extension through which the server's protocol (server/web/protocols.py) takes a
# text frame directly: `send_text(frame) -> False` when it must go through ASGI `send` instead.
SEND_TEXT = "textbook-chat.send_text"
# ... and queues the close frame past the transport's flow control: `close_now(code, reason)`.
CLOSE_NOW = "textbook-chat.close_now"


class Source(Protocol):
    """A stream whose frames go to this socket (live, or replayed from the journal)."""

    @property
    def consumer(self) -> object: ...

    def take(self) -> bytes | None: ...

    def has_output(self) -> bool: ...


class Outbox:
    """Sends what the connection queues: nothing else writes to the socket.

    While the transport takes frames (the server's protocol offers `SEND_TEXT`), a frame is sent
    as soon as it is queued, by whoever queued it: no task switch per frame, and no writer task
    at all on an idle socket. When the transport pushes back, or the server offers no direct
    send, a writer task sends through ASGI, waiting up to `send_timeout_s` for each frame (then
    the peer is too slow); meanwhile a stream's deltas merge (server/chat/stream.py). The writer
    ends once the transport takes frames again."""

    def __init__(
        self,
        ws: WebSocket,
        reader: object,
        *,
        send_timeout_s: float,
        too_slow: Callable[[str], None],
        control_limit: int = DEFAULT_LIMITS.control_frames,
    ) -> None:
        self._ws = ws
        self._reader = reader  # a stream taken over by another connection is skipped
        self._send_timeout_s = send_timeout_s
        self._too_slow = too_slow
        extensions = ws.scope.get("extensions") or {}
        self._send_now: Callable[[bytes], bool] | None = extensions.get(SEND_TEXT)
        self._close_now: Callable[[int, str], bool] | None = extensions.get(CLOSE_NOW)
        # no deque or Event here: each costs ~700 bytes on every idle socket
        self._control: list[bytes] = []  # a few frames at most
        self._ready: dict[int, Source] = {}
        self._held: tuple[bytes, Source | None] | None = None  # taken, not yet sent
        self._writer: asyncio.Task[None] | None = None
        self._waiting: asyncio.Future[None] | None = None
        self._control_limit = control_limit
        self._room: asyncio.Future[None] | None = None  # the reader waits for the backlog
        self._flushing = False
        self._stopped = False
        self.close_request: tuple[int, str] | None = None

    def control(self, data: bytes) -> None:
        """Queue a control frame ahead of the streams."""
        self._control.append(data)
        self._kick()

    def ready(self, source: Source) -> None:
        """`source` has frames to send."""
        self._ready[id(source)] = source
        self._kick()

    def close(self, code: int, reason: str = "") -> None:
        """Close after the control frames already queued."""
        if self.close_request is None:
            self.close_request = (code, reason[:120])
            self._kick()

    @property
    def backlogged(self) -> bool:
        """So many control frames wait that the reader should stop reading until they are sent."""
        return len(self._control) >= self._control_limit and not self._stopped

    async def drained(self) -> None:
        """Wait until the control backlog is below the limit (or the writer stopped): a peer
        that sends faster than it reads its answers is slowed down, and one that does not read
        at all is closed by the send timeout, not for sending quickly."""
        while self.backlogged:
            self._room = asyncio.get_running_loop().create_future()
            try:
                await self._room
            finally:
                self._room = None

    async def finished(self, timeout_s: float) -> None:
        """Wait for the writer task, if one runs, up to `timeout_s`; then give up on it."""
        writer = self._writer
        if writer is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(writer)
        except TimeoutError:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    def drop_streams(self) -> None:
        """Forget the streams waiting to send: the connection gave them up."""
        self._ready.clear()
        if self._held is not None and self._held[1] is not None:
            self._held = None

    def drop_control(self) -> None:
        """Forget the control frames not sent yet."""
        self._control.clear()
        self._make_room()

    # ---- sending -------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._writer is not None:
            if self._waiting is not None and not self._waiting.done():
                self._waiting.set_result(None)
        elif not self._flushing and not self._stopped:
            self._flushing = True
            try:
                self._flush()
            finally:
                self._flushing = False

    def _flush(self) -> None:
        """Send what the transport takes now; hand the rest to a writer task."""
        send_now = self._send_now
        if send_now is None:
            self._start_writer()
            return
        while (item := self._next()) is not None:
            if not send_now(item[0]):
                self._held = item
                self._start_writer()
                return
        if self.close_request is not None:
            if self._close_now is not None and self._close_now(*self.close_request):
                self._stop()
            else:
                self._start_writer()  # the ASGI close, with its timeout

    def _start_writer(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write(), name="writer")

    async def _write(self) -> None:
        ws = self._ws
        try:
            while True:
                item, self._held = self._held or self._next(), None
                if item is None:
                    if self.close_request is not None:
                        code, reason = self.close_request
                        if self._close_now is None or not self._close_now(code, reason):
                            async with asyncio.timeout(2.0):
                                await ws.close(code=code, reason=reason)
                        self._stop()
                        return
                    if self._send_now is not None:
                        return  # caught up: frames go out as they are queued again
                    self._waiting = asyncio.get_running_loop().create_future()
                    try:
                        await self._waiting
                    finally:
                        self._waiting = None
                    continue
                data = item[0]
                if self._send_now is not None and self._send_now(data):
                    continue
                try:  # the transport pushes back: wait for it, up to the timeout
                    async with asyncio.timeout(self._send_timeout_s):
                        await ws.send({"type": "websocket.send", "text": data.decode()})
                except TimeoutError:
                    self._too_slow("the client stopped reading")
        except (WebSocketDisconnect, RuntimeError, OSError, TimeoutError):
            self.close_request = self.close_request or (CloseCode.NORMAL, "")
            self._stop()
        except asyncio.CancelledError:
            self._stop()
            raise
        finally:
            self._writer = None
            if not self._stopped and (self._held or self._control or self._ready):
                self._kick()  # queued while the writer was finishing

    def _stop(self) -> None:
        self._stopped = True
        self._make_room()

    def _make_room(self) -> None:
        if self._room is not None and not self._room.done():
            self._room.set_result(None)

    def _next(self) -> tuple[bytes, Source | None] | None:
        if self._control:
            control = self._control.pop(0)
            if len(self._control) < self._control_limit:
                self._make_room()
            return control, None
        if self.close_request is not None:
            return None
        while self._ready:
            key, source = next(iter(self._ready.items()))
            del self._ready[key]
            if source.consumer is not self._reader:
                continue
            data = source.take()
            if source.has_output():
                self._ready[key] = source  # round robin between streams
            if data is not None:
                if isinstance(source, Stream) and data.startswith(_DELTA):
                    source.sent_delta(time.perf_counter())  # handed over now
                return data, source
        return None
