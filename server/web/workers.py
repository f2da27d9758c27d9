"""`serve --workers N`: N server processes accepting on one socket, prepared once by a parent.

The parent starts what must exist once (the embedded PostgreSQL, migrations, the first ingest, the
local embedding graphs), binds the port, and spawns the workers; each worker builds its own
services. The embedded Qdrant engine cannot be opened by two processes, so each worker serves from
a private copy of the index (read-only in practice: ingest with the server stopped, or use a
Qdrant server via QDRANT_URL).
SIGTERM or SIGINT to the parent is passed on: every worker drains (see serve.DrainingServer).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
from types import FrameType

import uvicorn

from server.settings import Settings
from server.store.embedded import EmbeddedPostgres

log = logging.getLogger(__name__)


def serve_workers(settings: Settings, host: str, port: int, workers: int, *, loopback: bool) -> int:
    """Run `workers` server processes on host:port until SIGTERM/SIGINT; returns the exit status."""
    embedded = None
    if settings.database_url is None:
        embedded = EmbeddedPostgres(settings.data_dir)
        os.environ["DATABASE_URL"] = embedded.start()  # the workers inherit it
        settings = Settings.from_env()
    try:
        asyncio.run(_prepare(settings, loopback))
        sock = uvicorn.Config("server.web.app:create_app", host=host, port=port).bind_socket()
        context = multiprocessing.get_context("spawn")
        processes = [
            context.Process(
                target=_worker, args=(host, port, sock, loopback, i), name=f"worker-{i}"
            )
            for i in range(workers)
        ]
        for process in processes:
            process.start()
        # Each worker has its own descriptor of the socket now. Kept open here, it would keep
        # the port accepting after SIGTERM, when every worker has stopped listening to drain:
        # connections would wait unanswered in the backlog instead of being refused (which a
        # proxy retries on another node).
        sock.close()
        log.info("serving on %s:%d with %d workers", host, port, workers)

        def forward(signum: int, _frame: FrameType | None) -> None:
            for process in processes:
                if process.pid is not None and process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        for process in processes:
            process.join()
        # uvicorn re-raises SIGTERM in a worker once it has drained: that is a clean stop
        failures = [p.exitcode for p in processes if p.exitcode not in (0, -signal.SIGTERM, None)]
        return 1 if failures else 0
    finally:
        if embedded is not None:
            embedded.stop()


async def _prepare(settings: Settings, loopback: bool) -> None:
    """Migrate, ingest the book if the index is empty, and build the local embedding graphs,
    once for all workers."""
    from server.retrieval.embeddings import LocalEmbedder
    from server.services import Services

    services = await Services.start(settings, loopback=loopback)
    try:
        if isinstance(services.embedder, LocalEmbedder):
            # Otherwise every worker builds the same ONNX graphs at its first question.
            await services.embedder.warm()
    finally:
        await services.close()


def _worker(host: str, port: int, sock: socket.socket, loopback: bool, index: int) -> None:
    from server.cli import configure_logging, run_coroutine

    settings = Settings.from_env()
    configure_logging(settings)
    from server.web.serve import run

    run_coroutine(
        run(settings, host, port, loopback=loopback, replica=True, sock=sock, worker=index)
    )
