"""Prometheus metrics of the process, exposed at /metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_GAP = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)

CONNECTIONS = Gauge("chat_connections_open", "Open chat sockets")
STREAMS = Counter("chat_streams_total", "Streams by kind and how they ended", ["kind", "outcome"])
LIVE_STREAMS = Gauge("chat_streams_live", "Streams generating now")
FIRST_DELTA = Histogram(
    "chat_first_delta_seconds",
    "Request received to first delta committed",
    ["kind"],
    buckets=_LATENCY,
)
DELTA_GAP = Histogram(
    "chat_delta_gap_seconds", "Time between deltas of a stream, as sent", buckets=_GAP
)
MODEL_FIRST_CHUNK = Histogram(
    "chat_model_first_chunk_seconds", "Model request to first chunk", buckets=_LATENCY
)
MODEL_STREAM = Histogram(
    "chat_model_stream_seconds", "Model request to end of its stream", buckets=_LATENCY
)
EMBEDDING = Histogram("chat_embedding_seconds", "Query embedding", buckets=_LATENCY)
RETRIEVAL = Histogram("chat_retrieval_seconds", "Vector search", buckets=_LATENCY)
DATABASE = Histogram(
    "chat_database_seconds", "Database work before an answer starts", buckets=_LATENCY
)
SERVER_ADDED = Histogram(
    "chat_server_added_seconds", "First model chunk in to first delta sent", buckets=_LATENCY
)
ERRORS = Counter("chat_errors_total", "Error frames sent, by code", ["code"])
MERGES = Counter("chat_outbox_merges_total", "Deltas merged into a waiting one for a slow reader")
REFUSED_CONNECTIONS = Counter(
    "chat_refused_connections_total",
    "Connections refused or cut before they were served: too many open, or too slow to send a request",
    ["reason"],
)
SLOW_CLOSES = Counter(
    "chat_slow_client_closes_total", "Sockets closed with 1013 for reading too slowly"
)

RATINGS = Counter(
    "chat_answer_ratings_total",
    "Readers' ratings of answers, by value (withdrawn included)",
    ["rating"],
)
UNANSWERABLE = Counter(
    "chat_unanswerable_questions_total",
    "Completed answers the book could not ground, by reason: no passage close in meaning, or the answer says the book does not cover it",
    ["reason"],
)


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus text format, and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
