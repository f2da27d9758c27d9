"""`textbook-chat serve` as a real process, for tests of what only processes show."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from tests.conftest import JWT_SECRET, free_port

STOP_S = 30.0


@asynccontextmanager
async def serve_process(
    port: int,
    env: dict[str, str],
    log: Path,
    *,
    ready_path: str = "/readyz",
    args: tuple[str, ...] = (),
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start `serve` on `port` with `env`, wait until `ready_path` answers 200; on exit SIGTERM,
    then kill if it has not stopped within STOP_S."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server.cli", "serve", "--port", str(port), *args,
            env=env, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        await wait_ready(port, proc, log, path=ready_path)
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@asynccontextmanager
async def serve_copy(
    data_dir: Path, index: Path, log: Path, *, args: tuple[str, ...] = (), **env: str
) -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    """`serve [args]` on a copy of an indexed shard (no ingest), with the tests' secret and a
    model key; yields its port and process."""
    await asyncio.to_thread(shutil.copytree, index, data_dir / "qdrant")
    models = index.parent / "models"
    if models.is_dir():
        # The ONNX graphs the index's server built: a fresh DATA_DIR builds its own (~4 s of CPU
        # at the first question, in every process started).
        (data_dir / "models").symlink_to(models, target_is_directory=True)
    port = free_port()
    full_env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "JWT_SECRET": JWT_SECRET,
        "OPENAI_API_KEY": "test",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    async with serve_process(port, full_env, log, args=args) as proc:
        yield port, proc


async def wait_ready(
    port: int,
    proc: asyncio.subprocess.Process,
    log: Path,
    *,
    path: str = "/readyz",
    within: float = 120.0,
) -> None:
    """Poll `path` until it answers 200: AssertionError if the process exits first, TimeoutError
    if it is not ready `within` seconds."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise AssertionError(f"serve exited early:\n{await _tail(log)}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"http://127.0.0.1:{port}{path}")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"serve not ready on :{port}:\n{await _tail(log)}")


async def _tail(log: Path) -> str:
    text = await asyncio.to_thread(log.read_text, errors="replace")
    return text[-3000:]
