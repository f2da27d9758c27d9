"""Benchmark: the local embedder's runtimes against the numpy model, in one run.

Run: .venv/bin/python -m bench.embeddings [--book book-b] [--queries 150] [--rounds 3]
         [--concurrency 1,32,128] [--seconds 5] [--ingest numpy,onnx:1,onnx]

Queries (this process pinned to one CPU, like a server's event loop, the model on one thread):
latency of `embed_query` at batch 1, sequential distinct texts, the runtimes interleaved over
`rounds` so a noisy neighbour hits all alike; then queries/s for N concurrent callers, which the
embedder micro-batches. Ingest (every CPU): `ingest_book` of a whole corpus book into a scratch
database and an embedded vector store; the baseline is the previous commit's path, the numpy
model on one BLAS thread. Every ratio is against numpy measured in this run.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the server does (server/cli.py)

import argparse
import asyncio
import contextlib
import itertools
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.harness import code_at, run
from bench.ingest import CORPORA, ingest_once
from bench.measure import fmt, machine_busy_s, machine_line, pct, table
from server.retrieval.embeddings import LocalEmbedder
from server.retrieval.local_encoders import Runtime, all_cores
from server.tools.loadtest.config import QUESTIONS

QUERY_RUNTIMES: tuple[Runtime, ...] = ("numpy", "onnx", "onnx-int8")


def pin_every_thread(cpus: set[int]) -> None:
    """Pin the process's existing threads too (sched_setaffinity(0) moves only the caller)."""
    for task in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(task), cpus)


def busy_line() -> str:
    """Other processes using CPU over the last half second, so a disturbed run says so."""
    procs = [p for p in psutil.process_iter(["pid", "name"]) if p.pid != os.getpid()]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(0.5)
    busy = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            share = p.cpu_percent(None)
            if share >= 10.0:
                busy.append((share, f"{p.info['name']} ({p.pid}) {share:.0f}%"))
    busy.sort(reverse=True)
    return "busy: " + (", ".join(b for _, b in busy[:5]) if busy else "nothing else above 10% CPU")


def question(n: int) -> str:
    return f"{QUESTIONS[n % len(QUESTIONS)]} (asked by reader {n})"


async def latencies(
    embedders: dict[Runtime, LocalEmbedder], per_round: int, rounds: int
) -> dict[Runtime, list[float]]:
    """ms per `embed_query` of a new text, one at a time, the runtimes taking turns."""
    found: dict[Runtime, list[float]] = {r: [] for r in embedders}
    counter = itertools.count()
    for _ in range(rounds):
        for runtime, embedder in embedders.items():
            for _ in range(per_round):
                text = question(next(counter))
                began = time.perf_counter()
                await embedder.embed_query(text)
                found[runtime].append((time.perf_counter() - began) * 1000)
    return found


async def throughput(embedder: LocalEmbedder, callers: int, seconds: float, start: int) -> float:
    """Queries/s of `callers` concurrent callers asking distinct questions for `seconds`."""
    counter = itertools.count(start)
    done = 0
    end = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await embedder.embed_query(question(next(counter)))
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return done / (time.perf_counter() - began)


