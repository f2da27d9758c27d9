"""Benchmark: where the time to first delta goes at 1, 100 and 500 concurrent streams, full
server against the raw relay (same model client, nothing else) in the same run.

Run: .venv/bin/python -m bench.first_delta [--levels 1,100,500] [--duration 16] [--tokens 100]
         [--targets full,raw] [--no-pin]

Each socket asks distinct questions back to back (so the query embedding cache never hits) for
`duration` s; streams asked during the first `ramp` s (sockets opening) are not counted. The
fake model answers with first-token delay 0 at 20 tokens/s, `tokens` per answer (4 at level 1,
to get enough samples). The breakdown comes from `done.timings`; TTFD is measured by the client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.harness import (
    chat_server,
    fake_model,
    pin_self,
    raise_fd_limit,
    relay,
    run,
    split_cores,
    tokens,
)
from bench.measure import CpuUse, fmt, machine_line, pct, ratio, table
from server.tools.client import StreamResult, open_socket
from server.tools.client import timed_ask as ask
from server.tools.loadtest.config import QUESTIONS

SINGLE_STREAM_TOKENS = 4  # at one stream the load does not depend on answer length

# (label, how to get it from a stream) — server-side spans come from done.timings
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("client TTFD", "ttfd"),
    ("server: ask to first model chunk", "first_token_ms"),
    ("  retrieval", "retrieval_ms"),
    ("    embed", "embed_ms"),
    ("    search", "search_ms"),
    ("  database (parallel with retrieval, then begin)", "db_ms"),
    ("  before the model request", "pre_model"),
    ("  model request to first chunk", "model_first_chunk_ms"),
    ("server: first chunk to first delta sent", "server_added_ms"),
    ("wire + client (TTFD - server)", "wire"),
)


def component(result: StreamResult, key: str) -> float | None:
    """One component of a stream's TTFD, in ms."""
    t = result.timings or {}
    if key == "ttfd":
        return result.ttfd_ms
    if key == "pre_model":
        if "first_token_ms" in t and "model_first_chunk_ms" in t:
            return t["first_token_ms"] - t["model_first_chunk_ms"]
        return None
    if key == "wire":
        if result.ttfd_ms is None or "first_token_ms" not in t:
            return None
        return result.ttfd_ms - t["first_token_ms"] - t.get("server_added_ms", 0.0)
    return t.get(key)


async def drive(
    url: str, concurrency: int, duration: float, ramp: float, stream_tokens: int, level_tag: str
) -> tuple[list[StreamResult], Counter[str]]:
    """`concurrency` sockets asking back to back; the streams asked after the ramp, and errors."""
    token_list = await asyncio.to_thread(tokens, concurrency, f"ttfd-{level_tag}-")
    results: list[StreamResult] = []
    errors: Counter[str] = Counter()
    began = time.perf_counter()
    end, measure_from = began + duration, began + ramp

    async def one(i: int) -> None:
        await asyncio.sleep(ramp * i / concurrency)
        ws = await open_socket(url, token_list[i])
        try:
            k = 0
            while time.perf_counter() < end:
                k += 1
                question = (
                    f"{QUESTIONS[(i + k) % len(QUESTIONS)]} (reader {level_tag}-{i}, question {k})"
                    f" [[fake:tokens={stream_tokens}]]"
                )
                result = await ask(ws, f"s{k}", question)
                if result.finish not in ("stop", "length"):
                    errors[result.finish or "no terminal frame"] += 1
                elif result.sent_at >= measure_from:
                    results.append(result)
        finally:
            await ws.close()

    await asyncio.gather(*(one(i) for i in range(concurrency)))
    return results, errors


def breakdown(results: list[StreamResult]) -> dict[str, tuple[float | None, float | None]]:
    """p50 and p99 of every component."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for _, key in COMPONENTS:
        values = [v for r in results if (v := component(r, key)) is not None]
        out[key] = (pct(values, 50), pct(values, 99))
    return out


async def main(args: argparse.Namespace) -> None:
    levels = tuple(int(n) for n in args.levels.split(","))
    cores = split_cores(not args.no_pin)
    pin_self(cores.client)
    raise_fd_limit(max(levels) * 2 + 1024)
    print(
        f"time to first delta; fake model first-token delay 0, 20 tokens/s, {args.tokens} tokens"
        f" per answer ({SINGLE_STREAM_TOKENS} at one stream); distinct questions"
    )
    print(f"{cores.describe()}; Postgres unpinned; {machine_line()}")
    found: dict[str, dict[int, tuple[dict[str, tuple[float | None, float | None]], int, int]]] = {}
    cpu: dict[str, dict[int, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ttfd-") as tmp:
        log_dir = Path(tmp)
        async with fake_model(cores.client, log_dir, tokens=args.tokens, tps=20.0) as (url, fake):
            for name in args.targets.split(","):
                cm = (
                    chat_server(url, cores.target, log_dir)
                    if name == "full"
                    else relay(name, url, cores.target, log_dir)
                )
                async with cm as target:
                    found[name], cpu[name] = {}, {}
                    use = CpuUse({"target": target.pid, "fake": fake.pid, "client": os.getpid()})
                    for n in levels:
                        use.reset()
                        stream_tokens = SINGLE_STREAM_TOKENS if n == 1 else args.tokens
                        ramp = min(5.0, args.duration / 4) if n > 1 else 1.0
                        results, errors = await drive(
                            target.ws_url, n, args.duration, ramp, stream_tokens, f"{name}{n}"
                        )
                        found[name][n] = (breakdown(results), len(results), sum(errors.values()))
                        if errors:
                            print(f"  {name} at {n} streams: errors {dict(errors)}")
                        cpu[name][n] = use.read()
    for name, by_level in found.items():
        rows = []
        for label, key in COMPONENTS:
            if name != "full" and key not in ("ttfd", "model_first_chunk_ms", "server_added_ms"):
                continue
            row: list[object] = [label]
            for n in levels:
                p50, p99 = by_level[n][0][key]
                row += [fmt(p50), fmt(p99)]
            rows.append(row)
        rows.append(
            [
                "streams measured / errors",
                *(f"{by_level[n][1]}/{by_level[n][2]}" for n in levels for _ in (0, 1)),
            ]
        )
        for what in ("target", "fake", "client", "postgres", "other"):
            rows.append(
                [f"cpu: {what}", *(f"{cpu[name][n][what]:.0%}" for n in levels for _ in (0, 1))]
            )
        headers = ["ms", *(f"{q} @{n}" for n in levels for q in ("p50", "p99"))]
        print(f"\n{name if name == 'full' else name + ' relay'}")
        print(table(headers, rows))
    if "full" in found:
        for other in (n for n in found if n != "full"):
            print(f"\nTTFD full / {other} relay:")
            rows = []
            for n in levels:
                full_p50, full_p99 = found["full"][n][0]["ttfd"]
                base_p50, base_p99 = found[other][n][0]["ttfd"]
                rows.append([n, ratio(full_p50, base_p50), ratio(full_p99, base_p99)])
            print(table(["streams", "p50", "p99"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,100,500")
    parser.add_argument("--duration", type=float, default=16.0, help="seconds per level")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per answer above 1 stream")
    parser.add_argument("--targets", default="full,raw", help="full and relays (sdk, raw)")
    parser.add_argument("--no-pin", action="store_true", help="let every process use every CPU")
    run(main(parser.parse_args()))
