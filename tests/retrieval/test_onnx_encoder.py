"""The ONNX Runtime MiniLM against the numpy model: real packaged weights, real book texts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from server.ingest.indexing import index_units
from server.ingest.markdown.document import chunk_chapter, load_book
from server.retrieval.embeddings import LOCAL_MODEL_NAME, LocalEmbedder
from server.retrieval.local_encoders import all_cores, int8_is_safe_here, load_encoder
from server.retrieval.minilm import MiniLMEncoder, default_model_dir
from server.retrieval.onnx_encoder import OnnxEncoder
from server.retrieval.onnx_graph import GRAPH_VERSION, cached_model, weights_digest
from server.settings import SAMPLE_BOOK_DIR
from server.web.workers import _prepare
from tests.conftest import CORPORA, ROOT, fresh_database, make_settings

F32 = npt.NDArray[np.float32]

EDGE_CASES = [
    "",
    "Hi",
    "Naïve café — résumé 🙂 東京",
    "Cells divide by mitosis; " * 40,  # past the 256-token limit
    "What is the zero-moment point?",
]


def book_texts(book: Path, every: int) -> list[str]:
    """Every `every`-th text ingest would embed for `book` (chunks and their windows)."""
    units = [u for ch in load_book(book) for c in chunk_chapter(ch) for u in index_units(c)]
    return [u.text for u in units[::every]]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """The sample book whole, a sample of both corpora, and edge cases."""
    found = book_texts(SAMPLE_BOOK_DIR, 1)
    if CORPORA.is_dir():
        found += book_texts(CORPORA / "book-a", 25) + book_texts(CORPORA / "book-b", 25)
    return found + EDGE_CASES


@pytest.fixture(scope="module")
def numpy_vectors(texts: list[str]) -> F32:
    return MiniLMEncoder().encode(texts)


@pytest.fixture(scope="module")
def fp32(cache_dir: Path) -> OnnxEncoder:
    return OnnxEncoder(cache_dir, precision="fp32")


@pytest.fixture(scope="module")
def int8(cache_dir: Path) -> OnnxEncoder:
    return OnnxEncoder(cache_dir, precision="int8")


def cosines(a: F32, b: F32) -> F32:
    result: F32 = (a * b).sum(axis=1)
    return result


def test_sample_covers_books(texts: list[str]) -> None:
    assert len(texts) > 100  # the sample book alone has ~80 points, the corpora ~4,000


def test_fp32_graph_matches_numpy_model(
    fp32: OnnxEncoder, texts: list[str], numpy_vectors: F32
) -> None:
    vectors = fp32.encode(texts)
    assert vectors.shape == numpy_vectors.shape and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosines(vectors, numpy_vectors).min() > 0.99999
    assert np.abs(vectors - numpy_vectors).max() < 1e-4


def test_fp32_single_query_path_matches_batches(fp32: OnnxEncoder, texts: list[str]) -> None:
    batched = fp32.encode(texts[:40], batch_size=7)
    singles = np.stack([fp32.encode([t])[0] for t in texts[:40]])
    assert np.abs(batched - singles).max() < 1e-5
    assert fp32.encode([]).shape == (0, 384)


def test_int8_graph_is_close_to_numpy_model(
    int8: OnnxEncoder, texts: list[str], numpy_vectors: F32
) -> None:
    similarity = cosines(int8.encode(texts), numpy_vectors)
    print(f"\nint8 vs numpy cosine: mean {similarity.mean():.4f}, min {similarity.min():.4f}")
    assert similarity.mean() > 0.995
    assert similarity.min() > 0.98


def test_int8_keeps_the_nearest_neighbours(
    int8: OnnxEncoder, texts: list[str], numpy_vectors: F32
) -> None:
    """What retrieval needs: a text's nearest other texts are still mostly the same ones."""
    quantized = int8.encode(texts)
    exact_scores = numpy_vectors @ numpy_vectors.T
    mixed_scores = quantized @ numpy_vectors.T  # int8 queries against fp32 documents
    np.fill_diagonal(exact_scores, -1.0)
    np.fill_diagonal(mixed_scores, -1.0)
    exact_top = np.argsort(-exact_scores, axis=1)[:, :5]
    mixed_top = np.argsort(-mixed_scores, axis=1)[:, :5]
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact_top, mixed_top, strict=True)])
    print(f"\nint8 queries: top-5 neighbours shared with fp32: {overlap:.1%}")
    assert overlap > 0.8


