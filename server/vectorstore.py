"""Chunk index: one hybrid (dense + BM25, score-fused) search interface over two Qdrant engines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
import msgspec
import qdrant_edge as qe
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from server.errors import EmbeddingMismatch, RetrievalUnavailable

DENSE_VECTOR = "dense"
SPARSE_VECTOR = "bm25"
CHAPTER_FIELD = "chapter_id"
# BM25's pull against cosine similarity: the best keyword match of a query gets this much on top
# of its dense score. Dense scores of plausible passages spread over ~0.1 with MiniLM, so keywords
# reorder close calls without overruling a clearly better meaning match (eval/retrieval.jsonl:
# 0.08-0.12 score alike; RRF, which drops the score gaps, did worse on paraphrased questions).
KEYWORD_WEIGHT = 0.1
CANDIDATES = 40  # nearest points taken from each retriever before fusing
EDGE_INFO_FILE = "collection.json"
SCROLL_PAGE = 1024
# Keeps each upsert request well under the server's default 32 MiB body limit.
UPSERT_BATCH = 256


class ChunkPoint(msgspec.Struct, frozen=True, kw_only=True):
    """One chunk as stored: deterministic UUID, dense embedding, BM25 document vector, payload."""

    id: str
    dense: list[float]
    sparse_indices: list[int]
    sparse_values: list[float]
    payload: dict[str, Any]


class Hit(msgspec.Struct, frozen=True):
    """One search result; `score` is the retriever's own score, or the fused score (see fuse)."""

    id: str
    score: float
    payload: dict[str, Any]


class VectorStore(Protocol):
    """The chunk index the server and the ingester use, whatever engine sits behind it."""

    async def open(self, *, dim: int, embedding_model: str) -> None: ...
    async def recreate(self, *, dim: int, embedding_model: str) -> None: ...
    async def upsert(self, points: Sequence[ChunkPoint]) -> None: ...
    async def delete(self, ids: Sequence[str]) -> None: ...
    async def content_hashes(self, chapter_ids: Sequence[str] | None = None) -> dict[str, str]: ...
    async def search(
        self,
        *,
        dense: Sequence[float],
        sparse_indices: Sequence[int],
        sparse_values: Sequence[float],
        limit: int,
        chapter_id: str | None = None,
        candidates: int = CANDIDATES,
    ) -> list[Hit]: ...
    async def count(self) -> int: ...
    async def ping(self) -> None: ...
    async def aclose(self) -> None: ...


class Bm25Encoder:
    """English BM25 sparse vectors (stemmed, stopwords dropped); the engine applies IDF."""

    def __init__(self, *, avg_len: float = 256.0) -> None:
        self._model = qe.Bm25(
            qe.Bm25Config(
                avg_len=avg_len,
                language="english",
                stopwords=qe.Language.English,
                stemmer=qe.SnowballParams(qe.SnowballLanguage.English),
            )
        )

    def encode_document(self, text: str) -> tuple[list[int], list[float]]:
        """Term-frequency (BM25 k/b/avg_len) weights of the document's tokens."""
        vector = self._model.embed_document(text)
        return list(vector.indices), list(vector.values)

    def encode_query(self, text: str) -> tuple[list[int], list[float]]:
        """Weight 1.0 for each distinct query token."""
        vector = self._model.embed_query(text)
        return list(vector.indices), list(vector.values)


def fuse(dense: Sequence[Hit], sparse: Sequence[Hit], limit: int) -> list[Hit]:
    """Points of both candidate lists by fused score, best first.

    fused = (cosine - weakest dense candidate's cosine) + KEYWORD_WEIGHT * BM25 / best BM25.
    A point that only BM25 found is scored as if at the weakest dense candidate (its cosine is
    at most that), so every fused score is >= 0 and a point found by both retrievers leads.
    """
    floor = min((h.score for h in dense), default=0.0)
    best_bm25 = max((h.score for h in sparse), default=0.0)
    fused = {h.id: (h.score - floor, h.payload) for h in dense}
    for h in sparse:
        keyword = KEYWORD_WEIGHT * h.score / best_bm25 if best_bm25 > 0 else 0.0
        score, payload = fused.get(h.id, (0.0, h.payload))
        fused[h.id] = (score + keyword, payload)
    ranked = sorted(fused.items(), key=lambda item: item[1][0], reverse=True)[:limit]
    return [Hit(id=pid, score=score, payload=payload) for pid, (score, payload) in ranked]


