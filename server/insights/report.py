"""The authors' report for a period: questions per chapter and section, similar questions grouped,
the groups where the book fell short first, answers rated down, passages most highlighted.

Privacy: reader ids are only counted. A group's questions (its label, examples, the answers
rated down in it and their comments) are shown only when at least `min_readers` distinct readers
asked in it; smaller groups are counted, not shown. Highlighted passages follow the same rule.
Deleted data is simply not in the tables any more: the report is computed from them each time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from protocol.api import (
    ChapterInsight,
    Highlight,
    InsightsReport,
    InsightsSettings,
    InsightsTotals,
    RatedDown,
    SectionCount,
    SimilarityBin,
    SourceRef,
    TopicGroup,
)
from server.insights.groups import GROUP_SIMILARITY, group_questions, normalise_rows
from server.insights.signals import says_not_covered
from server.retrieval.embeddings import Embedder
from server.store.insights import BookChapter, QuestionRow

MAX_EXAMPLES = 5
MAX_ANSWER_CHARS = 4000
MAX_HIGHLIGHT_CHARS = 400
SELECTION_IN_KEY_CHARS = 300  # of a highlighted passage, embedded with its question
HISTOGRAM_BINS = 20


@dataclasses.dataclass(frozen=True, slots=True)
class ReportOptions:
    """What decides the report besides the data."""

    min_readers: int = 3
    unanswerable_similarity: float = 0.35
    group_similarity: float = GROUP_SIMILARITY


@dataclasses.dataclass(slots=True)
class _Asked:
    """One question with what the report derives from it."""

    row: QuestionRow
    display: str
    top: SourceRef | None
    unanswerable: bool
    not_covered: bool

    @property
    def failing(self) -> bool:
        return self.unanswerable or self.not_covered or self.row.rating == -1


async def build_report(
    rows: Sequence[QuestionRow],
    outline: Sequence[BookChapter],
    embedder: Embedder,
    *,
    since: dt.datetime,
    until: dt.datetime,
    options: ReportOptions,
) -> InsightsReport:
    """The report over `rows` (the period's questions, oldest first)."""
    asked = [_derive(r, options.unanswerable_similarity) for r in rows]
    texts = [_grouping_text(a.row) for a in asked]
    vectors = (
        np.asarray(await embedder.embed_documents(texts), dtype=np.float32)
        if texts
        else np.zeros((0, 1), dtype=np.float32)
    )
    labels = group_questions(texts, vectors, options.group_similarity)
    members: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        members[label].append(i)
    unit = normalise_rows(vectors) if len(vectors) else vectors
    shown: list[tuple[list[int], dict[str, Any]]] = []
    hidden_groups = hidden_questions = 0
    for idx in members.values():
        if len({asked[i].row.reader for i in idx}) < options.min_readers:
            hidden_groups += 1
            hidden_questions += len(idx)
            continue
        shown.append((idx, _group_fields(idx, asked, unit)))
    shown.sort(key=lambda g: (-g[1]["questions"], -g[1]["readers"], g[1]["label"]))
    topics = [TopicGroup(id=n, **fields) for n, (_, fields) in enumerate(shown, start=1)]
    group_of = {i: t.id for (idx, _), t in zip(shown, topics, strict=True) for i in idx}
    gaps = sorted((t for t in topics if t.gap_readers), key=_gap_rank)
    gap_order = {t.id: n for n, t in enumerate(gaps)}
    rated_down = [
        RatedDown(
            group=group_of[i],
            question=a.display,
            answer=_clip(a.row.answer, MAX_ANSWER_CHARS),
            comment=a.row.comment,
            best_similarity=a.row.best_similarity,
            sources=[_ref(s) for s in a.row.sources if s.get("chapter")],
        )
        for i, a in enumerate(asked)
        if a.row.rating == -1 and i in group_of
    ]
    rated_down.sort(key=lambda r: gap_order.get(r.group, len(gap_order)))
    highlights = _highlights(asked, options.min_readers)
    return InsightsReport(
        format="textbook-chat-insights/1",
        generated_at=dt.datetime.now(dt.UTC).isoformat(),
        since=since.isoformat(),
        until=until.isoformat(),
        settings=InsightsSettings(
            min_readers=options.min_readers,
            unanswerable_similarity=options.unanswerable_similarity,
            group_similarity=options.group_similarity,
        ),
        totals=InsightsTotals(
            questions=len(asked),
            readers=len({a.row.reader for a in asked}),
            unanswerable=sum(a.unanswerable for a in asked),
            not_covered=sum(a.not_covered for a in asked),
            rated_up=sum(a.row.rating == 1 for a in asked),
            rated_down=sum(a.row.rating == -1 for a in asked),
            highlights=sum(a.row.selection is not None for a in asked),
            groups=len(members),
            hidden_groups=hidden_groups,
            hidden_questions=hidden_questions,
        ),
        gaps=gaps,
        topics=topics,
        chapters=_chapters(asked, outline),
        rated_down=rated_down,
        highlights=highlights,
        similarity=_histogram(asked),
    )


def _derive(row: QuestionRow, threshold: float) -> _Asked:
    top = next((_ref(s) for s in row.sources if s.get("chapter")), None)
    not_covered = row.not_covered if row.not_covered is not None else says_not_covered(row.answer)
    unanswerable = row.best_similarity is not None and row.best_similarity < threshold
    display = " ".join(row.question.split())
    if row.selection:
        display += f" — on “{_clip(' '.join(row.selection.split()), 80)}”"
    return _Asked(row, display, top, unanswerable, not_covered)


def _grouping_text(row: QuestionRow) -> str:
    # "What does this mean?" about two different passages are two different questions.
    if row.selection:
        return f"{row.question}\n{row.selection[:SELECTION_IN_KEY_CHARS]}"
    return row.question


def _group_fields(
    idx: list[int], asked: list[_Asked], unit: np.ndarray[Any, Any]
) -> dict[str, Any]:
    vectors = unit[idx]
    centre = vectors.mean(axis=0)
    closeness = vectors @ centre
    by_typical = [idx[j] for j in np.argsort(-closeness, kind="stable")]
    seen: list[str] = []
    for i in by_typical:
        if asked[i].display.lower() not in (s.lower() for s in seen):
            seen.append(asked[i].display)
    sims = [s for i in idx if (s := asked[i].row.best_similarity) is not None]
    closest = max(  # where the book came closest, if it came close at all
        (i for i in idx if asked[i].top is not None and not asked[i].unanswerable),
        key=lambda i: (asked[i].row.best_similarity or 0.0, -i),
        default=None,
    )
    failing = [i for i in idx if asked[i].failing]
    return {
        "label": seen[0],
        "questions": len(idx),
        "readers": len({asked[i].row.reader for i in idx}),
        "unanswerable": sum(asked[i].unanswerable for i in idx),
        "not_covered": sum(asked[i].not_covered for i in idx),
        "rated_up": sum(asked[i].row.rating == 1 for i in idx),
        "rated_down": sum(asked[i].row.rating == -1 for i in idx),
        "failing": len(failing),
        "gap_readers": len({asked[i].row.reader for i in failing}),
        "mean_similarity": round(float(np.mean(sims)), 4) if sims else None,
        "nearest": asked[closest].top if closest is not None else None,
        "examples": seen[1 : 1 + MAX_EXAMPLES],
    }


def _gap_rank(t: TopicGroup) -> tuple[float, int, float, int]:
    """Worst first: readers who hit the gap, weighted by how consistently the group fails."""
    failing_share = t.failing / t.questions
    return (-t.gap_readers * failing_share, -t.gap_readers, t.mean_similarity or 0.0, t.id)


def _chapters(asked: list[_Asked], outline: Sequence[BookChapter]) -> list[ChapterInsight]:
    known = {c.id: c for c in outline}
    order = {c.id: n for n, c in enumerate(outline)}
    questions: dict[str, list[_Asked]] = defaultdict(list)
    ratings: dict[str, Counter[int]] = defaultdict(Counter)
    highlights: Counter[str] = Counter()
    for a in asked:
        chapter = a.top.chapter if a.top else None
        # the best source of a question the book had nothing close to is not where it belongs
        if chapter and not a.unanswerable:
            questions[chapter].append(a)
            if a.row.rating is not None:
                ratings[chapter][a.row.rating] += 1
        if a.row.selection:
            where = a.row.page_chapter or chapter
            if where:
                highlights[where] += 1
    ids = set(known) | set(questions) | set(ratings) | set(highlights)
    out = []
    for cid in sorted(ids, key=lambda c: (order.get(c, len(order)), c)):
        book = known.get(cid)
        mine = questions.get(cid, [])
        sections = Counter(a.top.section if a.top else None for a in mine)
        section_order = {s: n for n, s in enumerate(book.sections)} if book else {}
        out.append(
            ChapterInsight(
                chapter=cid,
                title=book.title if book else cid,
                url=book.url if book else None,
                questions=len(mine),
                readers=len({a.row.reader for a in mine}),
                rated_up=ratings[cid][1],
                rated_down=ratings[cid][-1],
                highlights=highlights[cid],
                sections=[
                    SectionCount(section=s, questions=n)
                    for s, n in sorted(
                        sections.items(),
                        key=lambda kv: (-kv[1], section_order.get(kv[0] or "", -1), kv[0] or ""),
                    )
                ],
            )
        )
    return out


def _highlights(asked: list[_Asked], min_readers: int) -> list[Highlight]:
    """Highlighted passages; one that contains another (a longer selection) counts for both."""
    found: dict[tuple[str | None, str], list[_Asked]] = defaultdict(list)
    for a in asked:
        if a.row.selection:
            chapter = a.row.page_chapter or (a.top.chapter if a.top else None)
            found[(chapter, " ".join(a.row.selection.split()))].append(a)
    keys = sorted(found, key=lambda k: (-len(k[1]), k))
    merged: dict[tuple[str | None, str], list[_Asked]] = {}
    for key in keys:
        home = next((m for m in merged if m[0] == key[0] and key[1].lower() in m[1].lower()), None)
        merged.setdefault(home or key, []).extend(found[key])
    out = []
    for (chapter, text), items in merged.items():
        readers = len({a.row.reader for a in items})
        if readers >= min_readers:
            out.append(Highlight(chapter, _clip(text, MAX_HIGHLIGHT_CHARS), len(items), readers))
    out.sort(key=lambda h: (-h.readers, -h.highlights, h.chapter or "", h.text))
    return out


def _histogram(asked: list[_Asked]) -> list[SimilarityBin]:
    counts = [0] * HISTOGRAM_BINS
    for a in asked:
        s = a.row.best_similarity
        if s is not None:
            counts[min(HISTOGRAM_BINS - 1, max(0, int(s * HISTOGRAM_BINS)))] += 1
    width = 1 / HISTOGRAM_BINS
    return [
        SimilarityBin(round(n * width, 3), round((n + 1) * width, 3), c)
        for n, c in enumerate(counts)
    ]


def _ref(source: dict[str, Any]) -> SourceRef:
    return SourceRef(
        chapter=str(source.get("chapter")),
        title=str(source.get("title") or source.get("chapter")),
        section=source.get("section") or None,
        url=source.get("url") or None,
    )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
