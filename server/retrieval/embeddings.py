"""Text embedders behind one protocol: local all-MiniLM-L6-v2 (ONNX Runtime or numpy), or an OpenAI-style API."""

from __future__ import annotations

import asyncio
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import openai
from openai import AsyncOpenAI

from server.errors import ConfigError, RetrievalUnavailable, UpstreamUnavailable
from server.retrieval.local_encoders import Runtime, SentenceEncoder, all_cores, load_encoder
from server.retrieval.minilm import MiniLMEncoder

__all__ = [
    "DEFAULT_OPENAI_MODEL",
    "LOCAL_MODEL_NAME",
    "OPENAI_MODEL_DIMS",
    "Embedder",
    "LocalEmbedder",
    "LocalEmbedderStats",
    "MiniLMEncoder",
    "OpenAIEmbedder",
    "make_embedder",
]

LOCAL_MODEL_NAME = "local/all-MiniLM-L6-v2"
DEFAULT_OPENAI_MODEL = "text-embedding-3-small"
OPENAI_MODEL_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
# The SDK already retries these itself; after that they are still worth a retry later.
_TRANSIENT_HTTP_STATUSES = frozenset({408, 409, 429})


class Embedder(Protocol):
    """Async text embedding; `model_name` is recorded with the vectors it produced."""

    model_name: str
    dim: int

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...

    async def embed_query(self, text: str) -> list[float]: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class LocalEmbedderStats:
    """Counters for the local embedder, for logs and tests."""

    cache_hits: int = 0
    cache_misses: int = 0
    query_batches: int = 0
    queries_encoded: int = 0
    documents_encoded: int = 0


def _encode_to_lists(
    encoder: SentenceEncoder, texts: list[str], batch_size: int
) -> list[list[float]]:
    # tolist() of a large matrix is slow enough that it belongs in the worker thread too.
    result: list[list[float]] = encoder.encode(texts, batch_size).tolist()
    return result