class _BuiltBy(msgspec.Struct, frozen=True):
    """Which embedding model and dimension an index was built with."""

    embedding_model: str
    dim: int


def _mismatch(where: str, built: _BuiltBy | None, wanted: _BuiltBy) -> EmbeddingMismatch:
    was = f"{built.embedding_model!r} (dim {built.dim})" if built else "an unknown embedding model"
    return EmbeddingMismatch(
        f"vector index {where} was built by {was} but the configured model is "
        f"{wanted.embedding_model!r} (dim {wanted.dim}); re-ingest with "
        "`textbook-chat ingest --recreate PATH` or change EMBEDDING_PROVIDER back"
    )


class EdgeVectorStore:
    """Chunk index in an embedded Qdrant Edge shard; the store owns the directory `path`.

    Single process only: the shard takes an exclusive lock on its WAL, so a second process (or a
    second store on the same path) cannot open it. EdgeShard may be shared between threads and
    releases the GIL while it works, so reads run concurrently in worker threads; writes and
    open/close are serialised by a lock so every write is flushed before the next one starts.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._shard: qe.EdgeShard | None = None
        self._write_lock = threading.Lock()

    async def open(self, *, dim: int, embedding_model: str) -> None:
        """Load the shard, creating it if missing; refuse one built by another model or dim."""
        await asyncio.to_thread(self._open_sync, _BuiltBy(embedding_model, dim), recreate=False)

    async def recreate(self, *, dim: int, embedding_model: str) -> None:
        """Delete the shard and start an empty one."""
        await asyncio.to_thread(self._open_sync, _BuiltBy(embedding_model, dim), recreate=True)

    async def upsert(self, points: Sequence[ChunkPoint]) -> None:
        """Insert or replace points, then flush."""
        if points:
            await asyncio.to_thread(self._upsert_sync, points)

    async def delete(self, ids: Sequence[str]) -> None:
        """Delete points by id, then flush."""
        if ids:
            await asyncio.to_thread(self._write_sync, qe.UpdateOperation.delete_points(list(ids)))

    async def content_hashes(self, chapter_ids: Sequence[str] | None = None) -> dict[str, str]:
        """Map point id to payload content_hash, optionally only for some chapters."""
        return await asyncio.to_thread(self._content_hashes_sync, chapter_ids)

    async def search(
        self,
        *,
        dense: Sequence[float],
        sparse_indices: Sequence[int],
        sparse_values: Sequence[float],
        limit: int,
        chapter_id: str | None = None,
        candidates: int = CANDIDATES,
    ) -> list[Hit]:
        """Hybrid search: dense and BM25 nearest points, each filtered by chapter, then fused."""
        chapter_filter = (
            qe.Filter(must=[qe.FieldCondition(key=CHAPTER_FIELD, match=qe.MatchValue(chapter_id))])
            if chapter_id is not None
            else None
        )
        queries = [
            qe.QueryRequest(
                limit=candidates,
                query=qe.Query.Nearest(list(dense), using=DENSE_VECTOR),
                filter=chapter_filter,
                with_payload=True,
            )
        ]
        if sparse_indices:
            sparse = qe.SparseVector(list(sparse_indices), list(sparse_values))
            queries.append(
                qe.QueryRequest(
                    limit=candidates,
                    query=qe.Query.Nearest(sparse, using=SPARSE_VECTOR),
                    filter=chapter_filter,
                    with_payload=True,
                )
            )
        found = await asyncio.to_thread(self._query_sync, qe.QueryBatchRequest(queries))
        return fuse(found[0], found[1] if len(found) > 1 else [], limit)

    async def count(self) -> int:
        """Exact number of stored points."""
        return await asyncio.to_thread(self._count_sync)

    async def ping(self) -> None:
        """Raise RetrievalUnavailable unless the shard is open and answers."""
        await asyncio.to_thread(self._count_sync)

    async def aclose(self) -> None:
        """Flush and close the shard; safe to call twice."""
        await asyncio.to_thread(self._close_sync)

    def _open_sync(self, wanted: _BuiltBy, *, recreate: bool) -> None:
        with self._write_lock:
            self._close_locked()
            if recreate:
                shutil.rmtree(self._path, ignore_errors=True)
            info_file = self._path / EDGE_INFO_FILE
            shard_exists = (self._path / "edge_config.json").exists()
            if info_file.exists() or shard_exists:
                built = _read_built_by(info_file)
                if built != wanted:
                    raise _mismatch(str(self._path), built, wanted)
            else:
                # Written before the shard so a crash in between leaves a recoverable state.
                self._path.mkdir(parents=True, exist_ok=True)
                _write_atomically(info_file, msgspec.json.encode(wanted))
            with self._edge_failures():
                if shard_exists:
                    shard = qe.EdgeShard.load(str(self._path))
                else:
                    shard = qe.EdgeShard.create(str(self._path), _edge_config(wanted.dim))
                shard.update(
                    qe.UpdateOperation.create_field_index(
                        CHAPTER_FIELD, qe.PayloadSchemaType.Keyword
                    )
                )
            self._shard = shard

    def _upsert_sync(self, points: Sequence[ChunkPoint]) -> None:
        # Converting to edge points copies every vector, so it stays off the event loop too.
        self._write_sync(qe.UpdateOperation.upsert_points([_edge_point(p) for p in points]))

    def _write_sync(self, operation: qe.UpdateOperation) -> None:
        with self._write_lock:
            shard = self._require_shard()
            with self._edge_failures():
                shard.update(operation)
                shard.flush()

    def _query_sync(self, batch: qe.QueryBatchRequest) -> list[list[Hit]]:
        shard = self._require_shard()
        with self._edge_failures():
            results = shard.query_batch(batch)
        return [
            [
                Hit(id=str(point.id), score=float(point.score), payload=dict(point.payload or {}))
                for point in points
            ]
            for points in results
        ]

    def _content_hashes_sync(self, chapter_ids: Sequence[str] | None) -> dict[str, str]:
        shard = self._require_shard()
        chapter_filter = (
            qe.Filter(
                must=[qe.FieldCondition(key=CHAPTER_FIELD, match=qe.MatchAny(list(chapter_ids)))]
            )
            if chapter_ids is not None
            else None
        )
        hashes: dict[str, str] = {}
        offset: qe.PointId | None = None
        while True:
            request = qe.ScrollRequest(
                offset=offset,
                limit=SCROLL_PAGE,
                filter=chapter_filter,
                with_payload=qe.PayloadSelector.Include(["content_hash"]),
                with_vector=False,
            )
            with self._edge_failures():
                records, offset = shard.scroll(request)
            for record in records:
                hashes[str(record.id)] = str((record.payload or {}).get("content_hash", ""))
            if offset is None:
                return hashes

    def _count_sync(self) -> int:
        shard = self._require_shard()
        with self._edge_failures():
            return shard.count(qe.CountRequest(exact=True))

    def _close_sync(self) -> None:
        with self._write_lock:
            self._close_locked()

    def _close_locked(self) -> None:
        shard, self._shard = self._shard, None
        if shard is not None:
            with self._edge_failures():
                shard.flush()
                shard.close()

    def _require_shard(self) -> qe.EdgeShard:
        shard = self._shard
        if shard is None:
            raise RetrievalUnavailable(f"edge vector index {self._path} is not open")
        return shard

    @contextlib.contextmanager
    def _edge_failures(self) -> Iterator[None]:
        # qdrant_edge raises bare Exception for everything (I/O, locked WAL, closed shard).
        try:
            yield
        except Exception as exc:
            raise RetrievalUnavailable(f"edge vector index {self._path}: {exc}") from exc


def _edge_config(dim: int) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors={DENSE_VECTOR: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)},
        sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
    )


def _edge_point(point: ChunkPoint) -> qe.Point:
    vectors: dict[str, qe.NamedVector] = {
        DENSE_VECTOR: point.dense,
        SPARSE_VECTOR: qe.SparseVector(point.sparse_indices, point.sparse_values),
    }
    return qe.Point(point.id, vectors, point.payload)


def _read_built_by(info_file: Path) -> _BuiltBy | None:
    """The recorded model and dim, or None when the record is missing or unreadable."""
    try:
        return msgspec.json.decode(info_file.read_bytes(), type=_BuiltBy)
    except (OSError, msgspec.DecodeError):
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_bytes(data)
    os.replace(partial, path)


class QdrantServerStore:
    """Chunk index in a Qdrant server collection (or qdrant-client's local mode in tests).

    The store owns `client` and closes it in aclose(). The embedding model and dim are kept in
    the collection's metadata. Local mode does its (brute-force) work on the event loop, which
    is acceptable only because it stands in for the server in tests.
    """

    def __init__(self, client: AsyncQdrantClient, collection: str = "textbook_chunks") -> None:
        self._client = client
        self._collection = collection
        self._closed = False
        options = client.init_options
        self._local = options.get("location") == ":memory:" or options.get("path") is not None

    async def open(self, *, dim: int, embedding_model: str) -> None:
        """Create the collection if missing; refuse one built by another model or dim."""
        wanted = _BuiltBy(embedding_model, dim)
        async with self._failures():
            if not await self._client.collection_exists(self._collection):
                await self._create(wanted)
                return
            info = await self._client.get_collection(self._collection)
        built = _built_by(info)
        if built != wanted:
            raise _mismatch(f"collection {self._collection!r}", built, wanted)

    async def recreate(self, *, dim: int, embedding_model: str) -> None:
        """Drop the collection and create it empty."""
        async with self._failures():
            if await self._client.collection_exists(self._collection):
                await self._client.delete_collection(self._collection)
            await self._create(_BuiltBy(embedding_model, dim))

    async def upsert(self, points: Sequence[ChunkPoint]) -> None:
        """Insert or replace points, waiting until they are searchable."""
        for start in range(0, len(points), UPSERT_BATCH):
            batch = [_server_point(point) for point in points[start : start + UPSERT_BATCH]]
            async with self._failures():
                await self._client.upsert(self._collection, batch, wait=True)

    async def delete(self, ids: Sequence[str]) -> None:
        """Delete points by id."""
        if ids:
            selector = models.PointIdsList(points=list(ids))
            async with self._failures():
                await self._client.delete(self._collection, selector, wait=True)

    async def content_hashes(self, chapter_ids: Sequence[str] | None = None) -> dict[str, str]:
        """Map point id to payload content_hash, optionally only for some chapters."""
        chapter_filter = (
            models.Filter(
                must=[
                    models.FieldCondition(
                        key=CHAPTER_FIELD, match=models.MatchAny(any=list(chapter_ids))
                    )
                ]
            )
            if chapter_ids is not None
            else None
        )
        hashes: dict[str, str] = {}
        offset: models.ExtendedPointId | None = None
        while True:
            async with self._failures():
                records, offset = await self._client.scroll(
                    self._collection,
                    scroll_filter=chapter_filter,
                    limit=SCROLL_PAGE,
                    offset=offset,
                    with_payload=["content_hash"],
                    with_vectors=False,
                )
            for record in records:
                hashes[str(record.id)] = str((record.payload or {}).get("content_hash", ""))
            if offset is None:
                return hashes

    async def search(
        self,
        *,
        dense: Sequence[float],
        sparse_indices: Sequence[int],
        sparse_values: Sequence[float],
        limit: int,
        chapter_id: str | None = None,
        candidates: int = CANDIDATES,
    ) -> list[Hit]:
        """Hybrid search: dense and BM25 nearest points, each filtered by chapter, then fused."""
        chapter_filter = (
            models.Filter(
                must=[
                    models.FieldCondition(
                        key=CHAPTER_FIELD, match=models.MatchValue(value=chapter_id)
                    )
                ]
            )
            if chapter_id is not None
            else None
        )
        requests = [
            models.QueryRequest(
                query=list(dense),
                using=DENSE_VECTOR,
                limit=candidates,
                filter=chapter_filter,
                with_payload=True,
            )
        ]
        if sparse_indices:
            sparse = models.SparseVector(indices=list(sparse_indices), values=list(sparse_values))
            requests.append(
                models.QueryRequest(
                    query=sparse,
                    using=SPARSE_VECTOR,
                    limit=candidates,
                    filter=chapter_filter,
                    with_payload=True,
                )
            )
        async with self._failures():
            responses = await self._client.query_batch_points(self._collection, requests)
        found = [
            [
                Hit(id=str(point.id), score=float(point.score), payload=dict(point.payload or {}))
                for point in response.points
            ]
            for response in responses
        ]
        return fuse(found[0], found[1] if len(found) > 1 else [], limit)

    async def count(self) -> int:
        """Exact number of stored points."""
        async with self._failures():
            result = await self._client.count(self._collection, exact=True)
        return result.count

    async def ping(self) -> None:
        """Raise RetrievalUnavailable unless the server answers and the collection exists."""
        async with self._failures():
            exists = await self._client.collection_exists(self._collection)
        if not exists:
            raise RetrievalUnavailable(f"qdrant collection {self._collection!r} does not exist")

    async def aclose(self) -> None:
        """Close the client; safe to call twice."""
        if not self._closed:
            self._closed = True
            await self._client.close()

    async def _create(self, built: _BuiltBy) -> None:
        await self._client.create_collection(
            self._collection,
            vectors_config={
                DENSE_VECTOR: models.VectorParams(size=built.dim, distance=models.Distance.COSINE)
            },
            sparse_vectors_config={
                SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)
            },
            metadata=msgspec.to_builtins(built),
        )
        # Local mode has no payload indexes and warns if asked for one.
        if not self._local:
            await self._client.create_payload_index(
                self._collection, CHAPTER_FIELD, models.PayloadSchemaType.KEYWORD, wait=True
            )

    @contextlib.asynccontextmanager
    async def _failures(self) -> AsyncIterator[None]:
        if self._closed:
            raise RetrievalUnavailable("qdrant client is closed")
        try:
            yield
        except (ResponseHandlingException, httpx.TransportError, OSError) as exc:
            raise RetrievalUnavailable(f"qdrant unreachable: {exc}") from exc
        except UnexpectedResponse as exc:
            if exc.status_code is not None and exc.status_code < 500 and exc.status_code != 404:
                raise
            raise RetrievalUnavailable(f"qdrant answered {exc.status_code}: {exc}") from exc


def _built_by(info: models.CollectionInfo) -> _BuiltBy | None:
    metadata = info.config.metadata or {}
    model = metadata.get("embedding_model")
    vectors = info.config.params.vectors
    dense = vectors.get(DENSE_VECTOR) if isinstance(vectors, dict) else None
    if not isinstance(model, str) or dense is None:
        return None
    return _BuiltBy(model, dense.size)


def _server_point(point: ChunkPoint) -> models.PointStruct:
    sparse = models.SparseVector(indices=point.sparse_indices, values=point.sparse_values)
    return models.PointStruct(
        id=point.id,
        vector={DENSE_VECTOR: point.dense, SPARSE_VECTOR: sparse},
        payload=point.payload,
    )
