"""Contract tests for the chunk index, run against Qdrant Edge and qdrant-client's local mode."""

from __future__ import annotations

import asyncio
import math
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient

from server.errors import EmbeddingMismatch, RetrievalUnavailable
from server.retrieval.vectorstore import (
    EDGE_INFO_FILE,
    KEYWORD_WEIGHT,
    Bm25Encoder,
    ChunkPoint,
    EdgeVectorStore,
    Hit,
    QdrantServerStore,
    VectorStore,
    fuse,
)

DIM = 8
MODEL = "test-embedder-v1"
ENCODER = Bm25Encoder()

# (key, chapter_id, text, dense axis): each chunk's dense vector is one basis axis.
CHUNKS = [
    ("A", "ch1", "Photosynthesis turns light into chemical energy inside the chloroplast.", 0),
    ("B", "ch1", "The mitochondrion releases energy from glucose during cellular respiration.", 1),
    ("C", "ch2", "Orbital resonance keeps the moons of a planet in a steady rhythm.", 2),
    ("D", "ch2", "Tidal heating warms the interior of a moon squeezed by gravity.", 3),
    ("E", "ch3", "A zygomorphic flower has exactly one plane of symmetry.", 4),
]

StoreFactory = Callable[[], VectorStore]


def point_id(key: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"chunk/{key}"))


IDS = {key: point_id(key) for key, *_ in CHUNKS}
# Includes the keys of the IDF test's own chunks.
KEY_OF = {point_id(key): key for key in [*IDS, "R", "C1", "C2", "C3", "C4", "C5"]}


def vector(**axes: float) -> list[float]:
    """Unit vector with the given components, e.g. vector(a0=0.8, a1=0.6)."""
    values = [0.0] * DIM
    for name, value in axes.items():
        values[int(name[1:])] = value
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def chunk(key: str, chapter_id: str, text: str, axis: int, content_hash: str = "") -> ChunkPoint:
    indices, values = ENCODER.encode_document(text)
    return ChunkPoint(
        id=point_id(key),
        dense=vector(**{f"a{axis}": 1.0}),
        sparse_indices=indices,
        sparse_values=values,
        payload={
            "chapter_id": chapter_id,
            "section_id": f"{chapter_id}-s1",
            "title": f"Chapter {chapter_id}",
            "section_title": "Section one",
            "heading_path": [f"Chapter {chapter_id}", "Section one"],
            "url": f"/{chapter_id}#s1",
            "position": axis,
            "text": text,
            "content_hash": content_hash or f"hash-{key}",
        },
    )


DATASET = [chunk(*row) for row in CHUNKS]


async def search_keys(
    store: VectorStore, dense: list[float], query: str, *, candidates: int = 40
) -> list[str]:
    """Keys of the hits for a dense vector and a query text, best first."""
    indices, values = ENCODER.encode_query(query)
    hits = await store.search(
        dense=dense,
        sparse_indices=indices,
        sparse_values=values,
        limit=5,
        candidates=candidates,
    )
    return [KEY_OF[hit.id] for hit in hits]


async def open_refused(make_store: StoreFactory, *, dim: int, embedding_model: str) -> str:
    """Open a fresh store expecting EmbeddingMismatch; close it and return the message."""
    store = make_store()
    try:
        with pytest.raises(EmbeddingMismatch) as mismatch:
            await store.open(dim=dim, embedding_model=embedding_model)
    finally:
        await store.aclose()
    return str(mismatch.value)


