"""Ingestion of real books into real Postgres and the embedded Qdrant engine; idempotent re-ingest."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from server.ingest.book import ingest_book
from server.retrieval.embeddings import OpenAIEmbedder
from server.retrieval.vectorstore import Bm25Encoder, EdgeVectorStore
from server.settings import SAMPLE_BOOK_DIR
from server.store import Store
from server.tools.fake_llm import FakeLLM
from tests.conftest import CORPORA, fresh_database


@pytest.fixture
async def store(admin_dsn: str) -> AsyncIterator[Store]:
    async with fresh_database(admin_dsn) as dsn:
        s = await Store.connect(dsn)
        await s.migrate()
        yield s
        await s.close()


@pytest.fixture
async def embedder(fake_llm: FakeLLM) -> AsyncIterator[OpenAIEmbedder]:
    """Embeddings over real HTTP from the fake model server: the `openai` provider's code path."""
    client = openai.AsyncOpenAI(base_url=fake_llm.base_url, api_key="test")
    yield OpenAIEmbedder(client, model="text-embedding-3-small", dim=1536)
    await client.close()


@pytest.mark.slow
@pytest.mark.parametrize("book", ["book-a", "book-b"])
async def test_real_books_ingest_cleanly_and_reingest_embeds_nothing(
    book: str, store: Store, embedder: OpenAIEmbedder, tmp_path: Path
) -> None:
    root = CORPORA / book
    if not root.is_dir():
        pytest.skip("../shared/corpora is not here")
    vectors = EdgeVectorStore(tmp_path / "qdrant")
    await vectors.open(dim=embedder.dim, embedding_model=embedder.model_name)
    bm25 = Bm25Encoder()
    try:
        first = await ingest_book(root, store=store, vectors=vectors, embedder=embedder, bm25=bm25)
        assert first.chapters == len(await store.chapter_hashes()) > 10
        assert first.chapters_changed == first.chapters
        assert first.points_embedded == first.points == await vectors.count() > first.chunks > 100
        titles = await store.chapter_titles()
        assert all(title and url.startswith("/docs") for title, url in titles.values())

        again = await ingest_book(root, store=store, vectors=vectors, embedder=embedder, bm25=bm25)
        assert again.points_embedded == 0 and again.chapters_changed == 0
        assert again.points_deleted == 0 and await vectors.count() == first.points
    finally:
        await vectors.aclose()


async def test_changed_and_removed_chapters_are_reindexed(
    store: Store, embedder: OpenAIEmbedder, tmp_path: Path
) -> None:
    book = tmp_path / "book"
    shutil.copytree(SAMPLE_BOOK_DIR, book)
    vectors = EdgeVectorStore(tmp_path / "qdrant")
    await vectors.open(dim=embedder.dim, embedding_model=embedder.model_name)
    bm25 = Bm25Encoder()
    try:
        first = await ingest_book(book, store=store, vectors=vectors, embedder=embedder, bm25=bm25)
        chapter = book / "04-humanoid-locomotion.md"
        chapter.write_text(
            chapter.read_text()
            + "\n\n## Falling safely\n\nA humanoid that falls should tuck and roll.\n"
        )
        (book / "01-what-is-physical-ai.md").unlink()
        second = await ingest_book(book, store=store, vectors=vectors, embedder=embedder, bm25=bm25)
        assert second.chapters == first.chapters - 1
        assert second.chapters_changed == 1 and second.chapters_deleted == 1
        assert 0 < second.points_embedded < first.points // 3
        assert second.points_deleted > 0
        assert await vectors.count() == second.points
        hashes = await vectors.content_hashes()
        assert len(hashes) == second.points
        assert "what-is-physical-ai" not in " ".join(await store.chapter_hashes())
    finally:
        await vectors.aclose()


async def test_another_base_url_moves_every_source_link(
    store: Store, embedder: OpenAIEmbedder, tmp_path: Path
) -> None:
    # A book moved under a site's base URL (`ingest --base-url /book/docs`) keeps its text: its
    # chapters and passages must still take the new links, or every source link 404s.
    vectors = EdgeVectorStore(tmp_path / "qdrant")
    await vectors.open(dim=embedder.dim, embedding_model=embedder.model_name)
    bm25 = Bm25Encoder()
    kwargs = {"store": store, "vectors": vectors, "embedder": embedder, "bm25": bm25}
    try:
        first = await ingest_book(SAMPLE_BOOK_DIR, **kwargs)
        moved = await ingest_book(SAMPLE_BOOK_DIR, base_url="/book/docs", **kwargs)
        assert moved.chapters_changed == first.chapters
        assert moved.points_embedded == first.points and moved.points_deleted == 0
        urls = [url for _, url in (await store.chapter_titles()).values()]
        assert urls and all(url.startswith("/book/docs/") for url in urls)
        indices, values = bm25.encode_query("balance of a walking robot")
        hits = await vectors.search(
            dense=await embedder.embed_query("balance of a walking robot"),
            sparse_indices=indices,
            sparse_values=values,
            limit=50,
        )
        assert hits and all(h.payload["url"].startswith("/book/docs/") for h in hits)
        again = await ingest_book(SAMPLE_BOOK_DIR, base_url="/book/docs", **kwargs)
        assert again.points_embedded == 0 and again.chapters_changed == 0
    finally:
        await vectors.aclose()
