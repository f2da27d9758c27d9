"""Hybrid retrieval: dense + BM25 search, then passages ranked with their chapter and neighbours."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from typing import Any

from server.metrics import EMBEDDING, RETRIEVAL
from server.retrieval.embeddings import Embedder
from server.retrieval.vectorstore import Bm25Encoder, Hit, VectorStore

INLINE_BM25_CHARS = 2000  # longer queries (selections) are encoded in a thread
RESULTS_KEPT = 4096
RESULTS_TTL_S = 300.0
# Index points fetched per passage returned: a chunk's windows and the chunk itself fold together.
CANDIDATES_PER_PASSAGE = 8
# A passage in a chapter that matches in several places is likelier to be the answer than an
# equally scored stray one: each passage gains this share of its chapter's relevance, the mean
# of the chapter's CHAPTER_EVIDENCE best passages. Measured on eval/retrieval.jsonl; 0.25-0.5
# score alike, and it mostly settles which file the top passage comes from.
CHAPTER_WEIGHT = 0.25
CHAPTER_EVIDENCE = 2
# A question about a selection ("what does that mean?") is usually answered right around the
# selected text, so with a selection a passage gains this share of its best neighbour's score.
NEIGHBOUR_WEIGHT = 0.5


@dataclasses.dataclass(frozen=True, slots=True, weakref_slot=True)
class Chunk:
    """A chunk of the book as retrieval returns it; one object however many results hold it."""

    chunk_id: str
    chapter_id: str
    title: str
    section: str | None
    url: str | None
    text: str


# A passage's text lives in the kept results, the prompt and the `sources` frame of every answer
# that uses it: one Chunk per chunk of the book while anything holds it, however many queries
# found it, instead of a copy of its payload per query (~15 KiB per new question).
ChunkTable = weakref.WeakValueDictionary[str, Chunk]


@dataclasses.dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved chunk of the book, scored for one query."""

    chunk: Chunk
    score: float
    similarity: float | None = None  # the dense cosine to the query (see vectorstore.Hit)

    @property
    def chunk_id(self) -> str:
        """The chunk's id in the index."""
        return self.chunk.chunk_id

    @property
    def chapter_id(self) -> str:
        """The chapter it belongs to."""
        return self.chunk.chapter_id

    @property
    def title(self) -> str:
        """Its chapter's title."""
        return self.chunk.title

    @property
    def section(self) -> str | None:
        """Its section's title, when it differs from the chapter's."""
        return self.chunk.section

    @property
    def url(self) -> str | None:
        """Where it is in the book."""
        return self.chunk.url

    @property
    def text(self) -> str:
        """Its text."""
        return self.chunk.text


class Retriever:
    """Finds the passages of the book that best answer a question.

    Readers of one book ask the same questions (and highlight the same passages): the passages
    found for a query are kept for RESULTS_TTL_S (RESULTS_KEPT at most, least recently used out),
    so a repeat costs neither an embedding nor a search. A book re-ingested into a Qdrant server
    while serving shows in answers within that time."""

    def __init__(self, embedder: Embedder, vectors: VectorStore, bm25: Bm25Encoder) -> None:
        self._embedder = embedder
        self._vectors = vectors
        self._bm25 = bm25
        self._results: OrderedDict[tuple[str, str | None, int], tuple[float, list[Passage]]] = (
            OrderedDict()
        )
        self._chunks: ChunkTable = weakref.WeakValueDictionary()

    async def search(
        self,
        question: str,
        *,
        selection: str | None = None,
        chapter_id: str | None = None,
        limit: int = 6,
        spans: dict[str, float] | None = None,
    ) -> list[Passage]:
        """Best passages first. The selection, when given, steers retrieval together with the question.

        `spans`, when given, receives `embed_ms` and `search_ms`.
        """
        query = f"{selection}\n{question}" if selection else question
        key = (query, chapter_id, limit)
        found = self._results.get(key)
        if found is not None and time.monotonic() - found[0] < RESULTS_TTL_S:
            self._results.move_to_end(key)
            if spans is not None:
                spans["embed_ms"] = spans["search_ms"] = 0.0
            return found[1]
        started = time.perf_counter()
        dense = await self._embedder.embed_query(query)
        embedded = time.perf_counter()
        if len(query) > INLINE_BM25_CHARS:
            indices, values = await asyncio.to_thread(self._bm25.encode_query, query)
        else:  # a few microseconds: cheaper than a hop to a thread
            indices, values = self._bm25.encode_query(query)
        hits = await self._vectors.search(
            dense=dense,
            sparse_indices=indices,
            sparse_values=values,
            limit=limit * CANDIDATES_PER_PASSAGE,
            chapter_id=chapter_id,
        )
        done = time.perf_counter()
        if spans is not None:
            spans["embed_ms"] = (embedded - started) * 1000.0
            spans["search_ms"] = (done - embedded) * 1000.0
        EMBEDDING.observe(embedded - started)
        RETRIEVAL.observe(done - embedded)
        passages = rank_passages(hits, limit, with_neighbours=bool(selection), chunks=self._chunks)
        self._results[key] = (time.monotonic(), passages)
        self._results.move_to_end(key)
        if len(self._results) > RESULTS_KEPT:
            self._results.popitem(last=False)
        return passages

    def forget(self) -> None:
        """Drop the kept results (the book changed)."""
        self._results.clear()
        self._chunks.clear()


