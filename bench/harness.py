"""What every benchmark needs: pinned child processes (server, relays, fake model), a scratch
database, ports and open-file limits."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx

from server.auth import mint_token

ROOT = Path(__file__).resolve().parents[1]
ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
JWT_SECRET = "bench-secret-" + "x" * 40
READY_TIMEOUT_S = 240.0  # the first start of a server ingests the sample book
T = TypeVar("T")


# ---- cores and limits ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Cores:
    """Which CPUs the target under test gets, and which the fake model and the load generator share."""

    target: frozenset[int]
    client: frozenset[int]

    def describe(self) -> str:
        """One line for the benchmark's header."""
        return f"target on CPU {_cpus(self.target)}; fake model + load generator on CPU {_cpus(self.client)}"


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def split_cores(pin: bool = True) -> Cores:
    """The lowest CPU for the target, the rest for the clients (all of them when there is one)."""
    available = frozenset(os.sched_getaffinity(0))
    if not pin or len(available) < 2:
        return Cores(available, available)
    target = frozenset({min(available)})
    return Cores(target, available - target)


def pin_self(cpus: frozenset[int]) -> None:
    """Pin this process (threads started from now on inherit it)."""
    os.sched_setaffinity(0, cpus)


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit toward `wanted` (children inherit it); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a benchmark's main coroutine on uvloop, as the server and the load tester do."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---- child processes -----------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Child:
    """A subprocess started pinned to some CPUs; its output goes to a log file."""

    name: str
    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        """The end of its output, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 15 s."""
        if self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout=15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def spawn(
    name: str,
    argv: Sequence[str],
    *,
    cpus: frozenset[int],
    env: dict[str, str],
    log_dir: Path,
    cwd: Path | None = None,
) -> Child:
    """Start argv under `taskset`, so every thread it ever starts stays on `cpus`."""
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            "taskset",
            "-c",
            _cpus(cpus),
            *argv,
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    return Child(name, process, log)


async def wait_http_ok(child: Child, url: str, timeout: float = READY_TIMEOUT_S) -> None:  # noqa: ASYNC109
    """Poll `url` until it answers 200; fail with the child's log if it exits first."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=3.0) as http:
        while time.monotonic() < deadline:
            if child.process.returncode is not None:
                raise RuntimeError(
                    f"{child.name} exited {child.process.returncode}:\n{child.log_tail()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{child.name} not ready at {url} within {timeout} s:\n{child.log_tail()}")


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """Something speaking the chat protocol on a port."""

    name: str
    port: int
    pid: int

    @property
    def ws_url(self) -> str:
        """The chat socket."""
        return f"ws://127.0.0.1:{self.port}/v1/chat"


@contextlib.asynccontextmanager
async def fake_model(
    cpus: frozenset[int],
    log_dir: Path,
    *,
    tokens: int = 100,
    tps: float = 20.0,
    first_token_delay: float = 0.0,
) -> AsyncIterator[tuple[str, Child]]:
    """`textbook-chat fake-llm serve` in a pinned subprocess; yields its base URL."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "server.tools.fake_llm",
        "serve",
        "--port",
        str(port),
        "--tokens",
        str(tokens),
        "--tps",
        str(tps),
        "--first-token-delay",
        str(first_token_delay),
    ]
    child = await spawn("fake-llm", argv, cpus=cpus, env=dict(os.environ), log_dir=log_dir)
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        await wait_http_ok(child, f"{base_url}/models", timeout=30)
        yield base_url, child
    finally:
        await child.stop()


