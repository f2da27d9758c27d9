"""Chunk index: one hybrid (dense + BM25, score-fused) search interface over two Qdrant engines."""

from server.retrieval.vectorstore.base import (
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
from server.retrieval.vectorstore.edge import EdgeVectorStore
from server.retrieval.vectorstore.qdrant import QdrantServerStore

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
