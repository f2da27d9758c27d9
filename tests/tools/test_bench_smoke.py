"""Smoke test of the benchmarks: the modules import, and each relay carries one full stream."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from bench.relays import KINDS, RelayKind, create_relay_app
from server.tools.client import connect, deltas
from server.tools.fake_llm import FakeLLM, expected_reply
from tests.conftest import AppServer

RUNNABLE = (
    "relays", "capacity", "first_delta", "per_answer", "memory", "cancel", "ingest", "deflate",
    "profile",
)  # fmt: skip


@pytest.mark.parametrize("name", RUNNABLE)
def test_benchmark_imports_and_says_how_to_run_it(name: str) -> None:
    module = importlib.import_module(f"bench.{name}")
    assert module.__doc__ is not None and f"-m bench.{name}" in module.__doc__


@pytest.mark.parametrize("kind", KINDS)
async def test_relay_carries_one_full_stream(kind: RelayKind, fake_llm: FakeLLM) -> None:
    question = "How does a relay pass tokens along?"
    async with AppServer(create_relay_app(kind, fake_llm.base_url)) as server:
        url = f"ws://127.0.0.1:{server.port}/v1/chat"
        async with connect(url, token="ignored-by-the-relay") as chat:
            frames = await chat.ask("s1", question)
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"delta"}
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert deltas(frames) == expected_reply(question, fake_llm.config)
    done = frames[-1]
    assert done["finish_reason"] == "stop"
    assert done["usage"]["completion_tokens"] == fake_llm.config.tokens_per_answer
    assert done["timings"]["model_first_chunk_ms"] >= 0


def test_the_deflate_benchmark_runs_and_finds_frames_compress() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.deflate",
            "--tokens",
            "20",
            "--answers",
            "3",
            "--sockets",
            "20",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    [on] = [line.split() for line in out.splitlines() if line.startswith("on ")]
    assert float(on[3].rstrip("x")) < 1.0, out


def test_the_cancel_benchmark_runs_its_trials_to_the_end() -> None:
    """Each trial reads its stream in two parts (until two deltas, then to `done{cancelled}`)."""
    out = subprocess.run(
        [
            sys.executable, "-m", "bench.cancel", "--trials", "4", "--workers", "2",
            "--background", "0", "--kinds", "cancel", "--targets", "full", "--no-pin",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout  # fmt: skip
    rows = [line.split() for line in out.splitlines() if line.startswith("full ")]
    assert rows and all(row[-2] == "4/0" for row in rows), out


def test_the_per_answer_benchmark_measures_answers() -> None:
    out = subprocess.run(
        [
            sys.executable, "-m", "bench.per_answer", "--targets", "full", "--sockets", "2",
            "--duration", "2", "--warmup", "1", "--no-pin",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout  # fmt: skip
    [row] = [line.split() for line in out.splitlines() if line.startswith("full ")]
    assert float(row[2]) > 0 and row[-1] == "0", out  # cpu ms per answer; no errors


def test_profile_charges_each_sample_to_the_first_part_from_the_running_frame() -> None:
    from bench.profile import charge

    raw = (
        "main (server/cli.py:1);run (uvloop/__init__.py:92);Runner.run (asyncio/runners.py:118) 7\n"
        "main (server/cli.py:1);Outbox.push (server/chat/outbox.py:9);"
        "send_text_now (server/web/protocols.py:133);send_text (websockets/protocol.py:3) 2\n"
        "main (server/cli.py:1);Stream.emit (server/chat/stream.py:99) 1\n"
    )
    parts = charge(raw)
    assert parts["socket writes: websockets, uvicorn"] == 2
    assert parts["stream, outbox, connection"] == 1
    assert sum(parts.values()) == 10