@contextlib.asynccontextmanager
async def scratch_database(prefix: str = "bench") -> AsyncIterator[str]:
    """A new empty database on the local Postgres, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(5)}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def server_env(model_url: str, data_dir: Path, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a full server for benchmarks: no rate limits, no per-user caps."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "JWT_SECRET": JWT_SECRET,
        "OPENAI_BASE_URL": model_url,
        "OPENAI_API_KEY": "bench",
        "DATA_DIR": str(data_dir),
        "REQUESTS_PER_MINUTE": "0",
        "COMPLETION_TOKENS_PER_DAY": "0",
        "MAX_STREAMS_PER_USER": "4096",
        "MAX_CONNECTIONS_PER_USER": "4096",
        "LOG_LEVEL": "WARNING",
        "DRAIN_SECONDS": "2",  # stop quickly between runs
        **extra,
    }


@dataclasses.dataclass(frozen=True, slots=True)
class ServerHome:
    """A scratch database and data dir that several server processes may use in turn."""

    database_url: str
    data_dir: Path


@contextlib.asynccontextmanager
async def server_home() -> AsyncIterator[ServerHome]:
    """A scratch database and a temporary data dir, both removed afterwards."""
    async with scratch_database() as dsn:
        with tempfile.TemporaryDirectory(prefix="bench-data-") as data_dir:
            yield ServerHome(dsn, Path(data_dir))


@contextlib.asynccontextmanager
async def code_at(ref: str, parent: Path) -> AsyncIterator[Path]:
    """A checkout of this repository at git `ref` under `parent` (a detached worktree), removed
    afterwards: run with PYTHONPATH and the working directory set to it, this interpreter runs
    that commit's code."""
    tree = parent / f"code-{ref.replace('/', '-').replace('^', '-parent')}"
    git = ["git", "-C", str(ROOT)]
    await asyncio.to_thread(
        subprocess.run, [*git, "worktree", "add", "--detach", str(tree), ref], check=True,
        capture_output=True,
    )  # fmt: skip
    try:
        yield tree
    finally:
        await asyncio.to_thread(
            subprocess.run, [*git, "worktree", "remove", "--force", str(tree)], check=False,
            capture_output=True,
        )  # fmt: skip


@contextlib.asynccontextmanager
async def chat_server(
    model_url: str,
    cpus: frozenset[int],
    log_dir: Path,
    home: ServerHome | None = None,
    workers: int = 1,
    code: Path | None = None,
    **extra_env: str,
) -> AsyncIterator[Target]:
    """The full server (`textbook-chat serve`), pinned; on a scratch home unless given one
    (a home a server already used starts in seconds: the book is indexed); this checkout's
    code, or the code in `code` (see code_at)."""
    async with contextlib.AsyncExitStack() as stack:
        if home is None:
            home = await stack.enter_async_context(server_home())
        port = free_port()
        env = server_env(model_url, home.data_dir, home.database_url, **extra_env)
        if code is not None:
            env["PYTHONPATH"] = str(code)
        argv = [sys.executable, "-m", "server.cli", "serve", "--port", str(port)]
        argv += ["--workers", str(workers)]
        child = await spawn(f"server-{port}", argv, cpus=cpus, env=env, log_dir=log_dir, cwd=code)
        try:
            await wait_http_ok(child, f"http://127.0.0.1:{port}/readyz")
            if workers > 1:
                await asyncio.sleep(5.0)  # the first worker answers /readyz; let the others start
            name = "full server" if workers == 1 else f"full server, {workers} workers"
            yield Target(name, port, child.pid)
        finally:
            await child.stop()


@contextlib.asynccontextmanager
async def relay(
    kind: str, model_url: str, cpus: frozenset[int], log_dir: Path
) -> AsyncIterator[Target]:
    """`python -m bench.relays KIND` in a pinned subprocess."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.relays",
        kind,
        "--port",
        str(port),
        "--model-url",
        model_url,
    ]
    child = await spawn(f"relay-{kind}", argv, cpus=cpus, env=dict(os.environ), log_dir=log_dir)
    try:
        await wait_http_ok(child, f"http://127.0.0.1:{port}/healthz", timeout=30)
        yield Target(f"{kind} relay", port, child.pid)
    finally:
        await child.stop()


def tokens(users: int, prefix: str = "bench-") -> list[str]:
    """One HS256 token per user, valid for an hour."""
    return [mint_token(JWT_SECRET, f"{prefix}{i}", 3600) for i in range(users)]
