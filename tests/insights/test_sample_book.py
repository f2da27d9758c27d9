"""The insights report over the sample book (the one `make serve` starts with), quickly: the
same generated history as over the corpora. `TC_INSIGHTS_SAMPLE=1` writes the README's sample
(docs/insights/: the JSON, the HTML and a screenshot of it)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest

from protocol.api import InsightsReport
from server.insights.html import render_html
from server.settings import SAMPLE_BOOK_DIR
from server.tools.fake_llm import FakeLLM
from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import ROOT, LiveServer, token_for
from tests.insights.history import (
    OFF_BOOK,
    SAMPLE_IN_BOOK,
    book_server,
    embedding_cache_dir,
    generate,
)

SAMPLE_DIR = ROOT / "docs" / "insights"


@pytest.fixture
async def sample(
    admin_dsn: str, fake_llm: FakeLLM, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[LiveServer, str]]:
    cache = embedding_cache_dir(request.config, tmp_path) / "sample-book.npz"
    async with book_server(SAMPLE_BOOK_DIR, admin_dsn, fake_llm, tmp_path / "data", cache) as got:
        yield got


async def test_sample_book_report(sample: tuple[LiveServer, str], fake_llm: FakeLLM) -> None:
    server, _ = sample
    history = await generate(server, fake_llm, SAMPLE_IN_BOOK)
    async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as http:
        author = {"Authorization": f"Bearer {token_for('editor', role='user,admin')}"}
        got = await http.get("/v1/insights?days=1", headers=author)
    assert got.status_code == 200
    report = msgspec.json.decode(got.content, type=InsightsReport)
    gaps = [history.topic_of(g.label) for g in report.gaps]
    assert set(gaps[: len(OFF_BOOK)]) == set(OFF_BOOK), gaps
    shown = {history.topic_of(t.label) for t in report.topics}
    assert set(SAMPLE_IN_BOOK) <= shown
    for topic in report.topics:
        if history.topic_of(topic.label) in SAMPLE_IN_BOOK:
            assert topic.unanswerable <= 1 and topic.nearest is not None
    if os.environ.get("TC_INSIGHTS_SAMPLE"):
        await _write_sample(report)


async def _write_sample(report: InsightsReport) -> None:
    SAMPLE_DIR.mkdir(parents=True, exist_ok=True)
    (SAMPLE_DIR / "sample-report.json").write_bytes(
        msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"
    )
    html = SAMPLE_DIR / "sample-report.html"
    html.write_text(render_html(report, book_url="https://book.example.org/"))
    if not await asyncio.to_thread(CHROMIUM.exists):
        return
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1100, "height": 1400})
        await page.goto(html.as_uri())
        await page.screenshot(path=str(SAMPLE_DIR / "sample-report.png"))
        await browser.close()
