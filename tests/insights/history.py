"""A reading history generated through the real pipeline: topics asked in different words by
different readers, ratings, highlights. What the insights tests share."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from protocol.api import InsightsReport
from server.ingest.book import ingest_book
from server.insights.groups import normalise_rows
from server.retrieval.embeddings import LocalEmbedder
from server.retrieval.vectorstore import Bm25Encoder, EdgeVectorStore
from server.services import Services
from server.store import Store
from server.tools.client import connect
from server.tools.evaluation import CachedEmbedder
from server.tools.fake_llm import FakeLLM
from tests.conftest import LiveServer, fresh_database, make_settings, model_config, token_for

# Topics asked by several readers in different words. The books (two Physical AI courses)
# teach the first four; the rest are known gaps.
IN_BOOK = {
    "ros2-topics": [
        "What is a topic in ROS 2?",
        "How do ROS 2 nodes exchange messages over topics?",
        "Explain publishers and subscribers on a ROS 2 topic",
        "what are ros2 topics used for",
    ],
    "gazebo": [
        "What is Gazebo used for?",
        "Why simulate a robot in Gazebo before building it?",
        "How does the Gazebo simulator help test robots?",
        "What does Gazebo simulation do?",
    ],
    "isaac": [
        "What is NVIDIA Isaac Sim?",
        "What can I do with NVIDIA Isaac Sim?",
        "How is Isaac Sim used to train robots?",
        "Explain the Isaac Sim simulator from NVIDIA",
    ],
    "vla": [
        "What is a vision-language-action model?",
        "How do VLA models turn language into robot actions?",
        "Explain vision language action models",
        "What does a VLA model do in robotics?",
    ],
}
OFF_BOOK = {
    "pasta": [
        "How long should I cook spaghetti?",
        "What's the right time to boil pasta al dente?",
        "How many minutes does dry pasta take to cook?",
    ],
    "stocks": [
        "How do I buy shares of a company on the stock market?",
        "How can I start trading stocks as a beginner?",
        "What do I need to open a brokerage account and buy stocks?",
    ],
    "football": [
        "Which club has won the most Champions League titles?",
        "Who won the most UEFA Champions League trophies?",
        "What is the most successful team in Champions League history?",
    ],
    "hurricanes": [
        "How do hurricanes form?",
        "What causes a hurricane to develop over the ocean?",
        "How are tropical cyclones formed?",
    ],
}
FEW_READERS = [
    "How do I grow tomatoes on a balcony?",
    "Can tomatoes be grown in pots on a balcony?",
]
NOT_COVERED_REPLY = "The book does not cover how hurricanes form; it is about robotics."
READERS = [f"reader-{n}" for n in range(1, 7)]


# The sample book (server/sample_book) has no Gazebo or Isaac chapters: there, those are gaps too.
SAMPLE_IN_BOOK = {
    "ros2-topics": IN_BOOK["ros2-topics"],
    "vla": IN_BOOK["vla"],
    "zmp": [  # spelled out: MiniLM puts "ZMP" alone far from "zero-moment point" (0.09)
        "What is the zero-moment point?",
        "Explain the zero-moment point of a walking humanoid",
        "How does the zero-moment point relate to balance?",
        "What is the zero moment point (ZMP)?",
    ],
    "imu": [
        "What does an IMU measure?",
        "How does an inertial measurement unit work on a robot?",
        "What do the gyroscope and accelerometer of an IMU sense?",
    ],
}


@dataclasses.dataclass
class History:
    """What was asked: readers per topic (highlights as "popular" and "lonely"), the passages."""

    topics: dict[str, list[str]]
    asked: dict[str, list[str]]
    popular: str
    lonely: str

    def topic_of(self, label: str) -> str | None:
        """The topic a group's label (one of its questions) belongs to."""
        for name, questions in self.topics.items():
            if label in questions:
                return name
        return None

    def topics_of(self, report: InsightsReport) -> list[str | None]:
        """The topic of every group shown in a report, in its order."""
        return [self.topic_of(g.label) for g in report.topics]


async def ask(
    server: LiveServer, reader: str, sid: str, question: str, **fields: Any
) -> dict[str, Any]:
    """Ask over a socket of the reader's own; returns the `start` frame."""
    async with connect(server.ws_url, token_for(reader)) as chat:
        frames = await chat.ask(sid, question, **fields)
    assert frames[-1]["type"] == "done", frames[-1]
    return frames[0]


async def generate(
    server: LiveServer, fake_llm: FakeLLM, in_book: dict[str, list[str]] = IN_BOOK
) -> History:
    """Every topic asked by different readers, with ratings (pasta down, one gazebo answer
    down, other in-book answers up; the model says hurricanes are not covered), then a passage
    three readers highlighted and one only one reader did."""
    topics = {**in_book, **OFF_BOOK, "tomatoes": FEW_READERS}
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        asked = await _ask_topics(server, fake_llm, http, topics, in_book)
    return await _highlight(server, topics, asked)


