"""What goes into the vector index for a chunk: the chunk itself plus short windows of it.

A question usually targets one or two sentences; a 1,000-character chunk's single vector blurs
them (and MiniLM reads only its first 256 word pieces). Each chunk is therefore indexed as a
whole and as overlapping windows of a few sentences; every window points back to its chunk,
and retrieval returns chunks ("small to big").
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.ingest.markdown.document import Chunk, sha256
from server.retrieval.embeddings import Embedder
from server.retrieval.vectorstore import Bm25Encoder, ChunkPoint

WINDOW_CHARS = 360
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+(?=[A-Z0-9`*\"'(\[])")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True, slots=True)
class IndexUnit:
    """One point of the index: the text embedded for it and the chunk it stands for."""

    id: str
    text: str
    content_hash: str
    chunk: Chunk


def index_units(chunk: Chunk, window_chars: int = WINDOW_CHARS) -> list[IndexUnit]:
    """The chunk as a whole, plus its windows when it is long enough to blur."""
    # A point's hash covers its link too, so another base URL or slug re-indexes the passage.
    units = [IndexUnit(chunk.id, chunk.text, _linked(chunk, chunk.content_hash), chunk)]
    crumb, sep, body = chunk.text.partition("\n\n")
    if not sep:
        crumb, body = "", chunk.text
    pieces = _pieces(body)
    if len(body) <= window_chars * 1.3 or len(pieces) < 2:
        return units
    windows: list[str] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        if current and size + len(piece) > window_chars:
            windows.append(" ".join(current))
            current = (
                current[-1:] if len(current[-1]) < window_chars // 3 else []
            )  # a little overlap
            size = sum(len(p) for p in current)
        current.append(piece)
        size += len(piece) + 1
    if current:
        windows.append(" ".join(current))
    for i, window in enumerate(windows):
        text = f"{crumb}\n\n{window}" if crumb else window
        point_id = str(uuid.uuid5(uuid.UUID(chunk.id), f"window:{i}:{sha256(text)}"))
        units.append(IndexUnit(point_id, text, _linked(chunk, sha256(text)), chunk))
    return units


def _linked(chunk: Chunk, text_hash: str) -> str:
    return sha256(f"{chunk.url}\n{text_hash}")


def _pieces(body: str) -> list[str]:
    """Sentences of prose; code blocks, tables and list items whole."""
    pieces: list[str] = []
    in_code = False
    code: list[str] = []
    for block in re.split(r"\n\s*\n", body):
        for line in block.splitlines():
            if _FENCE.match(line):
                code.append(line)
                if in_code:
                    pieces.append("\n".join(code))
                    code = []
                in_code = not in_code
                continue
            if in_code:
                code.append(line)
                continue
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith(("|", "-", "*", "+")) or stripped[:2].rstrip(".").isdigit():
                pieces.append(stripped)
            else:
                pieces.extend(s for s in _SENTENCE_END.split(stripped) if s)
    if code:
        pieces.append("\n".join(code))
    return pieces


def payload(unit: IndexUnit) -> dict[str, Any]:
    """What a point carries: its chunk's metadata and text, for sources and the prompt."""
    c = unit.chunk
    return {
        "chunk_id": c.id,
        "chapter_id": c.chapter_id,
        "section_id": c.section_id,
        "title": c.title,
        "section_title": c.section_title,
        "heading_path": list(c.heading_path),
        "url": c.url,
        "position": c.position,
        "text": c.text,
        "content_hash": unit.content_hash,
    }


async def embed_units(
    units: Sequence[IndexUnit], embedder: Embedder, bm25: Bm25Encoder
) -> list[ChunkPoint]:
    """Dense and BM25 vectors for a batch of units."""
    dense = await embedder.embed_documents([u.text for u in units])
    sparse = await asyncio.to_thread(lambda: [bm25.encode_document(u.text) for u in units])
    return [
        ChunkPoint(id=u.id, dense=d, sparse_indices=s[0], sparse_values=s[1], payload=payload(u))
        for u, d, s in zip(units, dense, sparse, strict=True)
    ]
