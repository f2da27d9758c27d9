"""Embedders: numpy MiniLM exactness, local micro-batching and cache, OpenAI over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from openai import AsyncOpenAI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.errors import ConfigError, RetrievalUnavailable, UpstreamUnavailable
from server.retrieval.embeddings import (
    LOCAL_MODEL_NAME,
    LocalEmbedder,
    MiniLMEncoder,
    OpenAIEmbedder,
    make_embedder,
)

# First components of sentence-transformers' own embedding of this sentence (torch reference).
REFERENCE_SENTENCE = "The mitochondria is the powerhouse of the cell."
REFERENCE_PREFIX = [-0.036432, 0.049986, -0.063703, 0.044466, -0.022807, -0.008672]

MIXED_LENGTH_TEXTS = [
    "Hi",
    "",
    "What is a derivative?",
    "Explain how gradient descent updates the weights of a neural network step by step.",
    "Cells divide by mitosis; " * 40,  # past the 256-token limit
    "Naïve café — résumé 🙂 東京",
    "Short one.",
]


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return MiniLMEncoder()


def test_encode_shapes_unit_norm_and_dtype(encoder: MiniLMEncoder) -> None:
    vectors = encoder.encode(MIXED_LENGTH_TEXTS)
    assert vectors.shape == (len(MIXED_LENGTH_TEXTS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_encode_matches_sentence_transformers_reference(encoder: MiniLMEncoder) -> None:
    vector = encoder.encode([REFERENCE_SENTENCE])[0]
    np.testing.assert_allclose(vector[: len(REFERENCE_PREFIX)], REFERENCE_PREFIX, atol=2e-6)


def test_encode_is_deterministic(encoder: MiniLMEncoder) -> None:
    first = encoder.encode(MIXED_LENGTH_TEXTS, batch_size=3)
    second = encoder.encode(MIXED_LENGTH_TEXTS, batch_size=3)
    np.testing.assert_array_equal(first, second)


def test_padding_in_a_batch_does_not_change_vectors(encoder: MiniLMEncoder) -> None:
    batched = encoder.encode(MIXED_LENGTH_TEXTS, batch_size=4)
    singles = np.stack([encoder.encode([text])[0] for text in MIXED_LENGTH_TEXTS])
    assert np.abs(batched - singles).max() < 1e-5


def test_input_is_truncated_at_max_seq_length(encoder: MiniLMEncoder) -> None:
    assert encoder.max_tokens == 256
    long_text = "the cell membrane controls what enters the cell " * 60
    with_tail, without_tail = encoder.encode([long_text + " quantum stock markets", long_text])
    np.testing.assert_allclose(with_tail, without_tail, atol=1e-6)
    short_a, short_b = encoder.encode(["the cell membrane", "the cell membrane quantum"])
    assert float(short_a @ short_b) < 0.99


def test_paraphrase_is_closer_than_unrelated_sentence(encoder: MiniLMEncoder) -> None:
    query, paraphrase, unrelated = encoder.encode(
        [
            "How do plants turn sunlight into food?",
            "Photosynthesis lets plants make sugar from light.",
            "The train to Boston leaves at noon.",
        ]
    )
    assert float(query @ paraphrase) > 0.5
    assert float(query @ unrelated) < 0.2


def test_print_encode_timing(encoder: MiniLMEncoder) -> None:
    queries = [f"How does question number {i} about entropy work?" for i in range(30)]
    encoder.encode(queries[:2])
    started = time.perf_counter()
    for query in queries:
        encoder.encode([query])
    per_query_ms = (time.perf_counter() - started) / len(queries) * 1000
    started = time.perf_counter()
    batched = encoder.encode(queries)
    batch_ms = (time.perf_counter() - started) * 1000
    print(f"\nMiniLM: {per_query_ms:.1f} ms per single query; {batch_ms:.1f} ms for 30 in one call")
    assert batched.shape == (30, 384)


# --- LocalEmbedder -------------------------------------------------------------------------


async def test_local_embedder_documents_and_query_agree(encoder: MiniLMEncoder) -> None:
    embedder = LocalEmbedder(encoder=encoder, document_batch_size=3)
    try:
        assert (embedder.model_name, embedder.dim) == (LOCAL_MODEL_NAME, 384)
        documents = await embedder.embed_documents(MIXED_LENGTH_TEXTS)
        assert len(documents) == len(MIXED_LENGTH_TEXTS)
        assert all(isinstance(v, list) and len(v) == 384 for v in documents)
        expected = encoder.encode(MIXED_LENGTH_TEXTS)
        assert np.abs(np.array(documents) - expected).max() < 1e-5
        query = await embedder.embed_query(MIXED_LENGTH_TEXTS[2])
        assert np.abs(np.array(query) - expected[2]).max() < 1e-5
        assert await embedder.embed_documents([]) == []
        assert embedder.stats.documents_encoded == len(MIXED_LENGTH_TEXTS)
    finally:
        await embedder.aclose()


async def test_local_embedder_loads_model_lazily(tmp_path: Path) -> None:
    embedder = LocalEmbedder(runtime="onnx", cache_dir=tmp_path)
    try:
        vector = await embedder.embed_query(REFERENCE_SENTENCE)
        np.testing.assert_allclose(vector[: len(REFERENCE_PREFIX)], REFERENCE_PREFIX, atol=2e-6)
        assert embedder.stats.query_batches == 1
    finally:
        await embedder.aclose()


async def test_concurrent_queries_share_forward_passes(encoder: MiniLMEncoder) -> None:
    embedder = LocalEmbedder(encoder=encoder, max_query_batch=8)
    texts = [f"What does chapter {i} say about osmosis?" for i in range(20)]
    try:
        results = await asyncio.gather(*(embedder.embed_query(t) for t in [*texts, texts[0]]))
        expected = encoder.encode(texts)
        for i, vector in enumerate(results[:20]):
            assert np.abs(np.array(vector) - expected[i]).max() < 1e-5, texts[i]
        assert results[20] == results[0]
        # 20 distinct texts, at most 8 per pass: 3 passes, the duplicate rode along.
        assert embedder.stats.query_batches == 3
        assert embedder.stats.queries_encoded == 20
    finally:
        await embedder.aclose()


async def test_queries_arriving_during_a_pass_join_the_next_one(encoder: MiniLMEncoder) -> None:
    embedder = LocalEmbedder(encoder=encoder)
    try:
        first = asyncio.create_task(embedder.embed_query("first query, alone in its pass"))
        await asyncio.sleep(0.002)  # the first pass is now running in its thread
        late = [f"late query {i} about enzymes" for i in range(6)]
        late_results = await asyncio.gather(*(embedder.embed_query(t) for t in late))
        await first
        assert embedder.stats.query_batches == 2
        expected = encoder.encode(late)
        assert np.abs(np.array(late_results) - expected).max() < 1e-5
    finally:
        await embedder.aclose()


async def test_cancelled_caller_does_not_fail_others_on_same_text(encoder: MiniLMEncoder) -> None:
    embedder = LocalEmbedder(encoder=encoder)
    try:
        impatient = asyncio.create_task(embedder.embed_query("shared question"))
        patient = asyncio.create_task(embedder.embed_query("shared question"))
        await asyncio.sleep(0)
        impatient.cancel()
        vector = await patient
        assert impatient.cancelled()
        assert np.abs(np.array(vector) - encoder.encode(["shared question"])[0]).max() < 1e-5
    finally:
        await embedder.aclose()


async def test_query_cache_counts_hits_and_evicts_oldest(encoder: MiniLMEncoder) -> None:
    embedder = LocalEmbedder(encoder=encoder, cache_size=2)
    try:
        first = await embedder.embed_query("alpha")
        first.append(123.0)  # callers get copies: this must not reach the cache
        again = await embedder.embed_query("alpha")
        assert again == first[:384], "kept as float32, the model's own precision: no change"
        assert (embedder.stats.cache_hits, embedder.stats.cache_misses) == (1, 1)
        await embedder.embed_query("beta")
        await embedder.embed_query("gamma")  # evicts alpha, the least recently used
        await embedder.embed_query("alpha")
        assert (embedder.stats.cache_hits, embedder.stats.cache_misses) == (1, 4)
        assert embedder.stats.query_batches == 4
    finally:
        await embedder.aclose()


async def test_closed_local_embedder_refuses_work(encoder: MiniLMEncoder) -> None:
    embedder = LocalEmbedder(encoder=encoder)
    await embedder.aclose()
    with pytest.raises(RetrievalUnavailable):
        await embedder.embed_query("anything")


async def test_print_embed_query_timing(encoder: MiniLMEncoder) -> None:
    embedder = LocalEmbedder(encoder=encoder)
    queries = [f"Why is the sky blue, variant {i}?" for i in range(20)]
    try:
        started = time.perf_counter()
        for query in queries:
            await embedder.embed_query(query)
        sequential_ms = (time.perf_counter() - started) / len(queries) * 1000
        started = time.perf_counter()
        await asyncio.gather(*(embedder.embed_query(q + " (again)") for q in queries))
        concurrent_ms = (time.perf_counter() - started) * 1000
        print(
            f"\nLocalEmbedder: {sequential_ms:.1f} ms per sequential query; "
            f"{concurrent_ms:.1f} ms for 20 concurrent"
        )
        assert embedder.stats.cache_misses == 40
    finally:
        await embedder.aclose()


# --- OpenAIEmbedder over real HTTP ---------------------------------------------------------

FAKE_DIM = 8


def fake_vector(text: str) -> list[float]:
    """What the fake endpoint returns for `text`: deterministic, depends on the text."""
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 255.0 for b in digest[:FAKE_DIM]]


@dataclass
class FakeOpenAI:
    """A loopback OpenAI-compatible /v1/embeddings server; inputs starting with '!' misbehave."""

    base_url: str
    request_bodies: list[dict[str, Any]] = field(default_factory=list)


async def fake_embeddings(request: Request) -> JSONResponse:
    body = await request.json()
    request.app.state.bodies.append(body)
    inputs: list[str] = body["input"]
    for text in inputs:
        if text.startswith("!status="):
            status = int(text.removeprefix("!status="))
            return JSONResponse({"error": {"message": "fake", "type": "x"}}, status_code=status)
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": fake_vector(t)[:2] if t == "!short" else fake_vector(t),
        }
        for i, t in enumerate(inputs)
    ]
    data.reverse()  # clients must order by index, not by position
    usage = {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}
    return JSONResponse({"object": "list", "data": data, "model": body["model"], "usage": usage})


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[FakeOpenAI]:
    app = Starlette(routes=[Route("/v1/embeddings", fake_embeddings, methods=["POST"])])
    app.state.bodies = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", ws="none", http="h11", log_level="warning")
    server = uvicorn.Server(config)
    # Its own thread and loop, so uvicorn's signal capture stays out of pytest's main thread.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "fake OpenAI server did not start"
    port = sock.getsockname()[1]
    try:
        yield FakeOpenAI(base_url=f"http://127.0.0.1:{port}/v1", request_bodies=app.state.bodies)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
async def openai_client(fake_openai: FakeOpenAI) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(base_url=fake_openai.base_url, api_key="test-key", max_retries=0)
    try:
        yield client
    finally:
        await client.close()


async def test_openai_embedder_batches_documents_in_order(
    fake_openai: FakeOpenAI, openai_client: AsyncOpenAI
) -> None:
    embedder = OpenAIEmbedder(openai_client, dim=FAKE_DIM, batch_size=3)
    assert embedder.model_name == "openai/text-embedding-3-small"
    texts = [f"passage {i}" for i in range(7)]
    fake_openai.request_bodies.clear()
    vectors = await embedder.embed_documents(texts)
    np.testing.assert_allclose(vectors, [fake_vector(t) for t in texts], rtol=1e-6)
    assert [len(b["input"]) for b in fake_openai.request_bodies] == [3, 3, 1]
    assert {b["model"] for b in fake_openai.request_bodies} == {"text-embedding-3-small"}
    assert {b["encoding_format"] for b in fake_openai.request_bodies} == {"float"}
    assert await embedder.embed_query("passage 4") == pytest.approx(fake_vector("passage 4"))
    await embedder.aclose()


@pytest.mark.parametrize(
    ("status", "retryable"), [(429, True), (503, True), (500, True), (400, False), (401, False)]
)
async def test_openai_http_errors_map_to_upstream_unavailable(
    openai_client: AsyncOpenAI, status: int, retryable: bool
) -> None:
    embedder = OpenAIEmbedder(openai_client, dim=FAKE_DIM)
    with pytest.raises(UpstreamUnavailable) as caught:
        await embedder.embed_documents(["fine", f"!status={status}"])
    assert caught.value.retryable is retryable
    assert str(status) in caught.value.message


async def test_openai_wrong_dimension_is_not_retryable(openai_client: AsyncOpenAI) -> None:
    embedder = OpenAIEmbedder(openai_client, dim=FAKE_DIM)
    with pytest.raises(UpstreamUnavailable) as caught:
        await embedder.embed_query("!short")
    assert caught.value.retryable is False


async def test_openai_unreachable_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    client = AsyncOpenAI(
        base_url=f"http://127.0.0.1:{closed_port}/v1", api_key="k", max_retries=0, timeout=5
    )
    try:
        with pytest.raises(UpstreamUnavailable) as caught:
            await OpenAIEmbedder(client, dim=FAKE_DIM).embed_query("hello")
        assert caught.value.retryable is True
    finally:
        await client.close()


# --- factory -------------------------------------------------------------------------------


async def test_make_embedder_builds_each_provider(openai_client: AsyncOpenAI) -> None:
    local = make_embedder("local", openai_client=None, openai_model=None)
    assert isinstance(local, LocalEmbedder)
    assert local.model_name == LOCAL_MODEL_NAME
    await local.aclose()
    remote = make_embedder("openai", openai_client=openai_client, openai_model=None)
    assert isinstance(remote, OpenAIEmbedder)
    assert (remote.model_name, remote.dim) == ("openai/text-embedding-3-small", 1536)
    large = make_embedder(
        "openai", openai_client=openai_client, openai_model="text-embedding-3-large"
    )
    assert large.dim == 3072
    custom = make_embedder(
        "openai", openai_client=openai_client, openai_model="my-model", openai_dim=FAKE_DIM
    )
    assert (custom.model_name, custom.dim) == ("openai/my-model", FAKE_DIM)


async def test_make_embedder_rejects_bad_settings(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(ConfigError):
        make_embedder("cohere", openai_client=None, openai_model=None)
    with pytest.raises(ConfigError):
        make_embedder("openai", openai_client=None, openai_model=None)
    with pytest.raises(ConfigError):
        make_embedder("openai", openai_client=openai_client, openai_model="unknown-model")
