"""Capacity probe: how many paced streams one core of the fake sustains."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import cast

import msgspec


@dataclasses.dataclass
class CapacityResult:
    """One probe level: N paced streams against a fake pinned to one core."""

    streams: int
    completed: int
    server_cpu: float  # busy fraction of one core while all streams were open
    client_cpu: float
    lateness_p50_ms: float  # token arrival vs its ideal time (first token + k/tps)
    lateness_p99_ms: float


class _ProbeStream(asyncio.Protocol):
    """Bare SSE reader: counts content deltas and how late each one arrived."""

    def __init__(
        self, request: bytes, interval: float, lateness: list[float], started: Callable[[], None]
    ) -> None:
        self.request, self.interval, self.lateness, self.started = (
            request,
            interval,
            lateness,
            started,
        )
        self.first: float | None = None
        self.tokens = 0
        self.done = asyncio.get_running_loop().create_future()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        cast(asyncio.Transport, transport).write(self.request)

    def data_received(self, data: bytes) -> None:
        count = data.count(b'"delta":{"content":')
        if count:
            now = time.monotonic()
            if self.first is None:
                self.first = now
                self.started()
            for index in range(self.tokens, self.tokens + count):
                self.lateness.append(now - self.first - index * self.interval)
            self.tokens += count
        if b"data: [DONE]" in data and not self.done.done():
            self.done.set_result(True)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(False)


def _process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime in USER_HZ ticks


async def _probe_level(
    port: int, pid: int, streams: int, rate: float, tokens: int
) -> CapacityResult:
    loop = asyncio.get_running_loop()
    content = f"capacity probe [[fake:tokens={tokens},tps={rate}]]"
    body = msgspec.json.encode(
        {"model": "fake", "stream": True, "messages": [{"role": "user", "content": content}]}
    )
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    lateness: list[float] = []
    all_started = asyncio.Event()
    started = 0

    def one_started() -> None:
        nonlocal started
        started += 1
        if started == streams:
            all_started.set()

    connect_slots = asyncio.Semaphore(256)

    async def open_stream() -> _ProbeStream:
        async with connect_slots:
            factory = lambda: _ProbeStream(request, 1.0 / rate, lateness, one_started)  # noqa: E731
            return (await loop.create_connection(factory, "127.0.0.1", port))[1]

    began = time.monotonic()
    readers = await asyncio.gather(*(open_stream() for _ in range(streams)))
    try:
        await asyncio.wait_for(all_started.wait(), timeout=10)
        window = max(0.5, min(3.0, tokens / rate - (time.monotonic() - began) - 1.0))
        server0, client0, wall0 = _process_cpu_seconds(pid), time.process_time(), time.monotonic()
        await asyncio.sleep(window)
        wall = time.monotonic() - wall0
        server_cpu = (_process_cpu_seconds(pid) - server0) / wall
        client_cpu = (time.process_time() - client0) / wall
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(r.done for r in readers)), timeout=tokens / rate + 10
        )
    finally:
        for reader in readers:
            if reader.transport is not None:
                reader.transport.close()
    ordered = sorted(lateness) or [0.0]
    return CapacityResult(
        streams=streams,
        completed=sum(outcomes),
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        lateness_p50_ms=1000 * ordered[len(ordered) // 2],
        lateness_p99_ms=1000 * ordered[int(len(ordered) * 0.99)],
    )


async def measure_capacity(
    levels: tuple[int, ...] = (500, 1000, 2000, 4000),
    tokens_per_second: float = 20.0,
    tokens: int = 100,
    time_budget: float = 55.0,
    pin_cores: bool = True,
) -> list[CapacityResult]:
    """Ramp paced streams against a fake in a subprocess pinned to one core; stops at saturation."""
    began = time.monotonic()
    own_cores = os.sched_getaffinity(0)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.tools.fake_llm",
        "serve",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    results: list[CapacityResult] = []
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        port = int(line.rstrip().rsplit(":", 1)[1].split("/")[0])
        if pin_cores and len(own_cores) >= 2:  # server on one core, this client on the others
            server_core = min(own_cores)
            os.sched_setaffinity(process.pid, {server_core})
            os.sched_setaffinity(0, own_cores - {server_core})
        for streams in levels:
            if time.monotonic() - began + tokens / tokens_per_second + 5 > time_budget:
                break
            result = await _probe_level(port, process.pid, streams, tokens_per_second, tokens)
            results.append(result)
            if result.server_cpu > 0.9 or result.completed < streams:
                break
    finally:
        os.sched_setaffinity(0, own_cores)
        process.terminate()
        await process.wait()
    return results
