"""`serve --workers 2` on SIGTERM: the port refuses new connections while the workers drain,
so a proxy retries them on another node instead of waiting on a socket nobody serves."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from server.services import Services
from server.tools.client import connect
from server.tools.fake_llm import FakeLLM
from tests.conftest import model_config, token_for
from tests.processes import serve_copy

pytestmark = pytest.mark.slow


async def test_workers_refuse_new_connections_while_draining(
    tmp_path: Path, tmp_data_dir: Path, database_url: str, services: Services, fake_llm: FakeLLM
) -> None:
    # 600 tokens at 25/s outlive the 5 s drain: the socket streams all through the checks below
    with model_config(fake_llm, tokens_per_answer=600, tokens_per_second=25):
        async with serve_copy(
            tmp_path / "data",
            tmp_data_dir / "main" / "qdrant",  # built by the `services` fixture
            tmp_path / "serve.log",
            args=("--workers", "2"),
            DATABASE_URL=database_url,
            OPENAI_BASE_URL=fake_llm.base_url,
            DRAIN_SECONDS="5",
        ) as (port, proc):
            async with connect(f"ws://127.0.0.1:{port}/v1/chat", token_for("two-workers")) as chat:
                await chat.send(type="ask", id="long", question="How do humanoids walk?")
                await chat.recv_type("delta")
                proc.send_signal(signal.SIGTERM)
                # Until the workers have stopped listening a connection is served as usual; from
                # then on it must be refused, never accepted and left unanswered (the parent's
                # copy of the socket kept the port open, and the drain's end reset them).
                while True:
                    if await _served_or_refused(port) == "refused":
                        break
                    await asyncio.sleep(0.05)
                frames, code = await chat.until_closed()
            assert code == 1012
            assert frames[-1]["type"] == "delta", "cut by the drain deadline, as it outlived it"
            await asyncio.wait_for(proc.wait(), 30)
            assert proc.returncode in (0, -signal.SIGTERM)


async def _served_or_refused(port: int) -> str:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return "refused"
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
        try:
            answer = await asyncio.wait_for(reader.read(), 30)
        except ConnectionResetError:
            answer = b""
        assert answer.startswith(b"HTTP/1.1 200"), "accepted during the drain but never served"
        return "served"
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)