def rank_passages(
    hits: Sequence[Hit], limit: int, *, with_neighbours: bool, chunks: ChunkTable | None = None
) -> list[Passage]:
    """The chunks behind the hits (best first, scores >= 0), ranked with their chapter's relevance;
    chunks already in `chunks` are reused, new ones added."""
    best: dict[str, Hit] = {}
    closest: dict[str, float] = {}  # a chunk's best dense cosine over its windows
    for hit in sorted(hits, key=lambda h: h.score, reverse=True):
        chunk = str(hit.payload.get("chunk_id", hit.id))
        best.setdefault(chunk, hit)
        if hit.similarity is not None:
            closest[chunk] = max(closest.get(chunk, hit.similarity), hit.similarity)
    by_chapter: dict[str, list[float]] = defaultdict(list)
    for hit in best.values():
        by_chapter[_chapter(hit)].append(hit.score)
    chapter_relevance = {
        chapter: sum(sorted(scores, reverse=True)[:CHAPTER_EVIDENCE]) / CHAPTER_EVIDENCE
        for chapter, scores in by_chapter.items()
    }
    at = {(_chapter(h), h.payload.get("position")): h.score for h in best.values()}
    ranked: dict[str, float] = {}
    for chunk_id, hit in best.items():
        score = hit.score + CHAPTER_WEIGHT * chapter_relevance[_chapter(hit)]
        position = hit.payload.get("position")
        if with_neighbours and isinstance(position, int):
            before = at.get((_chapter(hit), position - 1), 0.0)
            after = at.get((_chapter(hit), position + 1), 0.0)
            score += NEIGHBOUR_WEIGHT * max(before, after)
        ranked[chunk_id] = score
    order = sorted(ranked, key=lambda c: ranked[c], reverse=True)[:limit]
    return [
        Passage(_chunk(chunk_id, best[chunk_id], chunks), ranked[chunk_id], closest.get(chunk_id))
        for chunk_id in order
    ]


def _chapter(hit: Hit) -> str:
    return str(hit.payload.get("chapter_id", ""))


def _chunk(chunk_id: str, hit: Hit, chunks: ChunkTable | None) -> Chunk:
    p: dict[str, Any] = hit.payload
    section = p.get("section_title") or None
    chunk = Chunk(
        chunk_id=chunk_id,
        chapter_id=_chapter(hit),
        title=str(p.get("title", "")),
        section=str(section) if section and section != p.get("title") else None,
        url=p.get("url"),
        text=str(p.get("text", "")),
    )
    if chunks is None:
        return chunk
    known = chunks.get(chunk_id)
    if known is not None and known == chunk:  # a re-ingested chunk's new text replaces the old
        return known
    chunks[chunk_id] = chunk
    return chunk
