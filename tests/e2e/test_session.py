"""A session that survives real networks: concurrency, resume, refresh and expiry, limits, liveness."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from server.services import Services
from server.tools.client import ChatClient, connect, deltas
from server.tools.fake_llm import FakeLLM
from tests.conftest import LiveServer, model_config, server_with, token_for

CHAPTER = "ros2-basics/ros2-services-actions-qos"


@pytest.fixture
def paced_llm(fake_llm: FakeLLM) -> Iterator[FakeLLM]:
    """Long answers at 100 tokens/s, echoing chapters; restored afterwards."""
    with model_config(fake_llm, tokens_per_answer=150, tokens_per_second=100):
        yield fake_llm


def _seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [f["seq"] for f in frames]


async def _until(chat: ChatClient, sid: str, predicate: Any) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = await chat.recv()
        if frame.get("id") == sid:
            frames.append(frame)
            if predicate(frame, frames):
                return frames


async def test_two_streams_at_once_on_one_socket(live: LiveServer, paced_llm: FakeLLM) -> None:
    async with connect(live.ws_url, token_for("duo")) as chat:
        await chat.send(type="ask", id="a", question="What is the zero-moment point?")
        await chat.send(type="chapter", id="c", chapter=CHAPTER, mode="translate", language="pt")
        streams: dict[str, list[dict[str, Any]]] = {"a": [], "c": []}
        order = []
        while not all(s and s[-1]["type"] in ("done", "error") for s in streams.values()):
            frame = await chat.recv()
            streams[frame["id"]].append(frame)
            order.append(frame["id"])
    for frames in streams.values():
        assert frames[-1]["type"] == "done"
        assert _seqs(frames) == list(range(1, len(frames) + 1))
    switches = sum(1 for x, y in itertools.pairwise(order) if x != y)
    assert switches > 2, "the two streams interleave"


async def test_drop_and_resume_replays_exactly_once(live: LiveServer, paced_llm: FakeLLM) -> None:
    token = token_for("rita")
    async with connect(live.ws_url, token) as chat:
        await chat.send(type="ask", id="r1", question="How does a complementary filter work?")
        seen = await _until(chat, "r1", lambda f, fs: sum(x["type"] == "delta" for x in fs) == 5)
    assert _seqs(seen) == list(range(1, len(seen) + 1))
    last = seen[-1]["seq"]
    await asyncio.sleep(0.3)  # it keeps generating while nobody listens
    async with connect(live.ws_url, token) as chat:
        await chat.send(type="resume", id="r1", after_seq=last)
        rest = await chat.stream("r1")
    assert _seqs(rest) == list(range(last + 1, last + 1 + len(rest))), "no gap, no duplicate"
    assert rest[-1]["type"] == "done" and rest[-1]["finish_reason"] == "stop"
    answer = deltas(seen) + deltas(rest)
    saved = await live.services.store.list_messages("rita", seen[0]["conversation_id"])
    assert saved[0]["answer"] == answer and saved[0]["status"] == "complete"

    # a finished stream can still be fetched for a while, from any point
    async with connect(live.ws_url, token) as chat:
        await chat.send(type="resume", id="r1", after_seq=2)
        again = await chat.stream("r1")
    assert _seqs(again)[0] == 3 and again[-1]["type"] == "done"
    assert deltas(again) == answer


async def test_resume_of_another_users_stream_is_not_found(
    live: LiveServer, paced_llm: FakeLLM
) -> None:
    async with connect(live.ws_url, token_for("owner")) as chat:
        frames = await chat.ask("mine", "What is LiDAR?")
    assert frames[-1]["type"] == "done"
    async with connect(live.ws_url, token_for("intruder")) as chat:
        await chat.send(type="resume", id="mine", after_seq=0)
        error = await chat.recv()
        assert error["code"] == "not_found" and error["id"] == "mine"
        await chat.send(type="cancel", id="mine")
        assert (await chat.recv())["code"] == "not_found"


async def test_resume_from_the_journal_on_another_server(
    services: Services, paced_llm: FakeLLM
) -> None:
    """Two servers with separate session state share only Postgres, as two processes would."""
    token = token_for("jules")
    async with server_with(services) as first:
        async with connect(first.ws_url, token) as chat:
            frames = await chat.ask("j1", "What is action chunking?")
        assert frames[-1]["type"] == "done"
        await first.services.journal.flush()
    async with server_with(services) as second:
        async with connect(second.ws_url, token) as chat:
            await chat.send(type="resume", id="j1", after_seq=3)
            replay = await chat.stream("j1")
            await chat.send(type="resume", id="j1", after_seq=0)  # attached here already
            assert (await chat.recv())["code"] == "duplicate_id"
        async with connect(second.ws_url, token) as chat:
            await chat.send(type="resume", id="j1", after_seq=999)
            assert (await chat.recv())["code"] == "invalid_message"
    assert replay == frames[3:]


async def test_refresh_keeps_the_socket_and_expiry_closes_4401(
    services: Services, paced_llm: FakeLLM
) -> None:
    async with server_with(services, token_expiry_grace_s=0.3) as server:
        async with connect(server.ws_url, token_for("tim", ttl=2)) as chat:
            await asyncio.sleep(1.0)
            await chat.send(type="auth", token=token_for("tim", ttl=600))
            assert (await chat.recv_type("ready"))["expires_at"] > 0
            await asyncio.sleep(1.5)  # past the first token's expiry
            await chat.send(type="ping", nonce="still")
            assert await chat.recv() == {"type": "pong", "nonce": "still"}

        async with connect(server.ws_url, token_for("tim", ttl=1)) as chat:
            await chat.send(type="ask", id="e1", question="What is the capture point?")
            frames, code = await chat.until_closed()
            assert code == 4401
        expired = [f for f in frames if f["type"] == "error" and "id" not in f]
        assert expired and expired[0]["code"] == "token_expired"
        last = max(f["seq"] for f in frames if f.get("id") == "e1")
        async with connect(server.ws_url, token_for("tim")) as chat:
            await chat.send(type="resume", id="e1", after_seq=last)
            rest = await chat.stream("e1")
        assert rest[0]["seq"] == last + 1 and rest[-1]["type"] == "done", (
            "its streams went on for resume"
        )


async def test_limits_per_connection_per_user_and_rate(
    services: Services, paced_llm: FakeLLM
) -> None:
    async with server_with(services, max_streams_per_user=2, max_connections_per_user=2) as server:
        token = token_for("lim")
        async with connect(server.ws_url, token) as a, connect(server.ws_url, token) as b:
            await a.send(type="ask", id="1", question="one")
            await b.send(type="ask", id="2", question="two")
            await a.recv_type("start")
            await b.recv_type("start")
            await b.send(type="ask", id="3", question="three")
            error = await b.recv_type("error")
            assert error["code"] == "too_many_streams" and error["id"] == "3"
            await a.send(type="ask", id="2", question="same id as b's live stream")
            assert (await a.recv_type("error"))["code"] == "duplicate_id"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with connect(server.ws_url, token) as c:
                    await c.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
            await a.send(type="cancel", id="1")
            await b.send(type="cancel", id="2")

    async with server_with(services, requests_per_minute=3) as server:
        token = token_for("rate")
        async with connect(server.ws_url, token) as a, connect(server.ws_url, token) as b:
            # the window is the clock's minute: all four are admitted within one
            if time.time() % 60 > 58:
                await asyncio.sleep(60.5 - time.time() % 60)
            for i in range(4):
                chat = a if i % 2 == 0 else b
                await chat.send(type="ask", id=f"q{i}", question="What is a humanoid?")
            on_a, on_b = await asyncio.gather(a.ends({"q0", "q2"}), b.ends({"q1", "q3"}))
            ends = on_a + on_b
        codes = sorted(e["type"] if e["type"] == "done" else e["code"] for e in ends)
        assert codes == ["done", "done", "done", "rate_limited"]
        limited = next(e for e in ends if e["type"] == "error")
        assert 0 < limited["retry_after"] <= 60 and limited["retryable"] is True

    async with server_with(services, completion_tokens_per_day=100) as server:
        async with connect(server.ws_url, token_for("quota")) as chat:
            first = await chat.ask("u1", "What is a humanoid?")
            assert first[-1]["usage"]["completion_tokens"] >= 100
            second = await chat.ask("u2", "What is a humanoid?")
        assert second[-1]["code"] == "rate_limited" and "daily" in second[-1]["message"]


async def test_idle_connections_time_out(services: Services) -> None:
    async with (
        server_with(services, idle_timeout_s=1) as server,
        connect(server.ws_url, token_for("idle")) as chat,
    ):
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await chat.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert "idle" in closed.value.rcvd.reason


async def test_peers_that_do_not_answer_pings_are_closed(services: Services) -> None:
    async with server_with(services, ws_ping_interval_s=1, ws_ping_timeout_s=1) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /v1/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {token_for('mute')}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert b" 101 " in head
        received = b""
        try:
            async with asyncio.timeout(6):
                while chunk := await reader.read(4096):  # never answer: no pong
                    received += chunk
        finally:
            writer.close()
        assert b"ready" in received, "the server spoke"
        assert b"\x89" in received, "and pinged"


async def test_a_client_that_stops_reading_is_merged_then_closed_1013(
    services: Services, fake_llm: FakeLLM
) -> None:
    # 3,000 tokens of 4 KB each: 12 MB, more than any socket buffer in between can hold
    with model_config(fake_llm, reply=("w" * 4000 + " ") * 3000):
        async with server_with(services, slow_client_s=1) as server:
            token = token_for("sloth")
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            async with connect(
                server.ws_url, token, sock=sock, max_queue=1, max_size=2**24
            ) as chat:
                await chat.send(type="ask", id="s1", question="What is a humanoid?")
                await chat.recv_type("start")
                peak = 0
                for _ in range(100):  # stop reading; watch the server's buffers meanwhile
                    await asyncio.sleep(0.05)
                    conns = server.services.registry.connections()
                    if not conns:
                        break
                    peak = max(peak, conns[0]._buffered_chars())
                received, code = await chat.until_closed()
            assert code == 1013
            assert peak <= 1_000_000 + 65_536, "memory per connection stays bounded"
            mine = [f for f in received if f.get("id") == "s1"]
            assert any(len(f.get("text", "")) > 1000 for f in mine), (
                "deltas were merged while it did not read"
            )
            assert _seqs(mine) == list(range(2, 2 + len(mine)))
            async with connect(server.ws_url, token, max_size=2**24) as chat:
                await chat.send(type="resume", id="s1", after_seq=mine[-1]["seq"] if mine else 1)
                rest = await chat.stream("s1", timeout=60)
            assert rest[-1]["type"] == "done"


@pytest.mark.parametrize("configured", [False, True])
async def test_permessage_deflate_is_negotiated_only_when_configured(
    services: Services, configured: bool
) -> None:
    async with (
        server_with(services, ws_per_message_deflate=configured) as server,
        connect(server.ws_url, token_for("squeezed"), compression="deflate") as chat,
    ):
        names = [e.name for e in chat.ws.protocol.extensions]
        assert names == (["permessage-deflate"] if configured else [])
        frames = await chat.ask("z1", "What is a humanoid robot? [[fake:tokens=30]]")
        assert frames[-1]["type"] == "done" and "".join(deltas(frames))
        chat.assert_contract()
