"""Chunk index: one hybrid (dense + BM25, score-fused) search interface over two Qdrant engines."""

from server.vectorstore.base import (
    CANDIDATES,
    CHAPTER_FIELD,
    DENSE_VECTOR,
    EDGE_INFO_FILE,
    KEYWORD_WEIGHT,
    SPARSE_VECTOR,
    Bm25Encoder,
    ChunkPoint,
    Hit,
    VectorStore,
    fuse,
)
from server.vectorstore.edge import EdgeVectorStore
from server.vectorstore.qdrant import QdrantServerStore

__all__ = [
    "CANDIDATES",
    "CHAPTER_FIELD",
    "DENSE_VECTOR",
    "EDGE_INFO_FILE",
    "KEYWORD_WEIGHT",
    "SPARSE_VECTOR",
    "Bm25Encoder",
    "ChunkPoint",
    "EdgeVectorStore",
    "Hit",
    "QdrantServerStore",
    "VectorStore",
    "fuse",
]
