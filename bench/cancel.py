"""Benchmark: how fast a stop reaches the model — `cancel` frame, clean socket close, dropped TCP
connection -> the model's HTTP stream closed, as the fake model sees it; full server against the
raw relay, at low load and under background streams.

Run: .venv/bin/python -m bench.cancel [--trials 200] [--background 100] [--workers 4]
         [--kinds cancel,close,drop] [--targets full,raw] [--no-pin]

The fake model runs in this process, so the moment it sees the hang-up and the moment the client
acted are on one clock (time.monotonic). The full server runs with RESUME_GRACE_SECONDS=0: by
design a stream whose socket went away keeps generating for the resume grace (30 s by default)
in case the reader comes back; the figure here is what it takes beyond that grace. Background
load is `run_load` with that many sockets asking back to back (100-token answers at 20 tokens/s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import os
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection

from bench.harness import (
    JWT_SECRET,
    Target,
    free_port,
    pin_self,
    raise_fd_limit,
    run,
    server_env,
    server_home,
    spawn,
    split_cores,
    tokens,
    wait_http_ok,
)
from bench.measure import LagProbe, fmt, machine_line, pct, ratio, table
from server.tools.client import open_socket, read_stream, send_ask
from server.tools.fake_llm import FakeLLM, FakeLLMConfig, StreamRecord
from server.tools.loadtest.config import LoadConfig
from server.tools.loadtest.engine import run_load

KINDS = ("cancel", "close", "drop")
TRIAL_ANSWER = "[[fake:tokens=400,tps=20]]"  # 20 s: always still streaming when stopped
DELTAS_BEFORE_STOP = 2
WAIT_CLOSED_S = 10.0
_TAG = re.compile(r"bench-trial-\d+")


class TaggedFake(FakeLLM):
    """The fake model, remembering which trial each stream belongs to (by a tag in the question)."""

    def __init__(self, config: FakeLLMConfig) -> None:
        super().__init__(config)
        self.by_tag: dict[str, StreamRecord] = {}

    def _stream_started(self, record: StreamRecord) -> None:
        # Called while the request that opened this stream is the newest one received.
        super()._stream_started(record)
        body = self.received[-1].body or {}
        for message in reversed(body.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                found = _TAG.search(str(message.get("content", "")))
                if found:
                    self.by_tag[found.group()] = record
                return


@dataclasses.dataclass(slots=True)
class Outcome:
    """Trials of one (target, load, kind)."""

    closed_ms: list[float] = dataclasses.field(default_factory=list)  # stop -> model stream closed
    done_ms: list[float] = dataclasses.field(default_factory=list)  # cancel -> done{cancelled}
    failures: int = 0


_tags = itertools.count(1)


async def trial(
    fake: TaggedFake, url: str, token: str, kind: str, ws: ClientConnection | None, out: Outcome
) -> None:
    """One ask, stopped after its second delta; records how long the model stream took to close."""
    tag = f"bench-trial-{next(_tags)}"
    own = ws is None
    if ws is None:
        ws = await open_socket(url, token)
    try:
        result = await send_ask(ws, tag, f"How is this stopped? {tag} {TRIAL_ANSWER}")
        await read_stream(ws, tag, result, until_deltas=DELTAS_BEFORE_STOP)
        record = fake.by_tag.pop(tag)
        stopped, stopped_perf = time.monotonic(), time.perf_counter()
        if kind == "cancel":
            await ws.send(b'{"type":"cancel","id":"%s"}' % tag.encode(), text=True)
        elif kind == "close":
            await ws.close()
        else:
            ws.transport.abort()
        await fake.wait_for(lambda: record.ended_at is not None, timeout=WAIT_CLOSED_S)
        assert record.ended_at is not None
        out.closed_ms.append((record.ended_at - stopped) * 1000)
        if kind == "cancel":
            await read_stream(ws, tag, result)
            if result.finish == "cancelled" and result.ended_at is not None:
                out.done_ms.append((result.ended_at - stopped_perf) * 1000)
    except (TimeoutError, KeyError, OSError) as exc:
        out.failures += 1
        print(f"  trial {tag} ({kind}) failed: {type(exc).__name__} {exc}", file=sys.stderr)
    finally:
        if own:
            await ws.close()


async def run_trials(
    fake: TaggedFake, target: Target, kind: str, trials: int, workers: int
) -> Outcome:
    """`trials` trials of one kind, `workers` at a time."""
    out = Outcome()
    token_list = await asyncio.to_thread(tokens, workers, "cancel-")
    per_worker = [trials // workers + (1 if i < trials % workers else 0) for i in range(workers)]

    async def worker(i: int) -> None:
        ws = await open_socket(target.ws_url, token_list[i]) if kind == "cancel" else None
        try:
            for _ in range(per_worker[i]):
                await trial(fake, target.ws_url, token_list[i], kind, ws, out)
        finally:
            if ws is not None:
                await ws.close()

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return out


@contextlib.asynccontextmanager
async def background(target: Target, connections: int) -> AsyncIterator[None]:
    """`connections` sockets streaming back to back until the block ends."""
    if connections == 0:
        yield
        return
    stop = asyncio.Event()
    config = LoadConfig(
        url=target.ws_url,
        connections=connections,
        duration=3600,
        ramp=2.0,
        secret=JWT_SECRET,
        user_prefix="cancel-bg-",
        grace=10.0,
    )
    load = asyncio.create_task(run_load(config, stop=stop))
    await asyncio.sleep(4.0)  # sockets open and streaming
    try:
        yield
    finally:
        stop.set()
        report = await load
        print(
            f"  background on {target.name}: {report.streams.ok} streams ok, failed {report.streams.failed}"
        )


@contextlib.asynccontextmanager
async def start_target(
    name: str, model_url: str, cpus: frozenset[int], log_dir: Path
) -> AsyncIterator[Target]:
    """The full server (resume grace 0) or a relay, as a pinned subprocess."""
    port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        if name == "full":
            home = await stack.enter_async_context(server_home())
            env = server_env(model_url, home.data_dir, home.database_url, RESUME_GRACE_SECONDS="0")
            argv = [sys.executable, "-m", "server.cli", "serve", "--port", str(port)]
            ready = f"http://127.0.0.1:{port}/readyz"
        else:
            env = dict(os.environ)
            argv = [sys.executable, "-m", "bench.relays", name, "--port", str(port)]
            argv += ["--model-url", model_url]
            ready = f"http://127.0.0.1:{port}/healthz"
        child = await spawn(f"{name}-{port}", argv, cpus=cpus, env=env, log_dir=log_dir)
        try:
            await wait_http_ok(child, ready)
            yield Target("full server" if name == "full" else f"{name} relay", port, child.pid)
        finally:
            await child.stop()


async def main(args: argparse.Namespace) -> None:
    cores = split_cores(not args.no_pin)
    pin_self(cores.client)
    raise_fd_limit(args.background * 2 + 4096)
    kinds = args.kinds.split(",")
    loads = {"low": 0, f"{args.background} bg streams": args.background}
    print(
        f"stop -> model stream closed: {args.trials} trials per cell, {args.workers} at a time;"
        f" stop after {DELTAS_BEFORE_STOP} deltas"
    )
    print(f"{cores.describe()} (the fake model runs in the load generator); {machine_line()}")
    found: dict[tuple[str, str, str], Outcome] = {}
    lags: dict[tuple[str, str], float | None] = {}
    fake = TaggedFake(FakeLLMConfig(tokens_per_answer=100, tokens_per_second=20.0))
    with tempfile.TemporaryDirectory(prefix="bench-cancel-") as tmp:
        async with fake:
            for name in args.targets.split(","):
                async with start_target(name, fake.base_url, cores.target, Path(tmp)) as target:
                    for load, connections in loads.items():
                        async with background(target, connections):
                            probe = LagProbe()
                            lag_task = asyncio.create_task(probe.run())
                            began = time.perf_counter()
                            for kind in kinds:
                                found[(name, load, kind)] = await run_trials(
                                    fake, target, kind, args.trials, args.workers
                                )
                            lag_task.cancel()
                            await asyncio.gather(lag_task, return_exceptions=True)
                            lags[(name, load)] = probe.p99_ms(began, time.perf_counter())
    rows: list[list[Any]] = []
    for (name, load, kind), out in found.items():
        rows.append(
            [
                name,
                load,
                kind,
                fmt(pct(out.closed_ms, 50), 2),
                fmt(pct(out.closed_ms, 99), 2),
                fmt(pct(out.done_ms, 50), 2) if kind == "cancel" else "",
                fmt(pct(out.done_ms, 99), 2) if kind == "cancel" else "",
                f"{len(out.closed_ms)}/{out.failures}",
                fmt(lags[(name, load)]),
            ]
        )
    print("\nms from the client's stop to the model stream closed (and to done{cancelled})")
    headers = [
        "target",
        "load",
        "stop",
        "closed p50",
        "closed p99",
        "done p50",
        "done p99",
        "ok/failed",
        "lag p99",
    ]
    print(table(headers, rows))
    print("lag p99: this process's event loop (it runs the fake model and the clients)")
    if "full" in args.targets.split(","):
        for other in (n for n in args.targets.split(",") if n != "full"):
            print(f"\nfull / {other} relay (model stream closed):")
            ratio_rows = []
            for load in loads:
                for kind in kinds:
                    f, r = found[("full", load, kind)], found[(other, load, kind)]
                    ratio_rows.append(
                        [
                            load,
                            kind,
                            ratio(pct(f.closed_ms, 50), pct(r.closed_ms, 50)),
                            ratio(pct(f.closed_ms, 99), pct(r.closed_ms, 99)),
                        ]
                    )
            print(table(["load", "stop", "p50", "p99"], ratio_rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--background", type=int, default=100, help="sockets streaming meanwhile")
    parser.add_argument("--workers", type=int, default=4, help="trials at a time")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--targets", default="full,raw", help="full and relays (sdk, raw)")
    parser.add_argument("--no-pin", action="store_true", help="let every process use every CPU")
    run(main(parser.parse_args()))
