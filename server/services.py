"""The long-lived parts of a server process, built once at start and closed at stop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

import httpx
import httpx2
import openai
import psutil
from qdrant_client import AsyncQdrantClient

from server.auth import TokenVerifier, signing_secret
from server.chapters.jobs import ChapterHub, JobShare
from server.chat.llm import ChatModel, ExtractiveModel, OpenAIChatModel
from server.chat.registry import StreamRegistry
from server.cluster.bus import CHAPTER, ERASE
from server.cluster.journal import FrameJournal
from server.cluster.limits import RateLimiter
from server.cluster.presence import Cluster
from server.errors import ChatError, ConfigError
from server.ingest.book import ingest_book
from server.readers.scope import erase_notice
from server.retrieval.embeddings import Embedder, make_embedder
from server.retrieval.retriever import Retriever
from server.retrieval.vectorstore import (
    Bm25Encoder,
    EdgeVectorStore,
    QdrantServerStore,
    VectorStore,
)
from server.settings import Settings
from server.store import Store
from server.store.embedded import EmbeddedPostgres

log = logging.getLogger(__name__)

CATALOG_REFRESH_S = 10.0


class ChapterCatalog:
    """Chapter ids → (title, url), cached in memory and refreshed on a miss at most every few seconds."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._chapters: dict[str, tuple[str, str]] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def exists(self, chapter_id: str) -> bool:
        """True when the book has this chapter."""
        if chapter_id not in self._chapters:
            await self.refresh(force=False)
        return chapter_id in self._chapters

    async def refresh(self, *, force: bool = True) -> None:
        """Reload from the database (after ingest, or on a miss)."""
        async with self._lock:
            if force or time.monotonic() - self._loaded_at >= CATALOG_REFRESH_S:
                self._chapters = await self._store.chapter_titles()
                self._loaded_at = time.monotonic()


# Connections to the model kept open between answers: a busy server reuses one per stream
# instead of a TCP (and TLS) handshake per answer.
MODEL_CONNECTIONS = httpx2.Limits(
    max_connections=4096, max_keepalive_connections=1024, keepalive_expiry=30.0
)


def openai_client(settings: Settings) -> openai.AsyncOpenAI:
    """The SDK client for the configured OpenAI-compatible server, on its aiohttp transport:
    reading a streamed answer costs 22 µs of CPU per chunk there against 54 µs on the default
    httpx2 transport (measured here, 2 × 30,000 chunks), the largest share of a token's cost."""
    return openai.AsyncOpenAI(
        api_key=settings.openai_api_key or "unused",
        base_url=settings.openai_base_url,
        timeout=openai.Timeout(settings.model_timeout_s, connect=5.0),
        max_retries=2,
        http_client=openai.DefaultAioHttpClient(limits=MODEL_CONNECTIONS),
    )


