"""SIGTERM on a real `serve` process: stop accepting, drain, close with 1012, lose nothing."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from server.tools.client import connect, deltas
from server.tools.fake_llm import FakeLLM
from tests.conftest import LiveServer, model_config, token_for
from tests.processes import serve_copy


@pytest.fixture
def slow_llm(fake_llm: FakeLLM) -> Iterator[FakeLLM]:
    with model_config(fake_llm, tokens_per_answer=200, tokens_per_second=25):
        yield fake_llm


async def test_sigterm_drains_then_closes_1012_and_nothing_is_lost(
    live: LiveServer, database_url: str, tmp_data_dir: Path, tmp_path: Path, slow_llm: FakeLLM
) -> None:
    # the book is already indexed in the session's Postgres; the process gets a copy of its index
    async with serve_copy(
        tmp_path / "data",
        tmp_data_dir / "main" / "qdrant",
        tmp_path / "serve.log",
        DATABASE_URL=database_url,
        OPENAI_BASE_URL=slow_llm.base_url,
        DRAIN_SECONDS="2",
    ) as (port, proc):
        url = f"ws://127.0.0.1:{port}/v1/chat"
        async with connect(url, token_for("dora")) as chat:
            await chat.send(type="ask", id="long", question="Explain bipedal walking in depth")
            await chat.send(type="ask", id="short", question="What is a ZMP? [[fake:tokens=30]]")
            frames: list[dict[str, object]] = []
            while sum(1 for f in frames if f.get("id") == "long" and f["type"] == "delta") < 5:
                frames.append(await chat.recv())
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            with pytest.raises(ConnectionRefusedError):  # no longer accepting
                await websockets.connect(url, open_timeout=2)
            try:
                while True:
                    frames.append(await chat.recv(timeout=10))
            except websockets.ConnectionClosed as closed:
                close_code = closed.rcvd.code if closed.rcvd else None
        assert close_code == 1012
        await asyncio.wait_for(proc.wait(), 30)
        # uvicorn re-raises the signal once it is done
        assert proc.returncode in (0, -signal.SIGTERM)

    short = [f for f in frames if f.get("id") == "short"]
    assert short[-1]["type"] == "done" and short[-1]["finish_reason"] == "stop", (
        "a short stream drains"
    )
    long = [f for f in frames if f.get("id") == "long"]
    assert long[-1]["type"] == "delta", "the long one was still running when the socket closed"
    last = long[-1]["seq"]

    # Everything generated was persisted: resume on another server replays the rest from the journal.
    async with connect(live.ws_url, token_for("dora")) as chat:
        await chat.send(type="resume", id="long", after_seq=last)
        rest = await chat.stream("long")
    assert [f["seq"] for f in rest] == list(range(last + 1, last + 1 + len(rest)))
    assert rest[-1]["type"] == "done" and rest[-1]["finish_reason"] == "cancelled"
    saved = await live.services.store.list_messages("dora", long[0]["conversation_id"])
    assert saved[0]["status"] == "interrupted"
    assert saved[0]["answer"] == deltas(long) + deltas(rest)