def test_graph_is_cached_by_weights_hash(fp32: OnnxEncoder, cache_dir: Path) -> None:
    digest = weights_digest(default_model_dir())
    assert fp32.model_path.parent == cache_dir
    assert fp32.model_path.name == f"all-MiniLM-L6-v2-{digest[:16]}-g{GRAPH_VERSION}-fp32.onnx"
    built = fp32.model_path.stat().st_mtime_ns
    assert cached_model(default_model_dir(), cache_dir, "fp32") == fp32.model_path
    assert fp32.model_path.stat().st_mtime_ns == built  # found, not built again
    assert not list(cache_dir.glob("*.tmp"))


async def test_local_embedder_queries_on_one_thread_documents_on_all(
    cache_dir: Path, texts: list[str], numpy_vectors: F32
) -> None:
    embedder = LocalEmbedder(runtime="onnx", cache_dir=cache_dir, document_threads=2)
    try:
        assert embedder.model_name == LOCAL_MODEL_NAME  # an index built by numpy stays valid
        documents = await embedder.embed_documents(texts[:50])
        query = await embedder.embed_query(texts[3])
        assert np.abs(np.array(documents) - numpy_vectors[:50]).max() < 1e-4
        assert np.abs(np.array(query) - numpy_vectors[3]).max() < 1e-4
        queries, docs = await embedder.warm(), await embedder._documents()
        assert isinstance(queries, OnnxEncoder) and isinstance(docs, OnnxEncoder)
        assert (queries.threads, docs.threads) == (1, 2)
    finally:
        await embedder.aclose()


@pytest.mark.skipif(not int8_is_safe_here(), reason="int8 queries are used only with VNNI")
async def test_default_runtime_int8_queries_fp32_documents(
    cache_dir: Path, texts: list[str], numpy_vectors: F32
) -> None:
    embedder = LocalEmbedder(cache_dir=cache_dir, document_threads=1)
    try:
        assert embedder.model_name == LOCAL_MODEL_NAME  # the index holds fp32 vectors only
        documents = await embedder.embed_documents(texts[:20])
        query = await embedder.embed_query(texts[3])
        queries, docs = await embedder.warm(), await embedder._documents()
        assert isinstance(queries, OnnxEncoder) and isinstance(docs, OnnxEncoder)
        assert (queries.precision, docs.precision) == ("int8", "fp32")
        assert np.abs(np.array(documents) - numpy_vectors[:20]).max() < 1e-4
        assert float(np.dot(query, numpy_vectors[3])) > 0.98
    finally:
        await embedder.aclose()


def test_numpy_runtime_and_core_count() -> None:
    assert isinstance(load_encoder("numpy", purpose="queries"), MiniLMEncoder)
    assert all_cores() >= 1


def test_without_onnxruntime_the_numpy_model_is_used(tmp_path: Path) -> None:
    # A fresh interpreter where importing onnxruntime fails, as on a platform without its wheel.
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["onnxruntime"] = None
        from pathlib import Path
        from server.retrieval.local_encoders import load_encoder
        encoder = load_encoder("onnx", purpose="queries", cache_dir=Path({str(tmp_path)!r}))
        print(type(encoder).__name__, encoder.encode(["hello"]).shape)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "MiniLMEncoder (1, 384)"
    assert "onnxruntime unavailable" in done.stderr
    assert not list(tmp_path.iterdir())  # nothing was built


async def test_the_workers_parent_builds_the_graphs(tmp_path: Path, admin_dsn: str) -> None:
    """`serve --workers N`: built once before the workers start, not by each at its first question."""
    async with fresh_database(admin_dsn) as dsn:
        settings = make_settings(tmp_path, dsn)
        await _prepare(settings, loopback=True)  # the first start ingests, which builds them too
        shutil.rmtree(tmp_path / "models")  # as after a GRAPH_VERSION bump; the index stays
        await _prepare(settings, loopback=True)
    built = {path.stem.rsplit("-", 1)[-1] for path in (tmp_path / "models").glob("*.onnx")}
    assert built == ({"fp32", "int8"} if int8_is_safe_here() else {"fp32"})
