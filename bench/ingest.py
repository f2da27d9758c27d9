"""Benchmark: ingest throughput on the two real books, and query-embedding throughput under
concurrency, with the local embedder (default runtime), on one CPU like a pinned server.
Runtimes compared with each other and ingest on every core: bench/embeddings.py.

Run: .venv/bin/python -m bench.ingest [--books book-a,book-b] [--docs 4] [--concurrency 1,8,32,128]
         [--seconds 6] [--baseline-points 128] [--no-pin]

Ingest: `server.ingest.book.ingest_book` into a scratch database and an EdgeVectorStore in a temporary
directory, of the first `docs` doc files of each book (0 = the whole book; a whole book takes
about four minutes on one CPU, almost all of it embedding); the baseline is `embed_documents` alone on the first `baseline-points` texts of the same
book, so the ratio says what ingest costs beyond embedding. A second ingest of the unchanged book
shows the cost of the idempotent path. Queries: N concurrent callers of `embed_query`, every text
distinct (no cache hits), for `seconds` each; the baseline is one caller.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the server does (server/cli.py)

import argparse
import asyncio
import contextlib
import itertools
import shutil
import tempfile
import time
from pathlib import Path

from bench.harness import pin_self, run, scratch_database
from bench.measure import LagProbe, fmt, machine_line, pct, table
from server.ingest.book import IngestReport, ingest_book
from server.ingest.indexing import index_units
from server.ingest.markdown.document import chunk_chapter, load_book
from server.retrieval.embeddings import LocalEmbedder
from server.retrieval.vectorstore import Bm25Encoder, EdgeVectorStore
from server.store import Store
from server.tools.loadtest.config import QUESTIONS

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def book_copy(book: Path, docs: int, into: Path) -> Path:
    """A copy of the book with only its first `docs` doc files (sorted paths; 0 = all)."""
    copy = into / book.name
    shutil.copytree(book, copy)
    if docs > 0:
        found = sorted(p for p in copy.rglob("*") if p.suffix in (".md", ".mdx"))
        for path in found[docs:]:
            path.unlink()
    return copy


async def ingest_once(book: Path, embedder: LocalEmbedder) -> tuple[IngestReport, IngestReport]:
    """A first ingest into empty stores, then a second one of the unchanged book."""
    async with scratch_database("bench_ingest") as dsn:
        store = await Store.connect(dsn)
        try:
            await store.migrate()
            with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
                vectors = EdgeVectorStore(Path(tmp) / "qdrant")
                await vectors.open(dim=embedder.dim, embedding_model=embedder.model_name)
                try:
                    bm25 = Bm25Encoder()
                    first = await ingest_book(
                        book, store=store, vectors=vectors, embedder=embedder, bm25=bm25
                    )
                    again = await ingest_book(
                        book, store=store, vectors=vectors, embedder=embedder, bm25=bm25
                    )
                finally:
                    await vectors.aclose()
        finally:
            await store.close()
    return first, again


def unit_texts(book: Path) -> list[str]:
    """The texts ingest embeds for this book, in order."""
    return [u.text for ch in load_book(book) for c in chunk_chapter(ch) for u in index_units(c)]


async def embed_only(texts: list[str], embedder: LocalEmbedder) -> float:
    """Points per second of `embed_documents` alone."""
    began = time.perf_counter()
    await embedder.embed_documents(texts)
    return len(texts) / (time.perf_counter() - began)


async def queries(
    embedder: LocalEmbedder, callers: int, seconds: float, texts: itertools.count[int]
) -> tuple[float, float | None, float | None]:
    """(queries/s, p50 ms, p99 ms) of `callers` concurrent callers of distinct queries."""
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < end:
            n = next(texts)
            text = f"{QUESTIONS[n % len(QUESTIONS)]} (asked by reader {n})"
            began = time.perf_counter()
            await embedder.embed_query(text)
            latencies.append((time.perf_counter() - began) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    wall = time.perf_counter() - began
    return len(latencies) / wall, pct(latencies, 50), pct(latencies, 99)


async def main(args: argparse.Namespace) -> None:
    if not args.no_pin:
        pin_self(frozenset({min(os.sched_getaffinity(0))}))
    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    tmp = tempfile.mkdtemp(prefix="bench-books-")
    # Graphs built in the scratch directory (before anything is timed), not the default DATA_DIR.
    embedder = LocalEmbedder(cache_size=16, cache_dir=Path(tmp) / "models")
    print(f"local embedder ({embedder.runtime}) on CPU {cpus}; {machine_line()}")
    try:
        await embedder.warm()
        rows = []
        for name in args.books.split(","):
            book = await asyncio.to_thread(book_copy, CORPORA / name, args.docs, Path(tmp))
            texts = await asyncio.to_thread(unit_texts, book)
            baseline = await embed_only(texts[: args.baseline_points], embedder)
            first, again = await ingest_once(book, embedder)
            points_per_s = first.points / first.seconds
            rows.append(
                [
                    name,
                    first.chapters,
                    first.chunks,
                    first.points,
                    fmt(first.seconds),
                    fmt(first.chunks / first.seconds),
                    fmt(points_per_s),
                    fmt(baseline),
                    f"{points_per_s / baseline:.2f}x",
                    fmt(again.seconds, 2),
                ]
            )
        which = "whole books" if args.docs == 0 else f"first {args.docs} doc files of each book"
        print(f"\ningest, {which} (into empty stores; again = the unchanged docs once more)")
        headers = [
            "book",
            "chapters",
            "chunks",
            "points",
            "seconds",
            "chunks/s",
            "points/s",
            "embed-only points/s",
            "ingest/embed-only",
            "again s",
        ]
        print(table(headers, rows))

        counter = itertools.count()
        rows = []
        base: float | None = None
        for callers in (int(c) for c in args.concurrency.split(",")):
            before = (embedder.stats.query_batches, embedder.stats.queries_encoded)
            probe = LagProbe()
            lag_task = asyncio.create_task(probe.run())
            began = time.perf_counter()
            rate, p50, p99 = await queries(embedder, callers, args.seconds, counter)
            lag_task.cancel()
            await asyncio.gather(lag_task, return_exceptions=True)
            batches = embedder.stats.query_batches - before[0]
            encoded = embedder.stats.queries_encoded - before[1]
            base = base or rate
            rows.append(
                [
                    callers,
                    fmt(rate),
                    f"{rate / base:.2f}x",
                    fmt(p50),
                    fmt(p99),
                    fmt(encoded / batches if batches else None),
                    fmt(probe.p99_ms(began, time.perf_counter())),
                ]
            )
        print(f"\nquery embedding, distinct texts, {args.seconds:g} s per level")
        headers = ["callers", "queries/s", "vs 1 caller", "p50 ms", "p99 ms", "batch", "lag p99"]
        print(table(headers, rows))
        print("batch: queries per forward pass; lag: this event loop's lateness (same CPU)")
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)
        with contextlib.suppress(Exception):
            await embedder.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--books", default="book-a,book-b")
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--seconds", type=float, default=6.0, help="per concurrency level")
    parser.add_argument("--docs", type=int, default=4, help="doc files per book (0 = all)")
    parser.add_argument("--baseline-points", type=int, default=128)
    parser.add_argument("--no-pin", action="store_true", help="use every CPU")
    run(main(parser.parse_args()))
