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

import httpx
import msgspec
import pytest

from protocol.api import InsightsReport
from server.insights.service import options_from, period, report_for
from server.tools.fake_llm import FakeLLM
from tests.conftest import (
    CORPORA,
    JWT_SECRET,
    LiveServer,
    token_for,
)
from tests.insights.history import (
    FEW_READERS,
    IN_BOOK,
    OFF_BOOK,
    READERS,
    book_server,
    embedding_cache_dir,
    generate,
)
from tests.insights.test_report import assert_self_contained


@pytest.fixture(scope="module")
def embedding_cache(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Document vectors of the books, kept between runs (.pytest_cache is not committed)."""
    return embedding_cache_dir(request.config, tmp_path_factory.mktemp("vectors")) / "minilm.npz"


@pytest.fixture(params=["book-a", "book-b"])
async def book(
    request: pytest.FixtureRequest,
    admin_dsn: str,
    fake_llm: FakeLLM,
    tmp_path: Path,
    embedding_cache: Path,
) -> AsyncIterator[tuple[LiveServer, str]]:
    """A server on one real book, in a database of its own: (server, database URL)."""
    root = CORPORA / request.param
    if not root.is_dir():
        pytest.skip(f"{root} is not here")
    async with book_server(root, admin_dsn, fake_llm, tmp_path / "data", embedding_cache) as got:
        yield got


@pytest.mark.slow
async def test_gaps_come_out_on_top_private_and_deletable(
    book: tuple[LiveServer, str], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    server, dsn = book
    services = server.services
    history = await generate(server, fake_llm)
    asked, popular, lonely = history.asked, history.popular, history.lonely
    since, until = period(None, None, 1)
    report = await report_for(
        services.store, services.embedder, since, until, options_from(services.settings)
    )

    if os.environ.get("TC_PRINT_REPORT"):
        print(msgspec.json.format(msgspec.json.encode(report), indent=1).decode())
    # Similar questions are one topic each; the tomato questions (two readers) are hidden.
    assert sorted(t for t in history.topics_of(report) if t) == sorted([*IN_BOOK, *OFF_BOOK])
    hidden_questions = len(FEW_READERS) + 1  # the lonely highlight's question too
    assert report.totals.hidden_questions == hidden_questions
    assert (
        report.totals.questions
        == sum(len(q) for q in [*IN_BOOK.values(), *OFF_BOOK.values()]) + len(FEW_READERS) + 4
    )

    # The known gaps rank first.
    gaps = [history.topic_of(g.label) for g in report.gaps]
    assert set(gaps[: len(OFF_BOOK)]) == set(OFF_BOOK), gaps
    for g in report.gaps[: len(OFF_BOOK)]:
        assert g.gap_readers == g.readers == 3 and g.failing == g.questions
    by_topic = {history.topic_of(g.label): g for g in report.topics}
    for topic in OFF_BOOK:
        assert by_topic[topic].unanswerable >= 2, (topic, by_topic[topic])
        if by_topic[topic].unanswerable == by_topic[topic].questions:
            assert by_topic[topic].nearest is None  # nothing came close
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
        assert history.topics_of(
            msgspec.json.decode(over_http.content, type=InsightsReport)
        ) == history.topics_of(report)
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
    assert (
        history.topics_of(from_cli) == history.topics_of(report)
        and from_cli.totals == report.totals
    )
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
    assert "football" not in history.topics_of(after)
    gone = sum(1 for readers in asked.values() for r in readers if r == football_reader)
    assert after.totals.questions == report.totals.questions - gone
    assert after.totals.readers == report.totals.readers - 1
    assert json.dumps(msgspec.to_builtins(after)).count("Champions League") == 0
