"""Retrieval evaluation: score the server's own Retriever on a question set over real books."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from server.ingest.indexing import embed_units, index_units
from server.ingest.markdown.document import Chapter, chunk_chapter, load_book
from server.retrieval.embeddings import Embedder
from server.retrieval.retriever import Passage, Retriever
from server.retrieval.vectorstore import Bm25Encoder, EdgeVectorStore

_MARKUP = re.compile(r"[*`]")
_SPACE = re.compile(r"\s+")


class EvalItem(msgspec.Struct, frozen=True):
    """One question with where its answer is."""

    id: str
    book: str
    kind: str
    question: str
    source: str
    evidence: str
    selection: str | None = None
    also: list[str] = []


@dataclasses.dataclass(slots=True)
class Outcome:
    """How one item scored."""

    item: EvalItem
    top_file: str | None
    file_first: bool
    passage_rank: int | None  # 1-based rank of the first passage holding the evidence


def normalise(text: str) -> str:
    """Text compared for evidence: markup stripped, whitespace collapsed."""
    return _SPACE.sub(" ", _MARKUP.sub("", text)).strip()


def load_items(path: Path) -> list[EvalItem]:
    """The evaluation set, one JSON object per line."""
    decoder = msgspec.json.Decoder(EvalItem)
    return [decoder.decode(line) for line in path.read_text().splitlines() if line.strip()]


class CachedEmbedder:
    """Wraps an embedder with an on-disk cache of document vectors keyed by text hash."""

    def __init__(self, inner: Embedder, cache: Path) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.dim = inner.dim
        self._path = cache
        self._vectors: dict[str, list[float]] = {}
        if cache.exists():
            data = np.load(cache)
            self._vectors = {k: data[k].tolist() for k in data.files}

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        keys = [hashlib.sha256(f"{self.model_name}\0{t}".encode()).hexdigest() for t in texts]
        missing = [i for i, k in enumerate(keys) if k not in self._vectors]
        if missing:
            fresh = await self.inner.embed_documents([texts[i] for i in missing])
            for i, vector in zip(missing, fresh, strict=True):
                self._vectors[keys[i]] = vector
        return [self._vectors[k] for k in keys]

    async def embed_query(self, text: str) -> list[float]:
        return await self.inner.embed_query(text)

    def save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {
            k: np.asarray(v, dtype=np.float32) for k, v in self._vectors.items()
        }
        np.savez(self._path, **arrays)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def index_book(
    chapters: list[Chapter], embedder: CachedEmbedder, bm25: Bm25Encoder, path: Path
) -> EdgeVectorStore:
    """An embedded vector store holding the book as ingest would index it."""
    store = EdgeVectorStore(path)
    await store.open(dim=embedder.dim, embedding_model=embedder.model_name)
    units = [u for ch in chapters for c in chunk_chapter(ch) for u in index_units(c)]
    await store.upsert(await embed_units(units, embedder, bm25))
    return store


async def evaluate(
    items: list[EvalItem], corpora: Path, embedder: CachedEmbedder, *, k: int = 6
) -> list[Outcome]:
    """Score every item with the server's Retriever; one index per book."""
    bm25 = Bm25Encoder()
    outcomes: list[Outcome] = []
    by_book: dict[str, list[EvalItem]] = defaultdict(list)
    for item in items:
        by_book[item.book].append(item)
    with tempfile.TemporaryDirectory(prefix="tc-eval-") as tmp:
        for book, book_items in sorted(by_book.items()):
            chapters = await asyncio.to_thread(load_book, corpora / book)
            source_of = {c.id: c.source_path for c in chapters}
            store = await index_book(chapters, embedder, bm25, Path(tmp) / book)
            try:
                retriever = Retriever(embedder, store, bm25)
                for item in book_items:
                    passages = await retriever.search(
                        item.question, selection=item.selection, limit=k
                    )
                    outcomes.append(_score(item, passages, source_of))
            finally:
                await store.aclose()
    embedder.save()
    return outcomes


def _score(item: EvalItem, passages: list[Passage], source_of: dict[str, str]) -> Outcome:
    accepted = {item.source, *item.also}
    top = source_of.get(passages[0].chapter_id) if passages else None
    evidence = normalise(item.evidence)
    rank = next((i for i, p in enumerate(passages, start=1) if evidence in normalise(p.text)), None)
    return Outcome(item=item, top_file=top, file_first=top in accepted, passage_rank=rank)


def report(outcomes: list[Outcome], k: int) -> str:
    """A table of file@1 and passage@k by book and kind."""
    groups: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[(o.item.book, o.item.kind)].append(o)
        groups[(o.item.book, "all")].append(o)
        groups[("all", o.item.kind)].append(o)
        groups[("all", "all")].append(o)
    lines = [f"{'book':8} {'kind':11} {'n':>4} {'file@1':>7} {f'passage@{k}':>10} {'passage@1':>9}"]
    for (book, kind), group in sorted(groups.items()):
        n = len(group)
        file1 = sum(o.file_first for o in group) / n
        pk = sum(o.passage_rank is not None for o in group) / n
        p1 = sum(o.passage_rank == 1 for o in group) / n
        lines.append(f"{book:8} {kind:11} {n:>4} {file1:>7.1%} {pk:>10.1%} {p1:>9.1%}")
    return "\n".join(lines)


def misses(outcomes: list[Outcome]) -> str:
    """The items that missed, for tuning."""
    rows = []
    for o in outcomes:
        if not o.file_first or o.passage_rank is None:
            rows.append(json.dumps({"id": o.item.id, "kind": o.item.kind, "q": o.item.question[:90],
                                    "want": o.item.source, "got": o.top_file, "rank": o.passage_rank}))  # fmt: skip
    return "\n".join(rows)