async def query_section(args: argparse.Namespace, cache_dir: Path) -> None:
    cpu = min(os.sched_getaffinity(0))
    pin_every_thread({cpu})
    embedders = {
        r: LocalEmbedder(runtime=r, cache_dir=cache_dir, cache_size=1) for r in QUERY_RUNTIMES
    }
    try:
        for embedder in embedders.values():
            await embedder.warm()
            await embedder.embed_query("warm-up question")
        meter = OthersMeter()
        lat = await latencies(embedders, args.queries // args.rounds, args.rounds)
        base = statistics.median(lat["numpy"])
        rows = [
            [
                r,
                len(v),
                fmt(statistics.median(v), 2),
                fmt(pct(v, 99), 2),
                f"{base / statistics.median(v):.2f}x",
            ]
            for r, v in lat.items()
        ]
        print(
            f"\nquery latency at batch 1 (embed_query, new texts), CPU {cpu} only; {others(meter)}"
        )
        print(table(["runtime", "n", "p50 ms", "p99 ms", "speed vs numpy"], rows))

        rows = []
        meter = OthersMeter()
        offset = 1_000_000
        levels = [int(c) for c in args.concurrency.split(",")]
        for callers in levels:
            rates: dict[Runtime, float] = {}
            for r, embedder in embedders.items():
                offset += 1_000_000
                rates[r] = await throughput(embedder, callers, args.seconds, offset)
            for r, rate in rates.items():
                rows.append([callers, r, fmt(rate), f"{rate / rates['numpy']:.2f}x"])
        print(
            f"\nqueries/s, micro-batched, {args.seconds:g} s per cell, CPU {cpu} only; {others(meter)}"
        )
        print(table(["callers", "runtime", "queries/s", "vs numpy"], rows))
    finally:
        for embedder in embedders.values():
            await embedder.aclose()
        pin_every_thread(set(range(os.cpu_count() or 1)))


class OthersMeter:
    """CPU seconds that other processes used between start and stop (all CPUs)."""

    def __init__(self) -> None:
        self._busy0, self._own0 = machine_busy_s(), self._own()

    @staticmethod
    def _own() -> float:
        t = psutil.Process().cpu_times()
        return float(t.user + t.system + t.children_user + t.children_system)

    def others(self) -> float:
        return max(0.0, (machine_busy_s() - self._busy0) - (self._own() - self._own0))


def others(meter: OthersMeter) -> str:
    return f"other processes used {meter.others():.1f} CPU-s meanwhile"


BASELINE_SCRIPT = """
import asyncio, sys
from pathlib import Path
from bench.ingest import ingest_once
from server.retrieval.embeddings import LocalEmbedder
import server
assert server.__file__.startswith(sys.argv[2]), server.__file__
async def main():
    embedder = LocalEmbedder()
    await embedder.warm()
    first, _ = await ingest_once(Path(sys.argv[1]), embedder)
    await embedder.aclose()
    print(first.chunks, first.points, first.seconds)
asyncio.run(main())
"""


async def ingest_at(ref: str, book: Path, tmp: Path) -> tuple[int, int, float]:
    """(chunks, points, seconds) of the first ingest by the code at git `ref` (its default embedder)."""
    async with code_at(ref, tmp) as tree:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", BASELINE_SCRIPT, str(book), str(tree)],
            cwd=tree,
            capture_output=True,
            text=True,
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(tree)},
        )
    if done.returncode != 0:
        raise RuntimeError(f"baseline at {ref} failed: {done.stderr[-2000:]}")
    chunks, points, seconds = done.stdout.split()[-3:]
    return int(chunks), int(points), float(seconds)


async def ingest_section(args: argparse.Namespace, cache_dir: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        book = tmp / args.book
        await asyncio.to_thread(shutil.copytree, CORPORA / args.book, book)
        results: list[tuple[str, int, int, int, float, float]] = []
        if args.baseline_ref:
            meter = OthersMeter()
            chunks, points, seconds = await ingest_at(args.baseline_ref, book, tmp)
            label = f"code at {args.baseline_ref} (numpy, 1 BLAS thread)"
            results.append((label, 1, chunks, points, seconds, meter.others()))
            print(f"  {label}: {seconds:.1f} s", flush=True)
        for variant in args.ingest.split(","):
            runtime, _, threads = variant.partition(":")
            count = 1 if runtime == "numpy" else int(threads) if threads else all_cores()
            embedder = LocalEmbedder(
                runtime=runtime,
                cache_dir=cache_dir,
                document_threads=count,
            )
            meter = OthersMeter()
            try:
                await embedder.warm()
                first, _ = await ingest_once(book, embedder)
            finally:
                await embedder.aclose()
            label = "numpy, 1 BLAS thread, this code" if runtime == "numpy" else variant
            results.append(
                (label, count, first.chunks, first.points, first.seconds, meter.others())
            )
            print(f"  {label}: {first.seconds:.1f} s", flush=True)
        base = results[0][2] / results[0][4]
        rows = [
            [label, threads, chunks, points, fmt(s), fmt(chunks / s, 2), f"{chunks / s / base:.2f}x",
             fmt(others, 1)]
            for label, threads, chunks, points, s, others in results
        ]  # fmt: skip
        print(f"\ningest of {args.book} whole, into empty stores, {all_cores()} CPUs available")
        print("ratio: chunks/s against the first row; others: CPU-s other processes used meanwhile")
        headers = ["embedder", "threads", "chunks", "points", "s", "chunks/s", "ratio", "others"]
        print(table(headers, rows))
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)


async def main(args: argparse.Namespace) -> None:
    print(f"{machine_line()}; {busy_line()}")
    cache_dir = Path(tempfile.mkdtemp(prefix="bench-models-"))
    try:
        began = time.perf_counter()
        # Builds and caches the graphs, as a first start does.
        await LocalEmbedder(runtime="onnx-int8", cache_dir=cache_dir).warm()
        print(f"graphs built in {time.perf_counter() - began:.1f} s (fp32 + int8, first start)")
        if args.queries:
            await query_section(args, cache_dir)
            print(busy_line())
        if args.ingest:
            await ingest_section(args, cache_dir)
        print(f"\n{machine_line().replace('at start', 'at end')}; {busy_line()}")
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--book", default="book-b")
    parser.add_argument("--queries", type=int, default=150, help="per runtime, 0 = skip")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,32,128")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--ingest", default="numpy,onnx:1,onnx", help="runtime[:threads],…")
    parser.add_argument(
        "--baseline-ref", default="", help="also ingest with the code at this git ref, first"
    )
    run(main(parser.parse_args()))
