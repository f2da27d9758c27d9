"""The report's rules on hand-made rows (no database, vectors chosen by the test): k-anonymity,
ranking, attribution, highlights, rows saved before the migration, and the HTML's safety."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from protocol.api import InsightsReport
from server.insights.html import render_html
from server.insights.report import ReportOptions, build_report
from server.store.insights import BookChapter, QuestionRow

NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
OUTLINE = [
    BookChapter("intro", "Introduction", "/docs/intro", ["Why robots"]),
    BookChapter("ros", "ROS 2", "/docs/ros", ["Topics", "Services"]),
    BookChapter("unasked", "Appendix", "/docs/appendix", []),
]
# one direction per topic: questions of a topic are identical in meaning, topics orthogonal
DIRECTIONS = {"ros": 0, "pasta": 1, "secret": 2, "hostile": 3, "passage": 4, "lonely": 5}


class TopicEmbedder:
    """Vectors by the topic named in brackets at the end of a question ("… [ros]")."""

    model_name = "test"
    dim = 8

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        out = []
        for text in texts:
            topic = re.search(r"\[(\w+)\]", text)
            vector = np.zeros(self.dim)
            vector[DIRECTIONS[topic.group(1)] if topic else 7] = 1.0
            out.append(vector.tolist())
        return out

    async def embed_query(self, text: str) -> list[float]:
        return (await self.embed_documents([text]))[0]

    async def aclose(self) -> None:
        pass


def row(n: int, reader: str, question: str, **fields: Any) -> QuestionRow:
    values: dict[str, Any] = {
        "message_id": f"m{n}",
        "reader": reader,
        "question": question,
        "selection": None,
        "page_chapter": None,
        "sources": [
            {
                "chapter": "ros",
                "title": "ROS 2",
                "section": "Topics",
                "url": "/docs/ros#topics",
                "score": 0.5,
            }
        ],
        "answer": "Topics carry messages [1].",
        "status": "complete",
        "best_similarity": 0.7,
        "not_covered": False,
        "rating": None,
        "comment": None,
        "created_at": NOW,
    }
    values.update(fields)
    return QuestionRow(**values)


async def _report(rows: list[QuestionRow], k: int = 3) -> InsightsReport:
    return await build_report(
        rows,
        OUTLINE,
        TopicEmbedder(),
        since=NOW - dt.timedelta(days=30),
        until=NOW,
        options=ReportOptions(min_readers=k, unanswerable_similarity=0.35, group_similarity=0.5),
    )


def _history() -> list[QuestionRow]:
    off = {"best_similarity": 0.12, "answer": "The book does not cover pasta.", "not_covered": True}
    rows = [
        row(1, "ann", "What is a topic? [ros]"),
        row(2, "bob", "Explain ROS topics [ros]", rating=1),
        row(3, "cat", "What are topics for? [ros]", rating=-1, comment="Too short"),
        row(4, "ann", "How long to boil pasta? [pasta]", **off, rating=-1, comment="Nothing here"),
        row(5, "bob", "Pasta cooking time? [pasta]", **off),
        row(6, "dan", "Minutes for spaghetti? [pasta]", **off),
        row(
            7,
            "eve",
            "Is my password safe? [secret]",
            best_similarity=0.1,
            rating=-1,
            comment="eve's secret",
        ),
        row(8, "fay", "Password safety? [secret]", best_similarity=0.1),
        row(9, "ann", "<script>alert(1)</script> [hostile]", best_similarity=0.2),
        row(10, "bob", "<img src=x onerror=alert(1)> [hostile]", best_similarity=0.2),
        row(11, "cat", "Hostile? [hostile]", best_similarity=0.2),
    ]
    for n, reader in enumerate(("ann", "bob", "cat")):
        selection = (
            "Topics decouple publishers from subscribers." if n else "Topics decouple publishers"
        )
        rows.append(
            row(
                20 + n,
                reader,
                "What does this mean? [passage]",
                selection=selection,
                page_chapter="ros",
            )
        )
    rows.append(
        row(
            30,
            "dan",
            "Why? [lonely]",
            selection="A lonely passage nobody else chose.",
            page_chapter="intro",
        )
    )
    return rows


async def test_groups_gaps_and_privacy() -> None:
    report = await _report(_history())
    labels = {t.label.split(" [")[0]: t for t in report.topics}
    assert report.totals.questions == 15 and report.totals.readers == 6
    # the secret topic (two readers) is counted, never shown: not its questions, not its comment
    assert (
        report.totals.hidden_groups == 2 and report.totals.hidden_questions == 3
    )  # and the lonely one
    encoded = msgspec.json.encode(report).decode()
    for hidden in ("password", "Password", "eve's secret"):
        assert hidden not in encoded
    for reader in ("ann", "bob", "cat", "dan", "eve", "fay"):
        assert f'"{reader}"' not in encoded
    # the known gap first; the book-covered topic with one unhappy reader after it
    pasta = next(t for t in report.topics if "pasta" in t.label.lower() or "spaghetti" in t.label)
    assert (pasta.readers, pasta.unanswerable, pasta.not_covered, pasta.rated_down) == (3, 3, 3, 1)
    assert pasta.gap_readers == 3 and pasta.failing == 3 and report.gaps[0].id == pasta.id
    ros = next(t for t in report.topics if "[ros]" in t.label)
    assert (ros.failing, ros.gap_readers, ros.rated_up, ros.rated_down) == (1, 1, 1, 1)
    assert report.gaps.index(ros) > report.gaps.index(pasta)
    assert ros.nearest is not None and ros.nearest.chapter == "ros"
    assert len(labels) == 4
    # rated down: only in shown groups, gaps first
    assert [r.comment for r in report.rated_down] == ["Nothing here", "Too short"]
    assert report.rated_down[0].sources[0].url == "/docs/ros#topics"


async def test_chapters_highlights_and_the_histogram() -> None:
    report = await _report(_history())
    chapters = {c.chapter: c for c in report.chapters}
    assert list(chapters) == ["intro", "ros", "unasked"]  # the book's order, unasked ones too
    # answerable questions only: three about ROS topics and the four highlight questions
    assert chapters["ros"].questions == 7 and chapters["ros"].sections[0].section == "Topics"
    assert (chapters["ros"].rated_up, chapters["ros"].rated_down) == (1, 1)  # not the pasta one
    assert chapters["ros"].highlights == 3 and chapters["intro"].highlights == 1
    assert chapters["unasked"].questions == 0
    # the shorter selection is inside the longer: one passage, three readers; the lonely one hidden
    assert [(h.text, h.readers, h.highlights) for h in report.highlights] == [
        ("Topics decouple publishers from subscribers.", 3, 3)
    ]
    assert "lonely" not in msgspec.json.encode(report).decode()
    bins = {b.low: b.questions for b in report.similarity}
    assert bins[0.1] == 5 and bins[0.2] == 3 and bins[0.7] == 7 and sum(bins.values()) == 15
    assert report.totals.unanswerable == 8


async def test_rows_from_before_the_migration() -> None:
    old = [
        row(
            n,
            reader,
            f"Old question {n} [ros]",
            best_similarity=None,
            not_covered=None,
            answer=answer,
        )
        for n, (reader, answer) in enumerate(
            [("a", "The book does not cover this."), ("b", "Topics [1]."), ("c", "Topics [2].")]
        )
    ]
    report = await _report(old)
    [topic] = report.topics
    assert topic.unanswerable == 0 and topic.mean_similarity is None  # unknown, not a gap
    assert topic.not_covered == 1  # read from the answer's text
    assert sum(b.questions for b in report.similarity) == 0


async def test_an_empty_period() -> None:
    report = await _report([])
    assert report.totals.questions == 0 and report.topics == [] and report.gaps == []
    assert len(report.chapters) == 3
    assert "None in this period." in render_html(report)


def assert_self_contained(html: str) -> None:
    """Nothing in the page loads anything: no scripts, frames, images, external styles or fonts."""
    tags = re.findall(r"<[a-zA-Z][^>]*>", html)
    for tag in tags:
        name = re.match(r"<([a-zA-Z]+)", tag)
        assert name and name.group(1).lower() not in (
            "script", "img", "iframe", "link", "object", "embed", "image", "use", "audio", "video"
        ), tag  # fmt: skip
        assert not re.search(r"\s(src|srcset|xlink:href|action|formaction)=", tag), tag
        href = re.search(r'\shref="([^"]*)"', tag)
        assert href is None or href.group(1).startswith("https://"), tag
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    assert len(styles) == 1 and "url(" not in styles[0] and "@import" not in styles[0]


async def test_html_is_self_contained_and_escapes_everything() -> None:
    report = await _report(_history(), k=2)  # the hostile and secret topics are shown too
    html = render_html(report, book_url="https://book.example.org/")
    assert html.startswith("<!doctype html>") and html.count("<svg") == 3
    assert_self_contained(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="https://book.example.org/docs/ros#topics"' in html
    plain = render_html(report)  # without the book's URL, book paths are text, not links
    assert "<a " not in plain and "/docs/ros#topics" in plain