@dataclasses.dataclass(slots=True)
class Services:
    """Everything a connection needs, shared by all connections of the process."""

    settings: Settings
    store: Store
    vectors: VectorStore
    embedder: Embedder
    bm25: Bm25Encoder
    retriever: Retriever
    model: ChatModel
    verifier: TokenVerifier
    catalog: ChapterCatalog
    http: httpx.AsyncClient
    llm_client: openai.AsyncOpenAI | None = None
    embedded_pg: EmbeddedPostgres | None = None
    chapters: ChapterHub = dataclasses.field(init=False)
    registry: StreamRegistry = dataclasses.field(init=False)
    journal: FrameJournal = dataclasses.field(init=False)
    limiter: RateLimiter = dataclasses.field(init=False)
    cluster: Cluster = dataclasses.field(init=False)
    _exit: contextlib.AsyncExitStack = dataclasses.field(default_factory=contextlib.AsyncExitStack)

    @classmethod
    async def start(cls, settings: Settings, *, loopback: bool, replica: bool = False) -> Services:
        """Connect to (or start) every dependency; raise ConfigError for what cannot work.

        `replica`: one of several worker processes. The embedded Qdrant engine is single-process,
        so each worker serves from its own copy of the index the parent prepared.
        """
        async with contextlib.AsyncExitStack() as stack:
            store, embedded_pg = await connect_store(settings, stack)
            applied = await store.migrate()
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))

            http = httpx.AsyncClient()
            stack.push_async_callback(http.aclose)
            llm_client = openai_client(settings) if settings.model_configured else None
            if llm_client is not None:
                stack.push_async_callback(llm_client.close)
            embedder = embedder_for(settings, llm_client)
            stack.push_async_callback(embedder.aclose)
            vectors = await asyncio.to_thread(open_vector_store, settings, replica=replica)
            if replica and not settings.qdrant_url:
                own_copy = settings.data_dir / "replicas" / f"worker-{os.getpid()}"
                stack.push_async_callback(asyncio.to_thread, shutil.rmtree, own_copy, True)
            stack.push_async_callback(vectors.aclose)
            await vectors.open(dim=embedder.dim, embedding_model=embedder.model_name)
            bm25 = Bm25Encoder()
            catalog = ChapterCatalog(store)
            if not replica and await vectors.count() == 0:
                log.info("the vector store is empty: ingesting %s", settings.book_dir)
                await ingest_book(
                    settings.book_dir, store=store, vectors=vectors, embedder=embedder, bm25=bm25
                )
            await catalog.refresh()
            model: ChatModel
            if llm_client is not None:
                model = OpenAIChatModel(
                    llm_client,
                    settings.chat_model,
                    max_tokens=settings.max_answer_tokens,
                    first_byte_s=settings.model_timeout_s,
                )
            else:
                log.warning(
                    "no model configured (OPENAI_API_KEY / OPENAI_BASE_URL): answers are extractive"
                )
                model = ExtractiveModel()
            verifier = TokenVerifier(settings, signing_secret(settings, loopback=loopback), http)
            services = cls(
                settings=settings,
                store=store,
                vectors=vectors,
                embedder=embedder,
                bm25=bm25,
                retriever=Retriever(embedder, vectors, bm25),
                model=model,
                verifier=verifier,
                catalog=catalog,
                http=http,
                llm_client=llm_client,
                embedded_pg=embedded_pg,
            )
            stack.push_async_callback(services.stop_sessions)
            services.cluster.start(store.dsn)
            services.cluster.on(CHAPTER, services.chapters.on_notice)
            services.cluster.on(ERASE, lambda payload: erase_notice(services.registry, payload))
            services._exit = stack.pop_all()
            return services
        raise AssertionError("unreachable")

    def __post_init__(self) -> None:
        # Per-process session state; a copy made with dataclasses.replace gets its own.
        s = self.settings
        self.registry = StreamRegistry(grace_s=s.resume_grace_s, retention_s=s.resume_retention_s)
        self.journal = FrameJournal(self.store)
        self.cluster = Cluster(self.store, self.registry, self.journal, s)
        self.chapters = ChapterHub(
            JobShare(self.store, self.journal, self.cluster, s.resume_retention_s)
        )
        self.limiter = RateLimiter(self.store, s, self.cluster)

    async def stop_sessions(self) -> None:
        """End every stream (saved as interrupted) and persist every frame; idempotent."""
        await self.registry.close()
        await self.chapters.close()
        await self.journal.close()
        await self.cluster.close()

    @property
    def generative_model(self) -> ChatModel | None:
        """The configured model, or None when answers can only be extractive."""
        return self.model if self.llm_client is not None else None

    async def close(self) -> None:
        """Close everything `start` opened, in reverse order."""
        await self._exit.aclose()

    async def readiness(self) -> dict[str, str]:
        """Name → "ok" or what is wrong, for /readyz."""
        checks: dict[str, str] = {}

        async def check(name: str, probe: asyncio.Future[None] | asyncio.Task[None]) -> None:
            try:
                await asyncio.wait_for(probe, timeout=3.0)
                checks[name] = "ok"
            except ChatError as exc:
                checks[name] = exc.message
            except (TimeoutError, OSError, httpx.HTTPError, openai.APIError) as exc:
                checks[name] = f"unreachable ({type(exc).__name__})"

        probes = [
            check("database", asyncio.ensure_future(self.store.ping())),
            check("vector_store", asyncio.ensure_future(self.vectors.ping())),
        ]
        if self.llm_client is not None:
            probes.append(check("model", asyncio.ensure_future(_ping_model(self.llm_client))))
        await asyncio.gather(*probes)
        if self.llm_client is None:
            checks["model"] = "ok (extractive: no model configured)"
        return checks


async def connect_store(
    settings: Settings, stack: contextlib.AsyncExitStack
) -> tuple[Store, EmbeddedPostgres | None]:
    """Connect to DATABASE_URL, or start the embedded server; both closed by `stack`."""
    embedded_pg = None
    dsn = settings.database_url
    if dsn is None:
        embedded_pg = EmbeddedPostgres(settings.data_dir)
        dsn = await asyncio.to_thread(embedded_pg.start)
        stack.push_async_callback(asyncio.to_thread, embedded_pg.stop)
    try:
        store = await Store.connect(
            dsn, max_size=settings.database_pool_size, wait_s=settings.database_wait_s
        )
    except ChatError as exc:
        variable = "DATABASE_URL" if settings.database_url else "DATA_DIR (embedded PostgreSQL)"
        raise ConfigError(f"{variable}: cannot connect to PostgreSQL ({exc.message})") from None
    stack.push_async_callback(store.close)
    return store, embedded_pg


async def _ping_model(client: openai.AsyncOpenAI) -> None:
    await client.with_options(max_retries=0, timeout=3.0).models.list()


def embedder_for(settings: Settings, client: openai.AsyncOpenAI | None) -> Embedder:
    """The configured embedder (EMBEDDING_PROVIDER), with the model client when it is OpenAI's."""
    return make_embedder(
        settings.embedding_provider,
        openai_client=client,
        openai_model=settings.embedding_model,
        openai_dim=settings.embedding_dimensions,
        runtime=settings.embedding_runtime,
        cache_dir=settings.data_dir / "models",
    )


def open_vector_store(settings: Settings, *, replica: bool = False) -> VectorStore:
    """The embedded Qdrant engine under DATA_DIR (or a private copy of it), or a Qdrant server."""
    if settings.qdrant_url:
        # The compatibility probe runs in a thread at construction and warns if the server is down;
        # `open` checks the collection itself.
        client = AsyncQdrantClient(
            url=settings.qdrant_url, api_key=settings.qdrant_api_key, check_compatibility=False
        )
        return QdrantServerStore(client, settings.qdrant_collection)
    primary = settings.data_dir / "qdrant"
    if replica:
        return EdgeVectorStore(make_replica(primary, settings.data_dir / "replicas"))
    return EdgeVectorStore(primary)


def make_replica(primary: Path, replicas: Path) -> Path:
    """A copy of the embedded index for this process; copies of processes that died are removed."""
    replicas.mkdir(parents=True, exist_ok=True)
    for old in replicas.iterdir():
        pid = old.name.removeprefix("worker-")
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    mine = replicas / f"worker-{os.getpid()}"
    shutil.rmtree(mine, ignore_errors=True)
    shutil.copytree(primary, mine)
    return mine
