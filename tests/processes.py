"""`textbook-chat serve` as a real process, for tests of what only processes show."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx


@asynccontextmanager
async def serve_process(
    port: int,
    env: dict[str, str],
    log: Path,
    *,
    ready_path: str = "/readyz",
    args: tuple[str, ...] = (),
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start `serve` on `port` with `env`, wait until `ready_path` answers 200, kill it on exit."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server.cli", "serve", "--port", str(port), *args,
            env=env, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(900):
                if proc.returncode is not None:
                    raise AssertionError(f"serve exited early:\n{_tail(log)}")
                try:
                    if (await http.get(f"http://127.0.0.1:{port}{ready_path}")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"serve did not start:\n{_tail(log)}")
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]