@pytest.fixture(params=["edge", "qdrant_local"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """A factory of stores on one directory, so a test can reopen what it wrote."""
    made: list[VectorStore] = []

    def make() -> VectorStore:
        store: VectorStore
        if request.param == "edge":
            store = EdgeVectorStore(tmp_path / "shard")
        else:
            store = QdrantServerStore(AsyncQdrantClient(path=str(tmp_path / "qdrant")))
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


@pytest.fixture
async def filled(make_store: StoreFactory) -> VectorStore:
    store = make_store()
    await store.open(dim=DIM, embedding_model=MODEL)
    await store.upsert(DATASET)
    return store


async def test_open_creates_an_empty_index_and_is_idempotent(make_store: StoreFactory) -> None:
    store = make_store()
    await store.open(dim=DIM, embedding_model=MODEL)
    await store.open(dim=DIM, embedding_model=MODEL)
    await store.ping()
    assert await store.count() == 0
    assert await store.content_hashes() == {}


async def test_dense_similarity_finds_the_nearest_chunk(filled: VectorStore) -> None:
    keys = await search_keys(filled, vector(a2=1.0, a3=0.2), "")
    assert keys[:2] == ["C", "D"]


async def test_rare_keyword_decides_between_equally_close_chunks(filled: VectorStore) -> None:
    # Every chunk is equally close to the dense query, so only BM25 can put E first.
    dense = vector(a0=1.0, a1=1.0, a2=1.0, a3=1.0, a4=1.0)
    keys = await search_keys(filled, dense, "what does zygomorphic mean?")
    assert keys[0] == "E"


async def test_keyword_does_not_overrule_a_clearly_closer_chunk(filled: VectorStore) -> None:
    keys = await search_keys(filled, vector(a0=1.0), "zygomorphic")
    assert keys[:2] == ["A", "E"]


async def test_chunk_found_by_both_retrievers_beats_a_slightly_closer_one(
    filled: VectorStore,
) -> None:
    # Dense ranks A just above B, and only B has the keywords.
    dense = vector(a0=0.62, a1=0.6)
    keys = await search_keys(filled, dense, "mitochondrion glucose", candidates=2)
    assert keys == ["B", "A"]


def test_fused_scores_are_margins_over_the_weakest_dense_candidate() -> None:
    dense = [Hit("A", 0.75, {}), Hit("B", 0.65, {}), Hit("C", 0.60, {})]
    sparse = [Hit("E", 8.0, {}), Hit("C", 4.0, {})]
    fused = {hit.id: hit.score for hit in fuse(dense, sparse, limit=10)}
    assert fused["A"] == pytest.approx(0.15)
    assert fused["B"] == pytest.approx(0.05)
    # C is the weakest dense candidate; E, found by BM25 alone, is scored as if tied with it.
    assert fused["C"] == pytest.approx(KEYWORD_WEIGHT * 0.5)
    assert fused["E"] == pytest.approx(KEYWORD_WEIGHT)
    assert [hit.id for hit in fuse(dense, sparse, limit=2)] == ["A", "E"]
    assert [hit.id for hit in fuse(dense, [], limit=3)] == ["A", "B", "C"]


async def test_idf_outweighs_a_frequent_common_term(make_store: StoreFactory) -> None:
    texts = [
        ("R", "The quokka is a small marsupial from Western Australia."),
        ("C1", "Energy, energy, energy: energy is never lost."),
        ("C2", "Kinetic energy depends on speed."),
        ("C3", "Potential energy depends on height."),
        ("C4", "Thermal energy flows from hot to cold."),
        ("C5", "Chemical energy is stored in bonds."),
    ]
    store = make_store()
    await store.open(dim=DIM, embedding_model=MODEL)
    await store.upsert([chunk(key, "ch9", text, axis) for axis, (key, text) in enumerate(texts)])
    # Term frequency alone would rank C1 (four times "energy") above R (one "quokka");
    # IDF makes the rare word win. With one candidate per retriever we see BM25's top pick.
    keys = await search_keys(store, vector(a2=1.0), "energy quokka", candidates=1)
    assert set(keys) == {"R", "C2"}


async def test_chapter_filter_applies_to_both_retrievers(filled: VectorStore) -> None:
    indices, values = ENCODER.encode_query("zygomorphic photosynthesis")
    hits = await filled.search(
        dense=vector(a0=1.0),
        sparse_indices=indices,
        sparse_values=values,
        limit=5,
        chapter_id="ch2",
    )
    assert {KEY_OF[hit.id] for hit in hits} == {"C", "D"}
    assert all(hit.payload["chapter_id"] == "ch2" for hit in hits)


async def test_hits_carry_the_payload(filled: VectorStore) -> None:
    indices, values = ENCODER.encode_query("tidal heating")
    hits = await filled.search(
        dense=vector(a3=1.0), sparse_indices=indices, sparse_values=values, limit=1
    )
    assert len(hits) == 1
    assert hits[0].id == IDS["D"]
    assert hits[0].score > 0
    assert hits[0].payload == DATASET[3].payload


async def test_delete_removes_points(filled: VectorStore) -> None:
    await filled.delete([IDS["E"]])
    assert await filled.count() == 4
    assert "E" not in await search_keys(filled, vector(a7=1.0), "zygomorphic")
    assert IDS["E"] not in await filled.content_hashes()


async def test_content_hashes_by_chapter_and_after_update(filled: VectorStore) -> None:
    assert await filled.content_hashes() == {IDS[key]: f"hash-{key}" for key in IDS}
    some = await filled.content_hashes(["ch1", "ch3"])
    assert some == {IDS["A"]: "hash-A", IDS["B"]: "hash-B", IDS["E"]: "hash-E"}
    assert await filled.content_hashes(["no-such-chapter"]) == {}

    key, chapter_id, _, axis = CHUNKS[0]
    await filled.upsert([chunk(key, chapter_id, "Rewritten text about leaves.", axis, "hash-A2")])
    assert await filled.count() == 5
    assert (await filled.content_hashes(["ch1"]))[IDS["A"]] == "hash-A2"


async def test_reopen_from_disk_keeps_the_data(make_store: StoreFactory) -> None:
    first = make_store()
    await first.open(dim=DIM, embedding_model=MODEL)
    await first.upsert(DATASET)
    hashes = await first.content_hashes()
    await first.aclose()

    second = make_store()
    await second.open(dim=DIM, embedding_model=MODEL)
    assert await second.count() == 5
    assert await second.content_hashes() == hashes
    assert (await search_keys(second, vector(a7=1.0), "zygomorphic"))[0] == "E"


async def test_reopen_with_another_model_or_dim_is_refused(make_store: StoreFactory) -> None:
    first = make_store()
    await first.open(dim=DIM, embedding_model=MODEL)
    await first.aclose()

    other_model = await open_refused(make_store, dim=DIM, embedding_model="other-embedder")
    assert MODEL in other_model
    assert "other-embedder" in other_model
    assert "--recreate" in other_model
    assert "\n" not in other_model
    other_dim = await open_refused(make_store, dim=16, embedding_model=MODEL)
    assert "dim 16" in other_dim


async def test_recreate_empties_and_switches_model(make_store: StoreFactory) -> None:
    store = make_store()
    await store.open(dim=DIM, embedding_model=MODEL)
    await store.upsert(DATASET)
    await store.recreate(dim=4, embedding_model="other-embedder")
    assert await store.count() == 0
    await store.upsert(
        [
            ChunkPoint(
                id=IDS["A"], dense=[1, 0, 0, 0], sparse_indices=[], sparse_values=[], payload={}
            )
        ]
    )
    assert await store.count() == 1
    await store.aclose()

    reopened = make_store()
    await reopened.open(dim=4, embedding_model="other-embedder")
    assert await reopened.count() == 1
    await reopened.aclose()
    await open_refused(make_store, dim=DIM, embedding_model=MODEL)


async def test_closed_store_is_unavailable(make_store: StoreFactory) -> None:
    store = make_store()
    await store.open(dim=DIM, embedding_model=MODEL)
    await store.aclose()
    with pytest.raises(RetrievalUnavailable):
        await store.ping()


async def test_concurrent_searches_on_edge(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "shard")
    try:
        await store.open(dim=DIM, embedding_model=MODEL)
        await store.upsert(DATASET)
        axes = [axis for *_, axis in CHUNKS]
        results = await asyncio.gather(
            *(search_keys(store, vector(**{f"a{axes[i % 5]}": 1.0}), "") for i in range(20))
        )
        assert [keys[0] for keys in results] == [CHUNKS[i % 5][0] for i in range(20)]
    finally:
        await store.aclose()


async def test_edge_shard_is_single_process(tmp_path: Path) -> None:
    owner = EdgeVectorStore(tmp_path / "shard")
    intruder = EdgeVectorStore(tmp_path / "shard")
    try:
        await owner.open(dim=DIM, embedding_model=MODEL)
        with pytest.raises(RetrievalUnavailable, match="WAL"):
            await intruder.open(dim=DIM, embedding_model=MODEL)
        await owner.ping()
    finally:
        await owner.aclose()
        await intruder.aclose()


async def test_edge_shard_without_model_record_is_refused(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "shard")
    await store.open(dim=DIM, embedding_model=MODEL)
    await store.aclose()
    (tmp_path / "shard" / EDGE_INFO_FILE).unlink()
    with pytest.raises(EmbeddingMismatch, match="unknown embedding model"):
        await store.open(dim=DIM, embedding_model=MODEL)


async def test_unreachable_server_is_retrieval_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = AsyncQdrantClient(url=f"http://127.0.0.1:{port}", timeout=2, check_compatibility=False)
    store = QdrantServerStore(client)
    try:
        with pytest.raises(RetrievalUnavailable):
            await store.ping()
        with pytest.raises(RetrievalUnavailable):
            await store.open(dim=DIM, embedding_model=MODEL)
    finally:
        await store.aclose()


def test_bm25_encoder_stems_and_drops_stopwords() -> None:
    doc_indices, doc_values = ENCODER.encode_document("Running runs run")
    query_indices, query_values = ENCODER.encode_query("the runner is running")
    assert len(doc_indices) == 1
    assert doc_indices[0] in query_indices
    assert query_values == [1.0] * len(query_indices)
    assert doc_values[0] > 1.0
    assert ENCODER.encode_query("the and of") == ([], [])


async def test_bm25_encoder_is_shared_across_worker_threads() -> None:
    text = CHUNKS[3][2]
    expected = ENCODER.encode_document(text)
    results = await asyncio.gather(
        *(asyncio.to_thread(ENCODER.encode_document, text) for _ in range(20))
    )
    assert all(result == expected for result in results)
