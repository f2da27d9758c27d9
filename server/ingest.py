"""Ingest a Docusaurus docs folder: chapters and sections to Postgres, chunks to the vector store."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path

from tqdm import tqdm

from server.embeddings import Embedder
from server.markdown import Chapter, Chunk, chunk_chapter, load_book
from server.store import ChapterRow, SectionRow, Store
from server.vectorstore import Bm25Encoder, ChunkPoint, VectorStore

log = logging.getLogger(__name__)

EMBED_BATCH = 64


@dataclasses.dataclass(slots=True)
class IngestReport:
    """What an ingest run did."""

    chapters: int = 0
    chapters_changed: int = 0
    chapters_deleted: int = 0
    chunks: int = 0
    chunks_embedded: int = 0
    chunks_deleted: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for people."""
        return (
            f"{self.chapters} chapters ({self.chapters_changed} changed, {self.chapters_deleted} removed), "
            f"{self.chunks} chunks ({self.chunks_embedded} embedded, {self.chunks_deleted} removed) "
            f"in {self.seconds:.1f} s"
        )


async def ingest_book(
    root: Path,
    *,
    store: Store,
    vectors: VectorStore,
    embedder: Embedder,
    bm25: Bm25Encoder,
    base_url: str = "/docs",
    progress: bool = False,
) -> IngestReport:
    """Bring the stores in line with the book at `root`; unchanged chunks are not embedded again."""
    started = time.monotonic()
    chapters = await asyncio.to_thread(load_book, root, base_url)
    report = IngestReport(chapters=len(chapters))
    chunks: list[Chunk] = []
    for chapter in chapters:
        chunks.extend(chunk_chapter(chapter))
    report.chunks = len(chunks)

    stored_hashes = await store.chapter_hashes()
    for chapter in chapters:
        if stored_hashes.get(chapter.id) != chapter.content_hash:
            await store.save_chapter(_chapter_row(chapter), _section_rows(chapter))
            report.chapters_changed += 1
    report.chapters_deleted = len(await store.delete_chapters_except([c.id for c in chapters]))

    indexed = await vectors.content_hashes()
    wanted = {c.id for c in chunks}
    stale = [cid for cid in indexed if cid not in wanted]
    todo = [c for c in chunks if indexed.get(c.id) != c.content_hash]
    bar = tqdm(total=len(todo), unit="chunk", desc="embedding", disable=not progress or not todo)
    try:
        for i in range(0, len(todo), EMBED_BATCH):
            batch = todo[i : i + EMBED_BATCH]
            dense = await embedder.embed_documents([c.text for c in batch])
            sparse = await asyncio.to_thread(_encode_sparse, bm25, batch)
            await vectors.upsert(
                [_point(c, d, s) for c, d, s in zip(batch, dense, sparse, strict=True)]
            )
            report.chunks_embedded += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
    if stale:
        await vectors.delete(stale)
    report.chunks_deleted = len(stale)
    report.seconds = time.monotonic() - started
    log.info("ingested %s: %s", root, report.summary())
    return report


def _encode_sparse(bm25: Bm25Encoder, chunks: list[Chunk]) -> list[tuple[list[int], list[float]]]:
    return [bm25.encode_document(c.text) for c in chunks]


def _chapter_row(c: Chapter) -> ChapterRow:
    return ChapterRow(
        id=c.id,
        title=c.title,
        url=c.url,
        source_path=c.source_path,
        position=c.position,
        content_hash=c.content_hash,
        markdown=c.markdown,
    )


def _section_rows(c: Chapter) -> list[SectionRow]:
    return [
        SectionRow(
            id=s.id,
            chapter_id=c.id,
            title=s.title,
            heading_path=list(s.heading_path),
            level=s.level,
            position=s.position,
        )
        for s in c.sections
    ]


def _point(c: Chunk, dense: list[float], sparse: tuple[list[int], list[float]]) -> ChunkPoint:
    indices, values = sparse
    return ChunkPoint(
        id=c.id,
        dense=dense,
        sparse_indices=indices,
        sparse_values=values,
        payload={
            "chapter_id": c.chapter_id,
            "section_id": c.section_id,
            "title": c.title,
            "section_title": c.section_title,
            "heading_path": list(c.heading_path),
            "url": c.url,
            "position": c.position,
            "text": c.text,
            "content_hash": c.content_hash,
        },
    )
