"""Calibrating UNANSWERABLE_SIMILARITY: how close the book comes to questions it answers, and to
questions it does not contain, measured with the server's own Retriever on the real books.

In-book questions are eval/retrieval.jsonl (each with its book); off-book questions are
eval/off_book.jsonl, asked of every book. For each question the best dense cosine among the
passages the Retriever returns is what an answer records (`messages.best_similarity`); the
threshold is the one that separates the two sets best (Youden's J), ties to the lower value so
that fewer answered questions are reported as gaps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import tempfile
from collections import defaultdict
from pathlib import Path

import msgspec
import numpy as np

from server.ingest.markdown.document import load_book
from server.retrieval.retriever import Retriever
from server.retrieval.vectorstore import Bm25Encoder
from server.tools.evaluation import CachedEmbedder, EvalItem, index_book


class OffBookItem(msgspec.Struct, frozen=True):
    """A question neither book contains; `kind` is `unrelated` or `near` (the book's neighbourhood)."""

    id: str
    kind: str
    question: str


@dataclasses.dataclass(frozen=True, slots=True)
class Measured:
    """The best similarity the book offered one question."""

    book: str
    group: str  # "in:<kind>" or "off:<kind>"
    question: str
    similarity: float


def load_off_book(path: Path) -> list[OffBookItem]:
    """The off-book set, one JSON object per line."""
    decoder = msgspec.json.Decoder(OffBookItem)
    return [decoder.decode(line) for line in path.read_text().splitlines() if line.strip()]


async def measure(
    inside: list[EvalItem],
    outside: list[OffBookItem],
    corpora: Path,
    embedder: CachedEmbedder,
    *,
    k: int = 6,
) -> list[Measured]:
    """Best similarity of every in-book question in its book and every off-book one in each book."""
    bm25 = Bm25Encoder()
    by_book: dict[str, list[EvalItem]] = defaultdict(list)
    for item in inside:
        by_book[item.book].append(item)
    out: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="tc-gaps-") as tmp:
        for book, items in sorted(by_book.items()):
            chapters = await asyncio.to_thread(load_book, corpora / book)
            store = await index_book(chapters, embedder, bm25, Path(tmp) / book)
            try:
                retriever = Retriever(embedder, store, bm25)
                asked = [(f"in:{i.kind}", i.question, i.selection) for i in items]
                asked += [(f"off:{o.kind}", o.question, None) for o in outside]
                for group, question, selection in asked:
                    passages = await retriever.search(question, selection=selection, limit=k)
                    sims = [p.similarity for p in passages if p.similarity is not None]
                    out.append(Measured(book, group, question, max(sims, default=0.0)))
            finally:
                await store.aclose()
    embedder.save()
    return out


def choose_threshold(answered: list[float], gaps: list[float]) -> float:
    """The similarity below which a question counts as unanswerable: the cut that maximises
    (gaps below it) + (answered at or above it), the lower one among equals."""
    values = sorted(set(answered) | set(gaps))
    cuts = [values[0]] + [(a + b) / 2 for a, b in itertools.pairwise(values)]
    cuts.append(values[-1] + 1e-6)
    inside = np.asarray(answered)
    outside = np.asarray(gaps)
    best, best_j = cuts[0], -1.0
    for cut in cuts:
        j = float((outside < cut).mean() + (inside >= cut).mean())
        if j > best_j + 1e-12:
            best, best_j = cut, j
    return round(best, 3)


def report(measured: list[Measured], threshold: float) -> str:
    """Distribution per book and group, and how the threshold splits them."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for m in measured:
        groups[(m.book, m.group)].append(m.similarity)
        groups[("all", m.group)].append(m.similarity)
    lines = [
        f"threshold (UNANSWERABLE_SIMILARITY): {threshold:.3f}",
        f"{'book':7} {'group':15} {'n':>4} {'min':>6} {'p10':>6} {'median':>6} {'p90':>6} {'max':>6} {'below':>7}",
    ]
    for (book, group), values in sorted(groups.items()):
        a = np.asarray(values)
        p10, p50, p90 = np.percentile(a, [10, 50, 90])
        lines.append(
            f"{book:7} {group:15} {len(a):>4} {a.min():>6.3f} {p10:>6.3f} {p50:>6.3f} {p90:>6.3f}"
            f" {a.max():>6.3f} {(a < threshold).mean():>7.1%}"
        )
    return "\n".join(lines)


def worst(measured: list[Measured], threshold: float) -> str:
    """The questions on the wrong side of the threshold."""
    rows = [
        f"{m.book} {m.group:15} {m.similarity:.3f} {m.question[:90]}"
        for m in sorted(measured, key=lambda m: m.similarity)
        if (m.group.startswith("in:") and m.similarity < threshold)
        or (m.group.startswith("off:") and m.similarity >= threshold)
    ]
    return "\n".join(rows)
