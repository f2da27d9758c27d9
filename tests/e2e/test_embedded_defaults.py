"""`serve` with nothing configured: embedded PostgreSQL, embedded Qdrant, local embeddings, sample book."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from server.chat.llm import EXTRACTIVE_NOTICE
from server.store.embedded import pgdata_dir
from server.tools.client import connect, deltas
from tests.conftest import free_port
from tests.processes import serve_process

CONFIG_VARIABLES = [
    "DATABASE_URL",
    "QDRANT_URL",
    "QDRANT_API_KEY",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "CHAT_MODEL",
    "EMBEDDING_PROVIDER",
    "JWT_SECRET",
    "JWKS_URL",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "ALLOWED_ORIGINS",
    "BOOK_DIR",
]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    env["DATA_DIR"] = str(data_dir)
    return env


async def _cli(data_dir: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        *args,
        env=_env(data_dir),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return out.decode().strip()


@asynccontextmanager
async def serving(
    data_dir: Path, log: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """`textbook-chat serve` on the embedded defaults, until /healthz answers."""
    port = free_port()
    async with serve_process(port, _env(data_dir), log, ready_path="/healthz") as proc:
        yield proc, port


def _postmaster_pid(pgdata: Path) -> int | None:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().split()[0])
    return pid if psutil.pid_exists(pid) else None


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "data"
    yield data
    pgdata = pgdata_dir(data)
    pid = _postmaster_pid(pgdata)
    if pid is not None:
        psutil.Process(pid).terminate()
    shutil.rmtree(pgdata, ignore_errors=True)


async def test_serve_answers_on_embedded_defaults_and_stops_its_postgres(
    data_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    pgdata = pgdata_dir(data_dir)
    async with serving(data_dir, log) as (proc, port):
        token = await _cli(data_dir, "token", "--sub", "newcomer")
        async with connect(f"ws://127.0.0.1:{port}/v1/chat", token) as chat:
            frames = await chat.ask("q", "What is the zero-moment point?")
        assert [f["type"] for f in frames[:2]] == ["start", "sources"]
        assert frames[-1]["type"] == "done"
        assert deltas(frames).startswith(EXTRACTIVE_NOTICE)
        assert "Humanoid Locomotion" in [s["title"] for s in frames[1]["sources"]]
        async with httpx.AsyncClient() as http:
            ready = (await http.get(f"http://127.0.0.1:{port}/readyz")).json()
        assert ready["status"] == "ok"
        first_pg = _postmaster_pid(pgdata)
        assert first_pg is not None
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert _postmaster_pid(pgdata) is None, "the embedded PostgreSQL must stop with the server"

    # A server killed outright leaves its PostgreSQL behind; the next start reuses it.
    async with serving(data_dir, log) as (proc, _):
        left_behind = _postmaster_pid(pgdata)
        proc.kill()
        await proc.wait()
    assert left_behind is not None and _postmaster_pid(pgdata) == left_behind
    async with serving(data_dir, log) as (proc, _):
        assert _postmaster_pid(pgdata) == left_behind
        postgres_mains = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(pgdata) in " ".join(p.info["cmdline"] or [])
            and "-D" in (p.info["cmdline"] or [])
        ]
        assert len(postgres_mains) == 1
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert _postmaster_pid(pgdata) is None
    assert "configuration error" not in log.read_text()
