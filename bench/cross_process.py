"""Benchmark: what crossing processes costs a reader. Two `serve` processes share one Postgres;
each trial is done once within process A (the baseline) and once from A to process B:

- resume: a socket on A reads 3 deltas and closes; 0.3 s later a new socket (on A, or on B)
  resumes.
  Reported: resume sent -> first replayed frame, and the gaps between the live deltas after it
  (on B they come through the journal, flushed every 20 ms while followed, and NOTIFY).
- cancel: a stream on A is cancelled from a second socket (on A, or on B); time until the fake
  model sees its HTTP stream closed.

Run: .venv/bin/python -m bench.cross_process [--trials 20] [--background 0] [--no-pin]

The fake model runs in this process, so the client's actions and what the model sees are on one
clock. The model streams 20 tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection

from bench.cancel import TaggedFake, background
from bench.harness import (
    Target,
    free_port,
    pin_self,
    run,
    server_env,
    server_home,
    spawn,
    split_cores,
    tokens,
    wait_http_ok,
)
from bench.measure import fmt, machine_line, pct, ratio, table
from server.tools.client import open_socket
from server.tools.fake_llm import FakeLLMConfig

ANSWER = "[[fake:tokens=40,tps=20]]"  # 2 s
DELTAS_BEFORE = 3
RECONNECT_S = 0.3
_decode = msgspec.json.Decoder(dict[str, Any]).decode


async def _send(ws: ClientConnection, **frame: Any) -> None:
    await ws.send(msgspec.json.encode(frame), text=True)


async def _frames(ws: ClientConnection, sid: str, until_deltas: int | None = None) -> list[Any]:
    """(arrival time, frame) of one stream until its end, or until `until_deltas` deltas."""
    got: list[Any] = []
    while True:
        frame = _decode(await ws.recv(decode=False))
        if frame.get("id") != sid:
            continue
        got.append((time.perf_counter(), frame))
        if frame["type"] in ("done", "error"):
            return got
        if until_deltas is not None and sum(f["type"] == "delta" for _, f in got) >= until_deltas:
            return got


class Results:
    """Figures of one way (within A, or A to B)."""

    def __init__(self) -> None:
        self.resume_ms: list[float] = []
        self.gaps_ms: list[float] = []
        self.cancel_ms: list[float] = []
        self.failures = 0


async def resume_trial(a: Target, other: Target, token: str, tag: str, out: Results) -> None:
    """Read part of a stream on A, drop the socket, resume it on `other`; replay must be exact."""
    ws = await open_socket(a.ws_url, token)
    await _send(ws, type="ask", id=tag, question=f"{tag} {ANSWER}")
    head = await _frames(ws, tag, until_deltas=DELTAS_BEFORE)
    await ws.close()
    after = head[-1][1]["seq"]
    await asyncio.sleep(RECONNECT_S)  # frames generated meanwhile are replayed
    ws = await open_socket(other.ws_url, token)
    try:
        sent = time.perf_counter()
        await _send(ws, type="resume", id=tag, after_seq=after)
        rest = await _frames(ws, tag)
    finally:
        await ws.close()
    seqs = [f["seq"] for _, f in rest]
    if seqs != list(range(after + 1, after + 1 + len(seqs))) or rest[-1][1]["type"] != "done":
        out.failures += 1
        return
    out.resume_ms.append((rest[0][0] - sent) * 1000)
    # live deltas only: what was replayed arrives at once
    times = [t for t, f in rest if f["type"] == "delta" and t > sent + 0.3]
    out.gaps_ms += [(later - t) * 1000 for t, later in itertools.pairwise(times)]


async def cancel_trial(
    fake: TaggedFake, a: Target, other: Target, token: str, tag: str, out: Results
) -> None:
    """Cancel a stream generating on A from a second socket on `other`."""
    async with contextlib.AsyncExitStack() as stack:
        ws = await open_socket(a.ws_url, token)
        stack.push_async_callback(ws.close)
        canceller = await open_socket(other.ws_url, token)
        stack.push_async_callback(canceller.close)
        await _send(ws, type="ask", id=tag, question=f"{tag} {ANSWER}")
        await _frames(ws, tag, until_deltas=2)
        record = fake.by_tag.pop(tag)
        stopped = time.monotonic()
        await _send(canceller, type="cancel", id=tag)
        await fake.wait_for(lambda: record.ended_at is not None, timeout=10)
        assert record.ended_at is not None
        out.cancel_ms.append((record.ended_at - stopped) * 1000)
        end = (await _frames(ws, tag))[-1][1]
        if end.get("finish_reason") != "cancelled":
            out.failures += 1


@contextlib.asynccontextmanager
async def two_processes(
    model_url: str, cpus: frozenset[int], log_dir: Path
) -> AsyncIterator[tuple[Target, Target]]:
    """Two `serve` processes on one scratch database, each with its own copy of the index."""
    async with server_home() as home, contextlib.AsyncExitStack() as stack:
        dirs = [home.data_dir / "a", home.data_dir / "b"]
        targets = []
        for i, data in enumerate(dirs):
            if i == 1:  # A indexed the book; B serves a copy (the embedded engine is one-process)
                await asyncio.to_thread(shutil.copytree, dirs[0] / "qdrant", data / "qdrant")
            port = free_port()
            env = server_env(model_url, data, home.database_url)
            argv = [sys.executable, "-m", "server.cli", "serve", "--port", str(port)]
            child = await spawn(f"server-{'ab'[i]}", argv, cpus=cpus, env=env, log_dir=log_dir)
            stack.push_async_callback(child.stop)
            await wait_http_ok(child, f"http://127.0.0.1:{port}/readyz")
            targets.append(Target(f"process {'AB'[i]}", port, child.pid))
        yield targets[0], targets[1]


async def main(args: argparse.Namespace) -> None:
    cores = split_cores(not args.no_pin)
    pin_self(cores.client)
    print(
        f"resume and cancel within one process and across two: {args.trials} trials each,"
        f" {args.background} other sockets streaming on A"
    )
    print(f"{cores.describe()} (both servers share the target CPU); {machine_line()}")
    fake = TaggedFake(FakeLLMConfig(tokens_per_answer=40, tokens_per_second=20.0))
    found = {"within A": Results(), "A to B": Results()}
    with tempfile.TemporaryDirectory(prefix="bench-cross-") as tmp:
        async with fake, two_processes(fake.base_url, cores.target, Path(tmp)) as (a, b):
            token = (await asyncio.to_thread(tokens, 1, "cross-"))[0]
            tags = (f"bench-trial-{n}" for n in itertools.count())
            async with background(a, args.background):
                for _ in range(args.trials):
                    for way, other in (("within A", a), ("A to B", b)):
                        await resume_trial(a, other, token, next(tags), found[way])
                        await cancel_trial(fake, a, other, token, next(tags), found[way])
    rows = []
    for way, out in found.items():
        rows.append(
            [
                way,
                fmt(pct(out.resume_ms, 50)),
                fmt(pct(out.resume_ms, 95)),
                fmt(pct(out.gaps_ms, 50)),
                fmt(pct(out.gaps_ms, 99)),
                fmt(pct(out.cancel_ms, 50)),
                fmt(pct(out.cancel_ms, 95)),
                out.failures,
            ]
        )
    headers = ["", "resume p50", "resume p95", "gap p50", "gap p99", "cancel p50", "cancel p95"]
    print("\nms: resume sent -> first replayed frame; gaps between live deltas after the resume")
    print("(the model sends one every 50 ms); cancel sent -> model stream closed")
    print(table([*headers, "failed"], rows))
    w, x = found["within A"], found["A to B"]
    print(
        f"\nacross / within: resume p50 {ratio(pct(x.resume_ms, 50), pct(w.resume_ms, 50))},"
        f" gap p99 {ratio(pct(x.gaps_ms, 99), pct(w.gaps_ms, 99))},"
        f" cancel p50 {ratio(pct(x.cancel_ms, 50), pct(w.cancel_ms, 50))}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument(
        "--background", type=int, default=0, help="sockets streaming on A meanwhile"
    )
    parser.add_argument("--no-pin", action="store_true", help="let every process use every CPU")
    run(main(parser.parse_args()))
