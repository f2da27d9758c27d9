"""Two server processes on one Postgres: resume and cancel across them, limits counted across both,
identical chapter requests generated once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from server.chapters.rewrite import split_chapter
from server.tools.client import ChatClient, connect, deltas
from server.tools.fake_llm import FakeLLM
from tests.conftest import model_config, token_for
from tests.processes import serve_copy


@pytest.fixture
def paced_llm(fake_llm: FakeLLM) -> Iterator[FakeLLM]:
    with model_config(fake_llm, tokens_per_answer=120, tokens_per_second=40):
        yield fake_llm


@asynccontextmanager
async def serving(
    name: str, tmp: Path, index: Path, database_url: str, llm: FakeLLM, **env: str
) -> AsyncIterator[str]:
    """`textbook-chat serve` as its own process; yields its socket URL."""
    async with serve_copy(
        tmp / name,
        index,
        tmp / f"{name}.log",
        DATABASE_URL=database_url,
        OPENAI_BASE_URL=llm.base_url,
        **env,
    ) as (port, _proc):
        yield f"ws://127.0.0.1:{port}/v1/chat"


@asynccontextmanager
async def two_servers(
    tmp: Path, tmp_data_dir: Path, database_url: str, llm: FakeLLM, **env: str
) -> AsyncIterator[tuple[str, str]]:
    index = tmp_data_dir / "main" / "qdrant"
    async with AsyncExitStack() as stack:
        a, b = await asyncio.gather(
            stack.enter_async_context(serving("a", tmp, index, database_url, llm, **env)),
            stack.enter_async_context(serving("b", tmp, index, database_url, llm, **env)),
        )
        yield a, b


async def _deltas_until(chat: ChatClient, sid: str, n: int) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while sum(1 for f in frames if f["type"] == "delta") < n:
        frame = await chat.recv()
        if frame.get("id") == sid:
            frames.append(frame)
    return frames


async def test_resume_and_cancel_across_processes(
    tmp_path: Path, tmp_data_dir: Path, database_url: str, paced_llm: FakeLLM, live: Any
) -> None:
    async with two_servers(tmp_path, tmp_data_dir, database_url, paced_llm) as (a, b):
        token = token_for("nomad")
        # resume on the other process: exact replay, then the live rest
        async with connect(a, token) as chat:
            await chat.send(type="ask", id="trip", question="How do humanoids keep balance?")
            seen = await _deltas_until(chat, "trip", 4)
        last = seen[-1]["seq"]
        async with connect(b, token) as chat:
            await chat.send(type="resume", id="trip", after_seq=last)
            rest = await chat.stream("trip", timeout=30)
        assert [f["seq"] for f in rest] == list(range(last + 1, last + 1 + len(rest)))
        assert rest[-1]["type"] == "done" and rest[-1]["finish_reason"] == "stop"
        saved = await live.services.store.list_messages("nomad", seen[0]["conversation_id"])
        assert saved[0]["answer"] == deltas(seen) + deltas(rest)

        # cancel sent to B stops the upstream request generating in A
        disconnected = paced_llm.streams_disconnected
        async with connect(a, token) as on_a, connect(b, token) as on_b:
            await on_a.send(type="ask", id="stop-me", question="Explain the capture point")
            await _deltas_until(on_a, "stop-me", 2)
            await on_b.send(type="cancel", id="stop-me")
            frames = await on_a.stream("stop-me")
        assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "cancelled"
        await paced_llm.wait_for(lambda: paced_llm.streams_disconnected > disconnected, timeout=3)


@pytest.mark.usefixtures("services")  # the index the servers copy
async def _third_is_refused(url: str, token: str, within: float = 20.0) -> int:
    """Open a third socket until the process refuses it (presence reaches it from the other
    process within a heartbeat or a notification); the close code it refuses with."""
    async with asyncio.timeout(within):
        while True:
            try:
                async with connect(url, token):
                    pass  # admitted: the other process's count has not arrived yet
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else 1006
            except ConnectionError as refused:  # an error frame instead of ready
                if "4429" in str(refused) or "too many connections" in str(refused):
                    return 4429
                raise
            await asyncio.sleep(0.1)


@pytest.mark.usefixtures("services")  # builds the index the two processes copy
async def test_limits_hold_across_processes(
    tmp_path: Path, tmp_data_dir: Path, database_url: str, fake_llm: FakeLLM
) -> None:
    env = {"REQUESTS_PER_MINUTE": "4", "MAX_CONNECTIONS_PER_USER": "2"}
    async with two_servers(tmp_path, tmp_data_dir, database_url, fake_llm, **env) as (a, b):
        token = token_for("busy")
        async with connect(a, token) as on_a, connect(b, token) as on_b:
            for either in (a, b):  # each knows of the other's connection
                assert await _third_is_refused(either, token) == 4429
            # the window is the clock's minute: all five are admitted within one
            if time.time() % 60 > 58:
                await asyncio.sleep(60.5 - time.time() % 60)
            for i in range(5):
                chat = on_a if i % 2 == 0 else on_b
                await chat.send(type="ask", id=f"r{i}", question="What is a humanoid?")
            from_a, from_b = await asyncio.gather(
                on_a.ends({"r0", "r2", "r4"}), on_b.ends({"r1", "r3"})
            )
        outcomes = sorted(f.get("code", f["type"]) for f in from_a + from_b)
        assert outcomes == ["done"] * 4 + ["rate_limited"]


CHAPTER = "ros2-basics/ros2-services-actions-qos"


async def test_identical_chapters_on_two_processes_generate_once(
    tmp_path: Path, tmp_data_dir: Path, database_url: str, fake_llm: FakeLLM, live: Any
) -> None:
    row = await live.services.store.get_chapter(CHAPTER)
    sections = len(split_chapter(row.markdown))
    user = f"twin-{uuid.uuid4().hex[:8]}"
    token = token_for(user)

    async def new_profile(background: str) -> None:
        profile = {
            "software_background": background,
            "hardware_background": "",
            "level": "beginner",
        }
        async with httpx.AsyncClient(base_url=live.http_url) as http:
            put = await http.put(
                "/v1/profile", json=profile, headers={"Authorization": f"Bearer {token}"}
            )
        assert put.status_code == 200

    with model_config(fake_llm, echo=True, tokens_per_second=40):
        async with two_servers(tmp_path, tmp_data_dir, database_url, fake_llm) as (a, b):
            # B joins A's generation; A's reader leaves and B still gets the whole chapter
            await new_profile(f"{user} writes Go services")
            before = len(fake_llm.chat_requests)
            async with connect(a, token) as on_a, connect(b, token) as on_b:
                await on_a.send(type="chapter", id="first", chapter=CHAPTER, mode="personalize")
                await _deltas_until(on_a, "first", 1)
                await on_b.send(type="chapter", id="second", chapter=CHAPTER, mode="personalize")
                second = await _deltas_until(on_b, "second", 1)
                await on_a.send(type="cancel", id="first")
                first = await on_a.stream("first")
                second += await on_b.stream("second", timeout=60)
            assert first[-1]["type"] == "done" and first[-1]["finish_reason"] == "cancelled"
            assert second[-1]["type"] == "done" and second[-1]["cached"] is False
            assert len(fake_llm.chat_requests) - before == sections, "generated once, on A"
            async with connect(a, token) as again:
                await again.send(type="chapter", id="third", chapter=CHAPTER, mode="personalize")
                third = await again.stream("third")
            assert third[-1]["cached"] is True and deltas(third) == deltas(second)

            # when the readers on both processes leave, A's upstream requests stop
            await new_profile(f"{user} writes Rust firmware")
            disconnected = fake_llm.streams_disconnected
            async with connect(a, token) as on_a, connect(b, token) as on_b:
                await on_a.send(type="chapter", id="fourth", chapter=CHAPTER, mode="personalize")
                await _deltas_until(on_a, "fourth", 1)
                await on_b.send(type="chapter", id="fifth", chapter=CHAPTER, mode="personalize")
                await _deltas_until(on_b, "fifth", 1)
                await on_a.send(type="cancel", id="fourth")
                await on_a.stream("fourth")
                await asyncio.sleep(0.3)
                assert fake_llm.open_streams > 0, "B still reads"
                await on_b.send(type="cancel", id="fifth")
                fifth = await on_b.stream("fifth")
            assert fifth[-1]["type"] == "done" and fifth[-1]["finish_reason"] == "cancelled"
            await fake_llm.wait_for(lambda: fake_llm.open_streams == 0, timeout=3)
            assert fake_llm.streams_disconnected > disconnected
