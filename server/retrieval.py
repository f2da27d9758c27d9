"""Hybrid retrieval: dense + BM25 sparse search fused with RRF, for a question and an optional selection."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from server.embeddings import Embedder
from server.vectorstore import Bm25Encoder, Hit, VectorStore

CANDIDATES_PER_PASSAGE = 4  # index points fetched per passage returned, before folding to chunks


@dataclasses.dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved chunk of the book."""

    chunk_id: str
    chapter_id: str
    title: str
    section: str | None
    url: str | None
    score: float
    text: str


class Retriever:
    """Finds the passages of the book that best answer a question."""

    def __init__(self, embedder: Embedder, vectors: VectorStore, bm25: Bm25Encoder) -> None:
        self._embedder = embedder
        self._vectors = vectors
        self._bm25 = bm25

    async def search(
        self,
        question: str,
        *,
        selection: str | None = None,
        chapter_id: str | None = None,
        limit: int = 6,
    ) -> list[Passage]:
        """Best passages first. The selection, when given, steers retrieval together with the question."""
        query = f"{selection}\n{question}" if selection else question
        dense = await self._embedder.embed_query(query)
        indices, values = await asyncio.to_thread(self._bm25.encode_query, query)
        hits = await self._vectors.search(
            dense=dense,
            sparse_indices=indices,
            sparse_values=values,
            limit=limit * CANDIDATES_PER_PASSAGE,
            chapter_id=chapter_id,
        )
        # Windows and whole chunks both point at chunks: keep each chunk once, at its best rank.
        passages: dict[str, Passage] = {}
        for hit in hits:
            chunk_id = str(hit.payload.get("chunk_id", hit.id))
            if chunk_id not in passages:
                passages[chunk_id] = _passage(chunk_id, hit)
                if len(passages) == limit:
                    break
        return list(passages.values())


def _passage(chunk_id: str, hit: Hit) -> Passage:
    p: dict[str, Any] = hit.payload
    section = p.get("section_title") or None
    return Passage(
        chunk_id=chunk_id,
        chapter_id=str(p.get("chapter_id", "")),
        title=str(p.get("title", "")),
        section=str(section) if section and section != p.get("title") else None,
        url=p.get("url"),
        score=float(hit.score),
        text=str(p.get("text", "")),
    )