class LocalEmbedder(Embedder):
    """MiniLM in worker threads, with an LRU query cache and micro-batched concurrent queries."""

    dim = 384

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        runtime: Runtime = "onnx-int8",
        cache_dir: Path | None = None,
        encoder: SentenceEncoder | None = None,
        document_threads: int | None = None,
        cache_size: int = 2048,
        max_query_batch: int = 32,
        document_batch_size: int = 32,
    ) -> None:
        self._model_dir = model_dir
        self.runtime: Runtime = runtime
        self._cache_dir = cache_dir
        # Queries run on one thread (a serving process's event loop owns the other core);
        # documents, embedded only by ingest, on every core unless told otherwise.
        self._document_threads = document_threads if document_threads is not None else all_cores()
        # Documents are always the fp32 model (numpy or ONNX: the same vectors), so an index
        # built by either is valid with both; int8 is for queries only.
        self.model_name = LOCAL_MODEL_NAME
        self._document_encoder = encoder
        self._cache_size = cache_size
        self._max_query_batch = max_query_batch
        self._document_batch_size = document_batch_size
        self._encoder = encoder  # an already loaded model may be shared between embedders
        self._load_lock = asyncio.Lock()
        # float32, as the model made them: 1.5 KiB a query where a list of floats took 12
        self._cache: OrderedDict[str, array[float]] = OrderedDict()
        # Queries waiting for or inside a forward pass; identical texts share one future.
        self._in_flight: dict[str, asyncio.Future[list[float]]] = {}
        self._queued: list[str] = []
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self.stats = LocalEmbedderStats()

    async def warm(self) -> SentenceEncoder:
        """Load the query model (once, in a thread) and return it."""
        if self._encoder is None:
            async with self._load_lock:
                if self._encoder is None:
                    self._encoder = await asyncio.to_thread(self._load, "queries", 1)
        return self._encoder

    async def _documents(self) -> SentenceEncoder:
        """The document model: the query one when it already runs on every thread it may."""
        if self._document_encoder is None:
            queries = await self.warm()
            async with self._load_lock:
                if self._document_encoder is None:
                    same = self._document_threads == 1 and self.runtime != "onnx-int8"
                    self._document_encoder = (
                        queries
                        if same or isinstance(queries, MiniLMEncoder)
                        else await asyncio.to_thread(
                            self._load, "documents", self._document_threads
                        )
                    )
        return self._document_encoder

    def _load(self, purpose: Literal["queries", "documents"], threads: int) -> SentenceEncoder:
        return load_encoder(
            self.runtime,
            purpose=purpose,
            model_dir=self._model_dir,
            cache_dir=self._cache_dir,
            threads=threads,
        )

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed many texts in batches, off the event loop."""
        self._check_open()
        if not texts:
            return []
        encoder = await self._documents()
        vectors = await asyncio.to_thread(
            _encode_to_lists, encoder, list(texts), self._document_batch_size
        )
        self.stats.documents_encoded += len(texts)
        return vectors

    async def embed_query(self, text: str) -> list[float]:
        """Embed one query, from the cache or in the next shared forward pass."""
        self._check_open()
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            self.stats.cache_hits += 1
            return cached.tolist()
        self.stats.cache_misses += 1
        future = self._in_flight.get(text)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._in_flight[text] = future
            self._queued.append(text)
            if self._worker is None or self._worker.done():
                self._worker = asyncio.create_task(self._run_query_batches())
        # Shielded so one caller's cancellation does not fail others waiting on the same text.
        return list(await asyncio.shield(future))

    async def aclose(self) -> None:
        """Stop the query worker and fail queries still waiting."""
        self._closed = True
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            await asyncio.wait([self._worker])
        self._fail_waiting(RetrievalUnavailable("embedder is shutting down"))

    async def _run_query_batches(self) -> None:
        try:
            encoder = await self.warm()
            while self._queued:
                batch = self._queued[: self._max_query_batch]
                del self._queued[: self._max_query_batch]
                try:
                    vectors = await asyncio.to_thread(_encode_to_lists, encoder, batch, len(batch))
                except Exception as exc:
                    self._settle(batch, exc)
                    continue
                self.stats.query_batches += 1
                self.stats.queries_encoded += len(batch)
                for text, vector in zip(batch, vectors, strict=True):
                    self._remember(text, vector)
                self._settle(batch, vectors)
        except Exception as exc:  # e.g. the model failed to load: every waiter sees why
            self._fail_waiting(exc)
        except BaseException:
            self._fail_waiting(RetrievalUnavailable("embedder is shutting down"))
            raise

    def _settle(self, batch: list[str], outcome: list[list[float]] | Exception) -> None:
        for i, text in enumerate(batch):
            future = self._in_flight.pop(text, None)
            if future is None or future.done():
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome[i])

    def _fail_waiting(self, error: Exception) -> None:
        self._queued.clear()
        for future in self._in_flight.values():
            if not future.done():
                future.set_exception(error)
        self._in_flight.clear()

    def _remember(self, text: str, vector: list[float]) -> None:
        self._cache[text] = array("f", vector)
        self._cache.move_to_end(text)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _check_open(self) -> None:
        if self._closed:
            raise RetrievalUnavailable("embedder is shutting down")


class OpenAIEmbedder(Embedder):
    """An OpenAI-compatible /v1/embeddings endpoint through an injected AsyncOpenAI client."""

    def __init__(
        self,
        client: AsyncOpenAI,
        *,
        model: str = DEFAULT_OPENAI_MODEL,
        dim: int = OPENAI_MODEL_DIMS[DEFAULT_OPENAI_MODEL],
        batch_size: int = 128,
    ) -> None:
        self._client = client
        self._model = model
        self._batch_size = batch_size
        self.model_name = f"openai/{model}"
        self.dim = dim

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed many texts, `batch_size` per request."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            vectors.extend(await self._request(list(texts[start : start + self._batch_size])))
        return vectors

    async def embed_query(self, text: str) -> list[float]:
        """Embed one query with one request."""
        return (await self._request([text]))[0]

    async def aclose(self) -> None:
        """Nothing to release: the injected client belongs to whoever made it."""

    async def _request(self, texts: list[str]) -> list[list[float]]:
        try:
            # "float" explicitly: the SDK's default base64 is not spoken by every compatible server.
            response = await self._client.embeddings.create(
                model=self._model, input=texts, encoding_format="float"
            )
        except openai.APIStatusError as exc:
            status = exc.status_code
            raise UpstreamUnavailable(
                f"embedding service answered HTTP {status}",
                retryable=status in _TRANSIENT_HTTP_STATUSES or status >= 500,
            ) from exc
        except openai.APIConnectionError as exc:
            raise UpstreamUnavailable("embedding service unreachable", retryable=True) from exc
        except openai.APIError as exc:
            raise UpstreamUnavailable(
                "embedding service sent a bad reply", retryable=False
            ) from exc
        rows = sorted(response.data, key=lambda row: row.index)
        if len(rows) != len(texts) or any(len(row.embedding) != self.dim for row in rows):
            raise UpstreamUnavailable(
                f"embedding service returned vectors that are not {len(texts)} x {self.dim}",
                retryable=False,
            )
        return [list(row.embedding) for row in rows]


def make_embedder(
    provider: str,
    *,
    openai_client: AsyncOpenAI | None,
    openai_model: str | None,
    openai_dim: int | None = None,
    runtime: Runtime = "onnx-int8",
    cache_dir: Path | None = None,
) -> Embedder:
    """Build the embedder for provider "local" (on `runtime`, graphs under `cache_dir`) or "openai"."""
    if provider == "local":
        return LocalEmbedder(runtime=runtime, cache_dir=cache_dir)
    if provider != "openai":
        raise ConfigError(f"embedding provider must be 'local' or 'openai', not {provider!r}")
    if openai_client is None:
        raise ConfigError("embedding provider 'openai' needs an OpenAI client (API key / base URL)")
    model = openai_model or DEFAULT_OPENAI_MODEL
    dim = openai_dim if openai_dim is not None else OPENAI_MODEL_DIMS.get(model)
    if dim is None:
        raise ConfigError(f"embedding dimension of model {model!r} is unknown; set it explicitly")
    return OpenAIEmbedder(openai_client, model=model, dim=dim)
