"""The chunk index interface, its point and hit types, BM25 encoding and score fusion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec
import qdrant_edge as qe

from server.errors import EmbeddingMismatch

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
    """One search result; `score` is the retriever's own score, or the fused score (see fuse).

    `similarity` is the dense cosine of the point to the query (None when only BM25 found it):
    unlike the fused score it is absolute, so it says how close the book came to a question."""

    id: str
    score: float
    payload: dict[str, Any]
    similarity: float | None = None


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
    cosine = {h.id: h.score for h in dense}
    for h in sparse:
        keyword = KEYWORD_WEIGHT * h.score / best_bm25 if best_bm25 > 0 else 0.0
        score, payload = fused.get(h.id, (0.0, h.payload))
        fused[h.id] = (score + keyword, payload)
    ranked = sorted(fused.items(), key=lambda item: item[1][0], reverse=True)[:limit]
    return [
        Hit(id=pid, score=score, payload=payload, similarity=cosine.get(pid))
        for pid, (score, payload) in ranked
    ]


class BuiltBy(msgspec.Struct, frozen=True):
    """Which embedding model and dimension an index was built with."""

    embedding_model: str
    dim: int


def mismatch_error(where: str, built: BuiltBy | None, wanted: BuiltBy) -> EmbeddingMismatch:
    was = f"{built.embedding_model!r} (dim {built.dim})" if built else "an unknown embedding model"
    return EmbeddingMismatch(
        f"vector index {where} was built by {was} but the configured model is "
        f"{wanted.embedding_model!r} (dim {wanted.dim}); re-ingest with "
        "`textbook-chat ingest --recreate PATH` or change EMBEDDING_PROVIDER back"
    )
