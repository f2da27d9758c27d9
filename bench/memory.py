"""Benchmark: server memory per idle socket (1,000 and 5,000 authenticated idle sockets) and per
active stream (streams mid-generation vs the same sockets idle), full server against the raw relay.

Run: .venv/bin/python -m bench.memory [--sockets 1000,5000] [--streams 200] [--targets full,raw]
         [--no-pin]

Memory is the target process's RSS and USS (psutil), the median of a few readings taken after
the sockets settle. Sockets and streams are measured on separate processes of the same target (for
the full server: a second process on the same database and index), so memory freed by one phase
is not reused by the next and hidden. Per socket = (RSS with N sockets - RSS before) / N; per
active stream the same over all streams, and "marginal": the growth of the second half of the
streams, started once the first half runs, per stream (what grows once with the first burst, such
as the embedding runtime's arena for a batch of new questions, is not a stream's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from websockets.asyncio.client import ClientConnection

from bench.harness import (
    ServerHome,
    Target,
    chat_server,
    fake_model,
    pin_self,
    raise_fd_limit,
    relay,
    run,
    server_home,
    split_cores,
    tokens,
)
from bench.measure import fmt, machine_line, ratio, rss_mb, table
from server.tools.client import StreamResult, close_sockets, open_sockets, read_stream, send_ask
from server.tools.client import timed_ask as ask

SETTLE_S = 2.0
LONG_ANSWER = "[[fake:tokens=4000,tps=20]]"  # 200 s: still generating when measured
DELTAS_BEFORE_MEASURING = 40  # two seconds into every stream


async def settled_memory(pid: int) -> tuple[float, float]:
    """Median RSS and USS (MiB) of five readings after a pause."""
    await asyncio.sleep(SETTLE_S)
    readings = []
    for _ in range(5):
        readings.append(await asyncio.to_thread(rss_mb, pid))
        await asyncio.sleep(0.2)
    return (
        statistics.median(r[0] for r in readings),
        statistics.median(r[1] for r in readings),
    )


async def warm_up(target: Target, token_list: list[str]) -> None:
    """A few short streams, so lazily built things (model client pool, caches) exist before the baseline."""
    sockets = await open_sockets(target.ws_url, token_list)
    try:
        await asyncio.gather(
            *(ask(ws, "warm", f"warm up {i} [[fake:tokens=5]]") for i, ws in enumerate(sockets))
        )
    finally:
        await close_sockets(sockets)


async def idle_sockets(target: Target, counts: list[int]) -> list[tuple[int, float, float]]:
    """(sockets, RSS MiB, USS MiB), starting with 0, opening sockets up to each count."""
    token_list = await asyncio.to_thread(tokens, max(counts), "mem-idle-")
    await warm_up(target, token_list[:10])
    rows = [(0, *await settled_memory(target.pid))]
    sockets: list[ClientConnection] = []
    try:
        for count in counts:
            sockets += await open_sockets(target.ws_url, token_list[len(sockets) : count])
            rows.append((count, *await settled_memory(target.pid)))
    finally:
        await close_sockets(sockets)
    return rows


async def start_streams(sockets: list[ClientConnection], first: int) -> list[StreamResult]:
    """A long answer to a new question on each socket, read until every stream is well under way."""
    results: list[StreamResult] = await asyncio.gather(
        *(
            send_ask(ws, "long", f"memory probe {first + i} {LONG_ANSWER}")
            for i, ws in enumerate(sockets)
        )
    )
    await asyncio.gather(
        *(
            read_stream(ws, "long", r, until_deltas=DELTAS_BEFORE_MEASURING)
            for ws, r in zip(sockets, results, strict=True)
        )
    )
    return results


async def active_streams(target: Target, streams: int, warm: int) -> ActiveReadings:
    """RSS and USS (MiB) with `streams` sockets idle, with a stream mid-generation on half of
    them, then on all: the second half's growth is what a stream costs beyond what the first
    burst grew once (the query-embedding runtime's arena for a batch, pools, caches' tables)."""
    token_list = await asyncio.to_thread(tokens, streams, "mem-active-")
    await warm_up(target, token_list[:warm])
    sockets = await open_sockets(target.ws_url, token_list)
    half = streams // 2
    results: list[StreamResult] = []
    try:
        readings = [await settled_memory(target.pid)]
        for first, last in ((0, half), (half, streams)):
            results += await start_streams(sockets[first:last], first)
            readings.append(await settled_memory(target.pid))
        if any(r.ended_at is not None for r in results):
            raise RuntimeError("a stream ended before it was measured")
    finally:
        cancel = b'{"type":"cancel","id":"long"}'
        await asyncio.gather(
            *(ws.send(cancel, text=True) for ws in sockets), return_exceptions=True
        )
        await close_sockets(sockets)
    idle, first_half, all_streams = readings
    return ActiveReadings(streams, half, idle, first_half, all_streams)


@dataclasses.dataclass(frozen=True)
class ActiveReadings:
    """(RSS, USS) in MiB: sockets idle, `half` of them streaming, all `streams` streaming."""

    streams: int
    half: int
    idle: tuple[float, float]
    first_half: tuple[float, float]
    all_streams: tuple[float, float]

    def per_stream(self, which: int) -> float:
        """KiB per stream, over all streams from idle."""
        return (self.all_streams[which] - self.idle[which]) * 1024 / self.streams

    def marginal(self, which: int) -> float:
        """KiB per stream of the second half."""
        return (
            (self.all_streams[which] - self.first_half[which]) * 1024 / (self.streams - self.half)
        )


@contextlib.asynccontextmanager
async def target_process(
    name: str, model_url: str, cpus: frozenset[int], log_dir: Path, home: ServerHome | None
) -> AsyncIterator[Target]:
    """A fresh process of the target (the full server on `home`)."""
    if name == "full":
        async with chat_server(model_url, cpus, log_dir, home) as target:
            yield target
    else:
        async with relay(name, model_url, cpus, log_dir) as target:
            yield target


async def main(args: argparse.Namespace) -> None:
    counts = [int(n) for n in args.sockets.split(",")]
    cores = split_cores(not args.no_pin)
    pin_self(cores.client)
    limit = raise_fd_limit(max(counts) * 2 + 2048)
    print(f"memory per idle socket and per active stream; open files limit {limit}")
    print(f"{cores.describe()}; {machine_line()}")
    idle: dict[str, list[tuple[int, float, float]]] = {}
    active: dict[str, ActiveReadings] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        log_dir = Path(tmp)
        async with (
            fake_model(cores.client, log_dir, tokens=20, tps=20.0) as (model_url, _),
            server_home() as home,
        ):
            for name in args.targets.split(","):
                async with target_process(name, model_url, cores.target, log_dir, home) as target:
                    idle[name] = await idle_sockets(target, counts)
                async with target_process(name, model_url, cores.target, log_dir, home) as target:
                    active[name] = await active_streams(target, args.streams, args.warm)
    print("\nidle authenticated sockets (MiB; per socket in KiB)")
    rows = []
    for name, readings in idle.items():
        base_rss, base_uss = readings[0][1], readings[0][2]
        rows.append([name, 0, fmt(base_rss), fmt(base_uss), "-", "-"])
        for count, rss, uss in readings[1:]:
            rows.append(
                [
                    name,
                    count,
                    fmt(rss),
                    fmt(uss),
                    fmt((rss - base_rss) * 1024 / count),
                    fmt((uss - base_uss) * 1024 / count),
                ]
            )
    print(table(["target", "sockets", "RSS", "USS", "RSS/socket", "USS/socket"], rows))
    print(
        f"\n{args.streams} streams mid-generation vs the same sockets idle (MiB; per stream in KiB;"
        f" marginal: the second {args.streams - args.streams // 2} streams' growth per stream)"
    )
    rows = []
    for name, a in active.items():
        rows.append(
            [
                name,
                fmt(a.idle[0]),
                fmt(a.first_half[0]),
                fmt(a.all_streams[0]),
                fmt(a.per_stream(0)),
                fmt(a.marginal(0)),
                fmt(a.marginal(1)),
            ]
        )
    headers = [
        "target",
        "idle RSS",
        "half RSS",
        "all RSS",
        "RSS/stream",
        "marginal RSS",
        "marginal USS",
    ]
    print(table(headers, rows))
    if "full" in idle:
        for other in (n for n in idle if n != "full"):
            print(f"\nfull / {other} relay:")
            rows = []
            for (count, rss, _), (_, base_rss, _) in zip(
                idle["full"][1:], idle[other][1:], strict=True
            ):
                full_per = (rss - idle["full"][0][1]) / count
                relay_per = (base_rss - idle[other][0][1]) / count
                rows.append([f"per idle socket at {count}", ratio(full_per, relay_per)])
            f, r = active["full"], active[other]
            rows.append(["per active stream", ratio(f.per_stream(0), r.per_stream(0))])
            rows.append(["per active stream, marginal", ratio(f.marginal(0), r.marginal(0))])
            print(table(["", "RSS ratio"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", default="1000,5000", help="idle socket counts, ascending")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument(
        "--warm",
        type=int,
        default=10,
        help="short answers to new questions, all at once, before the streams' baseline",
    )
    parser.add_argument("--targets", default="full,raw", help="full and relays (sdk, raw)")
    parser.add_argument("--no-pin", action="store_true", help="let every process use every CPU")
    run(main(parser.parse_args()))
