"""`insights` on a history generated through the real pipeline over each real book, where the
gaps are known in advance: questions about things the book does not contain must come out on
top, small groups stay hidden, deleted readers vanish, and only authors get the report.

Each book is ingested with the server's MiniLM (document vectors cached under .pytest_cache, so
only the first run embeds the books: ~3 minutes, then ~30 s a book); readers ask over real
sockets, so every answer's best similarity is a real retrieval score.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest

from protocol.api import InsightsReport
from server.ingest.book import ingest_book
from server.insights.groups import normalise_rows
from server.insights.service import options_from, period, report_for
from server.retrieval.embeddings import LocalEmbedder
from server.retrieval.vectorstore import Bm25Encoder, EdgeVectorStore
from server.services import Services
from server.store import Store
from server.tools.client import connect
from server.tools.evaluation import CachedEmbedder
from server.tools.fake_llm import FakeLLM
from tests.conftest import (
    CORPORA,
    JWT_SECRET,
    LiveServer,
    fresh_database,
    make_settings,
    model_config,
    token_for,
)
from tests.insights.test_report import assert_self_contained

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


def _topic_of(label: str) -> str | None:
    for name, questions in {**IN_BOOK, **OFF_BOOK, "tomatoes": FEW_READERS}.items():
        if label in questions:
            return name
    return None


@pytest.fixture(scope="module")
def embedding_cache(request: pytest.FixtureRequest) -> Path:
    """Document vectors of the books, kept between runs (.pytest_cache is not committed)."""
    return Path(request.config.cache.mkdir("corpus-embeddings")) / "minilm.npz"


@pytest.fixture(params=["book-a", "book-b"])
async def book(
    request: pytest.FixtureRequest,
    admin_dsn: str,
    fake_llm: FakeLLM,
    tmp_path: Path,
    embedding_cache: Path,
) -> AsyncIterator[tuple[LiveServer, str, Path]]:
    """A server on one real book, in a database of its own: (server, database URL, data dir)."""
    root = CORPORA / request.param
    if not root.is_dir():
        pytest.skip(f"{root} is not here")
    async with fresh_database(admin_dsn) as dsn:
        data_dir = tmp_path / "data"
        store = await Store.connect(dsn)
        await store.migrate()
        vectors = EdgeVectorStore(data_dir / "qdrant")
        embedder = CachedEmbedder(LocalEmbedder(), embedding_cache)
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
                yield server, dsn, data_dir
        finally:
            await services.close()


async def _ask(
    server: LiveServer, reader: str, sid: str, question: str, **fields: Any
) -> dict[str, Any]:
    async with connect(server.ws_url, token_for(reader)) as chat:
        frames = await chat.ask(sid, question, **fields)
    assert frames[-1]["type"] == "done", frames[-1]
    return frames[0]


async def _history(server: LiveServer, fake_llm: FakeLLM) -> tuple[dict[str, list[str]], str, str]:
    """Every topic asked by different readers, and highlights; returns who asked in which topic
    (highlights as "popular" and "lonely") and the two highlighted passages."""
    asked: dict[str, list[str]] = {}
    http = httpx.AsyncClient(base_url=server.http_url)
    n = 0
    for topic, questions in {**IN_BOOK, **OFF_BOOK, "tomatoes": FEW_READERS}.items():
        reply = NOT_COVERED_REPLY if topic == "hurricanes" else None
        with model_config(fake_llm, reply=reply):
            for i, question in enumerate(questions):
                reader = READERS[(n + i) % len(READERS)]
                start = await _ask(server, reader, f"{topic}-{i}", question)
                asked.setdefault(topic, []).append(reader)
                rating: dict[str, Any] | None = None
                if topic == "pasta":
                    rating = {"value": "down", "comment": f"Nothing about pasta ({i})"}
                elif topic == "gazebo" and i == 0:
                    rating = {"value": "down", "comment": "Too short"}
                elif topic in IN_BOOK:
                    rating = {"value": "up"}
                if rating is not None:
                    saved = await http.put(
                        f"/v1/messages/{start['message_id']}/rating",
                        json=rating,
                        headers={"Authorization": f"Bearer {token_for(reader)}"},
                    )
                    assert saved.status_code == 200
        n += len(questions)
    # A passage three readers highlighted, and one only one reader did.
    outline = await server.services.store.book_outline()
    passages = []
    for chapter in outline:
        found = await server.services.store.get_chapter(chapter.id)
        assert found is not None
        passages += [
            line.strip()
            for line in found.markdown.splitlines()
            if len(line.strip()) > 120 and line.strip()[0].isalpha()
        ]
    popular = passages[0]
    lonely = await _least_like(server, passages[1:200], [popular, *_all_questions()])
    for i, reader in enumerate(READERS[:3]):
        selection = {"text": popular, "page_url": "https://book.example.org/docs/x"}
        await _ask(server, reader, f"hl-{i}", "What does this mean?", selection=selection)
        asked.setdefault("popular", []).append(reader)
    await _ask(server, READERS[4], "hl-x", "Why?", selection={"text": lonely})
    asked["lonely"] = [READERS[4]]
    await http.aclose()
    return asked, popular, lonely


def _all_questions() -> list[str]:
    return [q for qs in [*IN_BOOK.values(), *OFF_BOOK.values(), FEW_READERS] for q in qs]


async def _least_like(server: LiveServer, candidates: list[str], others: list[str]) -> str:
    """The candidate least similar to every one of `others` (a passage no topic could absorb)."""
    embed = server.services.embedder.embed_documents
    a = np.asarray(await embed(candidates), dtype=np.float32)
    b = np.asarray(await embed(others), dtype=np.float32)
    closest = (normalise_rows(a) @ normalise_rows(b).T).max(axis=1)
    return candidates[int(np.argmin(closest))]


def _topics(report: InsightsReport) -> list[str | None]:
    return [_topic_of(g.label) for g in report.topics]


@pytest.mark.slow
async def test_gaps_come_out_on_top_private_and_deletable(
    book: tuple[LiveServer, str, Path], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    server, dsn, _ = book
    services = server.services
    asked, popular, lonely = await _history(server, fake_llm)
    since, until = period(None, None, 1)
    report = await report_for(
        services.store, services.embedder, since, until, options_from(services.settings)
    )

    if os.environ.get("TC_PRINT_REPORT"):
        print(msgspec.json.format(msgspec.json.encode(report), indent=1).decode())
    # Similar questions are one topic each; the tomato questions (two readers) are hidden.
    assert sorted(t for t in _topics(report) if t) == sorted([*IN_BOOK, *OFF_BOOK])
    hidden_questions = len(FEW_READERS) + 1  # the lonely highlight's question too
    assert report.totals.hidden_questions == hidden_questions
    assert (
        report.totals.questions
        == sum(len(q) for q in [*IN_BOOK.values(), *OFF_BOOK.values()]) + len(FEW_READERS) + 4
    )

    # The known gaps rank first.
    gaps = [_topic_of(g.label) for g in report.gaps]
    assert set(gaps[: len(OFF_BOOK)]) == set(OFF_BOOK), gaps
    for g in report.gaps[: len(OFF_BOOK)]:
        assert g.gap_readers == g.readers == 3 and g.failing == g.questions
    by_topic = {_topic_of(g.label): g for g in report.topics}
    for topic in OFF_BOOK:
        assert by_topic[topic].unanswerable >= 2, (topic, by_topic[topic])
    for topic in IN_BOOK:
        assert by_topic[topic].unanswerable <= 1, (topic, by_topic[topic])
        assert by_topic[topic].nearest is not None
    assert by_topic["hurricanes"].not_covered == 3
    assert report.totals.not_covered == 3
    assert by_topic["pasta"].rated_down == 3 and by_topic["gazebo"].rated_down == 1

    # Rated-down answers with their comments, questions, sources and answers.
    comments = {r.comment for r in report.rated_down}
    assert comments == {
        "Nothing about pasta (0)",
        "Nothing about pasta (1)",
        "Nothing about pasta (2)",
        "Too short",
    }
    assert all(r.answer and r.sources for r in report.rated_down)
    assert report.rated_down[-1].comment == "Too short"  # gaps first

    # Per chapter and section: every question the book could answer, once, under its best
    # source; ratings of the others are not pinned on whatever chapter came up.
    t = report.totals
    assert sum(c.questions for c in report.chapters) == t.questions - t.unanswerable
    assert all(sum(s.questions for s in c.sections) == c.questions for c in report.chapters)
    up_unanswerable = sum(by_topic[topic].unanswerable for topic in IN_BOOK)
    assert 15 - up_unanswerable <= sum(c.rated_up for c in report.chapters) <= 15
    assert sum(c.rated_down for c in report.chapters) <= 1  # the gazebo one; pasta is nowhere
    assert sum(c.highlights for c in report.chapters) == 4

    # Highlights: the popular passage (three readers) is shown, the lonely one is not.
    assert [h.readers for h in report.highlights] == [3]
    assert report.highlights[0].text.startswith(popular[:100])
    encoded = msgspec.json.encode(report).decode()
    for reader in READERS:  # never who asked
        assert reader not in encoded
    for hidden in [*FEW_READERS, lonely[:60]]:
        assert hidden not in encoded

    # Authors only, over HTTP; the HTML opens without a server.
    async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as http:
        reader = {"Authorization": f"Bearer {token_for('reader-1')}"}
        author = {"Authorization": f"Bearer {token_for('editor', role='admin')}"}
        assert (await http.get("/v1/insights")).status_code == 401
        refused = await http.get("/v1/insights", headers=reader)
        assert (
            refused.status_code == 403
            and "'role' claim is 'admin'" in refused.json()["error"]["message"]
        )
        assert (await http.get("/v1/insights?days=x", headers=author)).status_code == 422
        assert (
            await http.get("/v1/insights?since=2030-01-01&until=2029-01-01", headers=author)
        ).status_code == 422
        over_http = await http.get("/v1/insights?days=1", headers=author)
        assert over_http.status_code == 200
        assert _topics(msgspec.json.decode(over_http.content, type=InsightsReport)) == _topics(
            report
        )
        page = await http.get("/v1/insights?format=html", headers=author)
        assert (
            page.status_code == 200
            and "default-src 'none'" in page.headers["content-security-policy"]
        )
    html = page.text
    assert "<svg" in html and "Where the book falls short" in html
    assert_self_contained(html)
    assert OFF_BOOK["pasta"][0] in html or any(q in html for q in OFF_BOOK["pasta"])

    # The CLI writes the same report, as JSON and HTML files.
    out = tmp_path / "report"
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "DATA_DIR": str(tmp_path / "cli"),
        "JWT_SECRET": JWT_SECRET,
        "LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", "insights", "--days", "1", "--json", str(out / "r.json"),
        "--html", str(out / "r.html"), "--book-url", "https://book.example.org",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()
    assert f"{report.totals.questions} questions from {len(READERS)} readers" in stdout.decode()
    from_cli = msgspec.json.decode((out / "r.json").read_bytes(), type=InsightsReport)
    assert _topics(from_cli) == _topics(report) and from_cli.totals == report.totals
    assert 'href="https://book.example.org/docs/' in (out / "r.html").read_text()

    # A deleted reader is gone from the report: football loses one of its three readers.
    football_reader = asked["football"][0]
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        erased = await http.delete(
            "/v1/me", headers={"Authorization": f"Bearer {token_for(football_reader)}"}
        )
    assert erased.status_code == 200
    after = await report_for(
        services.store, services.embedder, since, until, options_from(services.settings)
    )
    assert "football" not in _topics(after)
    gone = sum(1 for readers in asked.values() for r in readers if r == football_reader)
    assert after.totals.questions == report.totals.questions - gone
    assert after.totals.readers == report.totals.readers - 1
    assert json.dumps(msgspec.to_builtins(after)).count("Champions League") == 0
