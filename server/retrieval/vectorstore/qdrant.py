"""A Qdrant server (or qdrant-client's local mode) behind the VectorStore interface."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import httpx
import msgspec
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from server.errors import RetrievalUnavailable
from server.retrieval.vectorstore.base import (
    CANDIDATES,
    CHAPTER_FIELD,
    DENSE_VECTOR,
    SCROLL_PAGE,
    SPARSE_VECTOR,
    UPSERT_BATCH,
    BuiltBy,
    ChunkPoint,
    Hit,
    fuse,
    mismatch_error,
)


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
        wanted = BuiltBy(embedding_model, dim)
        async with self._failures():
            if not await self._client.collection_exists(self._collection):
                await self._create(wanted)
                return
            info = await self._client.get_collection(self._collection)
        built = _built_by(info)
        if built != wanted:
            raise mismatch_error(f"collection {self._collection!r}", built, wanted)

    async def recreate(self, *, dim: int, embedding_model: str) -> None:
        """Drop the collection and create it empty."""
        async with self._failures():
            if await self._client.collection_exists(self._collection):
                await self._client.delete_collection(self._collection)
            await self._create(BuiltBy(embedding_model, dim))

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

    async def _create(self, built: BuiltBy) -> None:
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


def _built_by(info: models.CollectionInfo) -> BuiltBy | None:
    metadata = info.config.metadata or {}
    model = metadata.get("embedding_model")
    vectors = info.config.params.vectors
    dense = vectors.get(DENSE_VECTOR) if isinstance(vectors, dict) else None
    if not isinstance(model, str) or dense is None:
        return None
    return BuiltBy(model, dense.size)


def _server_point(point: ChunkPoint) -> models.PointStruct:
    sparse = models.SparseVector(indices=point.sparse_indices, values=point.sparse_values)
    return models.PointStruct(
        id=point.id,
        vector={DENSE_VECTOR: point.dense, SPARSE_VECTOR: sparse},
        payload=point.payload,
    )