async def _ask_topics(
    server: LiveServer,
    fake_llm: FakeLLM,
    http: httpx.AsyncClient,
    topics: dict[str, list[str]],
    in_book: dict[str, list[str]],
) -> dict[str, list[str]]:
    asked: dict[str, list[str]] = {}
    n = 0
    for topic, questions in topics.items():
        reply = NOT_COVERED_REPLY if topic == "hurricanes" else None
        with model_config(fake_llm, reply=reply):
            for i, question in enumerate(questions):
                reader = READERS[(n + i) % len(READERS)]
                start = await ask(server, reader, f"{topic}-{i}", question)
                asked.setdefault(topic, []).append(reader)
                rating: dict[str, Any] | None = None
                if topic == "pasta":
                    rating = {"value": "down", "comment": f"Nothing about pasta ({i})"}
                elif topic == "gazebo" and i == 0:
                    rating = {"value": "down", "comment": "Too short"}
                elif topic in in_book:
                    rating = {"value": "up"}
                if rating is not None:
                    saved = await http.put(
                        f"/v1/messages/{start['message_id']}/rating",
                        json=rating,
                        headers={"Authorization": f"Bearer {token_for(reader)}"},
                    )
                    assert saved.status_code == 200
        n += len(questions)
    return asked


async def _highlight(
    server: LiveServer, topics: dict[str, list[str]], asked: dict[str, list[str]]
) -> History:
    outline = await server.services.store.book_outline()
    passages = []
    for chapter in outline:
        found = await server.services.store.get_chapter(chapter.id)
        assert found is not None
        paragraphs = (" ".join(p.split()) for p in found.markdown.split("\n\n"))
        passages += [p for p in paragraphs if len(p) > 120 and p[0].isalpha()]
    popular = passages[0]
    everything = [q for qs in topics.values() for q in qs]
    lonely = await _least_like(server, passages[1:200], [popular, *everything])
    for i, reader in enumerate(READERS[:3]):
        selection = {"text": popular, "page_url": "https://book.example.org/docs/x"}
        await ask(server, reader, f"hl-{i}", "What does this mean?", selection=selection)
        asked.setdefault("popular", []).append(reader)
    await ask(server, READERS[4], "hl-x", "Why?", selection={"text": lonely})
    asked["lonely"] = [READERS[4]]
    return History(topics, asked, popular, lonely)


async def _least_like(server: LiveServer, candidates: list[str], others: list[str]) -> str:
    """The candidate least similar to every one of `others` (a passage no topic could absorb)."""
    embed = server.services.embedder.embed_documents
    a = np.asarray(await embed(candidates), dtype=np.float32)
    b = np.asarray(await embed(others), dtype=np.float32)
    closest = (normalise_rows(a) @ normalise_rows(b).T).max(axis=1)
    return candidates[int(np.argmin(closest))]


@contextlib.asynccontextmanager
async def book_server(
    root: Path, admin_dsn: str, fake_llm: FakeLLM, data_dir: Path, embedding_cache: Path
) -> AsyncIterator[tuple[LiveServer, str]]:
    """The server on one book in a database of its own: (server, database URL). The book is
    ingested with the server's MiniLM; document vectors are cached in `embedding_cache`."""
    async with fresh_database(admin_dsn) as dsn:
        store = await Store.connect(dsn)
        await store.migrate()
        vectors = EdgeVectorStore(data_dir / "qdrant")
        # Graphs built where the server below looks for them (its DATA_DIR), not in ~/.local.
        embedder = CachedEmbedder(LocalEmbedder(cache_dir=data_dir / "models"), embedding_cache)
        try:
            await vectors.open(dim=embedder.dim, embedding_model=embedder.model_name)
            await ingest_book(
                root, store=store, vectors=vectors, embedder=embedder, bm25=Bm25Encoder()
            )
            await asyncio.to_thread(embedder.save)
        finally:
            await vectors.aclose()
            await embedder.aclose()
            await store.close()
        settings = make_settings(
            data_dir, dsn, OPENAI_BASE_URL=fake_llm.base_url, OPENAI_API_KEY="k", BOOK_DIR=str(root)
        )
        services = await Services.start(settings, loopback=True)
        try:
            async with LiveServer(services) as server:
                yield server, dsn
        finally:
            await services.close()


def embedding_cache_dir(config: Any, tmp_path: Path) -> Path:
    """Where document vectors are kept between runs: .pytest_cache (not committed), or a
    temporary directory when the cache provider is off (`-p no:cacheprovider`)."""
    cache = getattr(config, "cache", None)
    return Path(cache.mkdir("corpus-embeddings")) if cache is not None else tmp_path
