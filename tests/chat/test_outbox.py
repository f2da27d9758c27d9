"""The socket's one writer (server/chat/outbox.py): control frames first, streams in turn, a slow
peer slowed down or closed. The socket is a stand-in with Starlette's `send`/`close` calls."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from protocol.frames import Delta, Start
from server.chat.outbox import SEND_TEXT, Outbox
from server.chat.stream import Stream


class Socket:
    """Records what the writer sends; `gate` held closed makes sends block like a full buffer."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.scope: dict[str, Any] = {"extensions": {}}
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, message: dict[str, Any]) -> None:
        await self.gate.wait()
        self.sent.append(json.loads(message["text"]))

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)


class Reader:
    def __init__(self, outbox: Outbox | None = None) -> None:
        self.outbox = outbox

    def wake(self, stream: Stream) -> None:
        assert self.outbox is not None
        self.outbox.ready(stream)


def make(socket: Socket, **options: Any) -> tuple[Outbox, Reader, list[str]]:
    slow: list[str] = []
    reader = Reader()
    outbox = Outbox(
        socket,  # type: ignore[arg-type]
        reader,
        send_timeout_s=options.pop("send_timeout_s", 5.0),
        too_slow=slow.append,
        **options,
    )
    reader.outbox = outbox
    return outbox, reader, slow


async def until(condition: Any) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - polls the object under test, turn by turn
            await asyncio.sleep(0)


async def test_control_frames_go_before_stream_frames_and_close_comes_last() -> None:
    socket = Socket()
    outbox, reader, _ = make(socket)
    stream = Stream("s", "u", "answer")
    stream.attach(reader, 0)
    stream.emit(Start, message_id="m")
    outbox.control(b'{"type":"pong"}')
    outbox.close(1000, "bye")
    outbox.control(b'{"type":"pong","nonce":"2"}')
    await outbox.finished(5)
    assert [f["type"] for f in socket.sent] == ["pong", "pong"]  # closing drops the streams
    assert socket.closed == (1000, "bye")


async def test_streams_take_turns() -> None:
    socket = Socket()
    outbox, reader, _ = make(socket)
    a, b = Stream("a", "u", "answer"), Stream("b", "u", "answer")
    for stream in (a, b):
        stream.attach(reader, 0)
        stream.emit(Start, message_id="m")
        stream.done(finish_reason="stop", timings=stream.timings())
    await until(lambda: len(socket.sent) == 4)
    outbox.close(1000)
    await outbox.finished(5)
    assert [f["id"] for f in socket.sent] == ["a", "b", "a", "b"]


async def test_a_stream_taken_by_another_reader_is_skipped() -> None:
    socket = Socket()
    outbox, reader, _ = make(socket)
    stream = Stream("s", "u", "answer")
    stream.attach(reader, 0)
    stream.emit(Start, message_id="m")
    stream.attach(Reader(Outbox(Socket(), None, send_timeout_s=1, too_slow=print)), 0)  # type: ignore[arg-type]
    outbox.close(1000)
    await outbox.finished(5)
    assert socket.sent == []


async def test_deltas_merge_while_the_peer_is_slow() -> None:
    socket = Socket()
    outbox, reader, _ = make(socket)
    stream = Stream("s", "u", "answer")
    stream.attach(reader, 0)
    socket.gate.clear()  # the peer stops reading
    stream.emit(Start, message_id="m")
    await until(lambda: outbox._ready == {})  # start taken, its send blocked
    for piece in "abcde":
        stream.emit(Delta, text=piece)
    socket.gate.set()
    await until(lambda: len(socket.sent) == 2)
    outbox.close(1000)
    await outbox.finished(5)
    assert socket.sent[1]["text"] == "abcde" and socket.sent[1]["seq"] == 2


async def test_a_control_backlog_holds_the_reader_until_the_writer_catches_up() -> None:
    socket = Socket()
    outbox, _, _ = make(socket, control_limit=4)
    socket.gate.clear()
    for n in range(5):
        outbox.control(f'{{"type":"pong","nonce":"{n}"}}'.encode())
    assert outbox.backlogged
    drained = asyncio.create_task(outbox.drained())
    await asyncio.sleep(0.01)
    assert not drained.done()  # the peer reads nothing yet
    socket.gate.set()
    await asyncio.wait_for(drained, 5)
    outbox.close(1000)
    await outbox.finished(5)
    assert [f["nonce"] for f in socket.sent] == ["0", "1", "2", "3", "4"]


async def test_a_peer_that_stops_reading_is_too_slow() -> None:
    socket = Socket()
    outbox, _, slow = make(socket, send_timeout_s=0.05)
    socket.gate.clear()
    outbox.control(b'{"type":"pong"}')
    await until(lambda: slow == ["the client stopped reading"])
    outbox.close(1013)
    await outbox.finished(0.1)  # its close cannot go out either: given up on
    assert not outbox.backlogged  # a stopped writer holds no reader back


async def test_frames_go_straight_to_the_protocol_while_it_takes_them() -> None:
    """The server's protocol offers a direct send (server/web/protocols.py): frames go out as
    they are queued, with no writer task; when the transport pushes back a writer waits through
    ASGI `send`, and once it caught up frames go out directly again."""
    socket = Socket()
    direct: list[bytes] = []
    pushing_back = False

    def send_text(data: bytes) -> bool:
        if pushing_back:
            return False
        direct.append(data)
        return True

    socket.scope["extensions"][SEND_TEXT] = send_text
    outbox, reader, _ = make(socket)
    stream = Stream("s", "u", "answer")
    stream.attach(reader, 0)
    stream.emit(Start, message_id="m")
    assert len(direct) == 1 and outbox._writer is None  # sent as it was queued
    pushing_back = True
    stream.emit(Delta, text="x")
    assert outbox._writer is not None
    await until(lambda: len(socket.sent) == 1)
    await until(lambda: outbox._writer is None)  # caught up
    pushing_back = False
    stream.emit(Delta, text="y")  # within the delta tick of "x": goes out at its end
    await until(lambda: len(direct) == 2)
    assert outbox._writer is None
    outbox.close(1000)
    await outbox.finished(5)
    assert [json.loads(d)["type"] for d in direct] == ["start", "delta"]
    assert socket.sent[0]["text"] == "x" and socket.closed == (1000, "")
