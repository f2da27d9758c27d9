"""The embedded Qdrant engine (qdrant-edge-py) behind the VectorStore interface."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
import qdrant_edge as qe

from server.errors import RetrievalUnavailable
from server.retrieval.vectorstore.base import (
    CANDIDATES,
    CHAPTER_FIELD,
    DENSE_VECTOR,
    EDGE_INFO_FILE,
    SCROLL_PAGE,
    SPARSE_VECTOR,
    BuiltBy,
    ChunkPoint,
    Hit,
    fuse,
    mismatch_error,
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
        await asyncio.to_thread(self._open_sync, BuiltBy(embedding_model, dim), recreate=False)

    async def recreate(self, *, dim: int, embedding_model: str) -> None:
        """Delete the shard and start an empty one."""
        await asyncio.to_thread(self._open_sync, BuiltBy(embedding_model, dim), recreate=True)

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
                with_payload=False,
            )
        ]
        if sparse_indices:
            sparse = qe.SparseVector(list(sparse_indices), list(sparse_values))
            queries.append(
                qe.QueryRequest(
                    limit=candidates,
                    query=qe.Query.Nearest(sparse, using=SPARSE_VECTOR),
                    filter=chapter_filter,
                    with_payload=False,
                )
            )
        return await asyncio.to_thread(self._query_sync, qe.QueryBatchRequest(queries), limit)

    async def count(self) -> int:
        """Exact number of stored points."""
        return await asyncio.to_thread(self._count_sync)

    async def ping(self) -> None:
        """Raise RetrievalUnavailable unless the shard is open and answers."""
        await asyncio.to_thread(self._count_sync)

    async def aclose(self) -> None:
        """Flush and close the shard; safe to call twice."""
        await asyncio.to_thread(self._close_sync)

    def _open_sync(self, wanted: BuiltBy, *, recreate: bool) -> None:
        with self._write_lock:
            self._close_locked()
            if recreate:
                shutil.rmtree(self._path, ignore_errors=True)
            info_file = self._path / EDGE_INFO_FILE
            shard_exists = (self._path / "edge_config.json").exists()
            if info_file.exists() or shard_exists:
                built = _read_built_by(info_file)
                if built != wanted:
                    raise mismatch_error(str(self._path), built, wanted)
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

    def _query_sync(self, batch: qe.QueryBatchRequest, limit: int) -> list[Hit]:
        # Candidates come without payloads and only the fused best are fetched with theirs:
        # converting 80 payloads to Python per query cost more CPU than the search itself.
        shard = self._require_shard()
        with self._edge_failures():
            results = shard.query_batch(batch)
            point_ids = {str(p.id): p.id for points in results for p in points}
            found = [
                [Hit(id=str(p.id), score=float(p.score), payload={}) for p in points]
                for points in results
            ]
            best = fuse(found[0], found[1] if len(found) > 1 else [], limit)
            records = shard.retrieve(
                [point_ids[h.id] for h in best], with_payload=True, with_vector=False
            )
        payloads = {str(r.id): dict(r.payload or {}) for r in records}
        # a point deleted by an ingest meanwhile is dropped, not returned without its text
        return [Hit(h.id, h.score, payloads[h.id], h.similarity) for h in best if h.id in payloads]

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


def _read_built_by(info_file: Path) -> BuiltBy | None:
    """The recorded model and dim, or None when the record is missing or unreadable."""
    try:
        return msgspec.json.decode(info_file.read_bytes(), type=BuiltBy)
    except (OSError, msgspec.DecodeError):
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_bytes(data)
    os.replace(partial, path)
