"""uvicorn's protocols as the chat socket needs them.

The limits a public port needs: a deadline for the request head and for the WebSocket
handshake, and a cap on open connections per process answered with a clean 503. Without them a
peer that sends half a request line holds a socket (and a file descriptor) forever, and enough
of them lock everyone else out.

And a direct way to send a text frame (`SEND_TEXT` in the scope's extensions): the socket's one
writer hands encoded frames straight to websockets' sans-I/O protocol and the transport while
the socket can take them, instead of an ASGI `send` per frame (a coroutine, a message dict, and
the frame's text decoded to `str` only to be encoded again); it waits through ASGI only when the
transport pushes back.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import Protocol as WebSocketsProtocol

from server.chat.outbox import CLOSE_NOW, SEND_TEXT
from server.metrics import REFUSED_CONNECTIONS

_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: 34\r\n\r\n"
    b"too many connections; retry later\n"
)
ABORT_S = 30.0  # a closed socket whose peer has not read its close frame by then is cut off
_TOO_SLOW = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


def connection_cap(configured: int) -> int:
    """MAX_CONNECTIONS, or (0) half the open-files limit: every socket costs a descriptor, and a
    stream can hold one more to the model."""
    if configured:
        return configured
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(soft // 2 - 64, 16)


class GuardedConfig(uvicorn.Config):
    """uvicorn's config with the guard's two limits."""

    def __init__(self, app: Any, *, max_connections: int, handshake_timeout_s: float, **kw: Any):
        super().__init__(app, http=GuardedHttpProtocol, **kw)
        self.max_connections = max_connections
        self.handshake_timeout_s = handshake_timeout_s


class GuardedHttpProtocol(HttpToolsProtocol):
    """HTTP/1.1 with a deadline for each request head and the connection cap."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        config: GuardedConfig = self.config  # type: ignore[assignment]
        if len(self.connections) > config.max_connections:
            REFUSED_CONNECTIONS.labels("too_many").inc()
            transport.write(_TOO_MANY)
            transport.close()
            return
        self._start_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # the next request on a kept-alive connection
            self._start_head_timer()

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _start_head_timer(self) -> None:
        config: GuardedConfig = self.config  # type: ignore[assignment]
        self._head_timer = self.loop.call_later(config.handshake_timeout_s, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            REFUSED_CONNECTIONS.labels("slow_request").inc()
            self.transport.write(_TOO_SLOW)
            self.transport.close()


# Hand-written on purpose, for memory: uvicorn gives every socket an asyncio.Queue (three deques
# and an Event's deque) and an Event (one more), ~3.6 KiB of empty deques on each idle socket.
class _Inbox:
    """The socket's ASGI receive queue, for its one reader: uvicorn pauses reading after each
    message until the app takes it, so it holds one or two."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("a socket's messages have one reader")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class _Flag:
    """asyncio.Event's `is_set`, `set`, `clear` and `wait`, with no deque until something waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """The socket's protocol: a deadline for the handshake (the app accepting), the upgrade
    requests websockets refuses answered, and `send_text_now` offered to the app.

    When websockets cannot parse the upgrade request (a header line over 8 KiB, too many
    headers) it queues a 4xx answer that uvicorn never sends, leaving the socket open and
    silent: a cheap way to hold server sockets. This sends the answer and closes."""

    _handshake_timer: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]
        self.writable.set()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        config: GuardedConfig = self.config  # type: ignore[assignment]
        timeout = getattr(config, "handshake_timeout_s", None)
        if timeout is not None:
            self._handshake_timer = self.loop.call_later(timeout, self._handshake_too_slow)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # accepted by websockets: the app runs on this scope
            scope["extensions"][SEND_TEXT] = self.send_text_now
            scope["extensions"][CLOSE_NOW] = self.close_now

    def send_text_now(self, data: bytes) -> bool:
        """Write one text frame (UTF-8 `data`) at once; False when it cannot be written now (the
        transport pushes back, or the socket is closing) and the ASGI `send` must be used."""
        if not self.handshake_complete or self.close_sent or not self.writable.is_set():
            return False
        if self.disconnected or self.transport.is_closing():
            return False
        self.conn.send_text(data)
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    def close_now(self, code: int, reason: str) -> bool:
        """Queue the close frame behind whatever the transport holds, past its flow control: a
        reader too slow for its frames still gets the close once it has read them, and one that
        never reads is cut off after ABORT_S. (ASGI's close waits for the transport to take
        more, which a reader that stopped never lets it do: the socket stayed open.)"""
        if not self.handshake_complete or self.close_sent or self.transport.is_closing():
            return False
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(ABORT_S, self.transport.abort)
        return True

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.handshake_exc is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()

    def send_receive_event_to_app(self) -> None:
        # Invalid UTF-8 in a text message is the peer's mistake: closed 1007 as uvicorn does,
        # without the traceback uvicorn logs at ERROR for it (client messages are few and small:
        # decoding them once more costs nothing that shows).
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:
                self.frames = []
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] in ("websocket.accept", "websocket.close"):
            self._stop_handshake_timer()
        if message["type"] == "websocket.accept":
            # The parsed upgrade request and response are done with (the scope keeps the
            # headers). websockets' parser keeps the request in its generator's frame for the
            # socket's life: frames go on through a fresh parser (websockets swaps its parser
            # the same way on close). Nothing is half parsed here: a client may not send before
            # our 101 (RFC 6455 4.1), which went out just now, with no await since.
            del self.request, self.response
            if not self.close_sent:
                self.conn.parser = WebSocketsProtocol.parse(self.conn)
                next(self.conn.parser)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_handshake_timer()
        super().connection_lost(exc)

    def _stop_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _handshake_too_slow(self) -> None:
        self._handshake_timer = None
        if not self.handshake_complete and not self.transport.is_closing():
            REFUSED_CONNECTIONS.labels("slow_handshake").inc()
            self.transport.close()
