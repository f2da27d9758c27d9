"""What an answer tells the authors, recorded when it is saved: how close the book came to the
question, and whether the answer says the book does not cover it."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from server.metrics import UNANSWERABLE

# The prompt tells the model "If the sources do not contain the answer, say that the book does
# not cover it"; models word that in a handful of ways. The extractive fallback says "The book
# does not seem to cover this question." when nothing was retrieved.
_SUBJECT = r"(?:the |this |these |our )?(?:book|textbook|text|sources?|passages?|chapters?|material|excerpts?|context)"
_NEGATION = r"(?:does not|doesn't|do not|don't|did not|didn't|cannot|can't|can not|fails? to|has no|have no|contains? no|offers? no|provides? no)"
_VERB = r"(?:cover|contain|mention|discuss|address|explain|include|provide|describe|say|talk about|go into|detail|information|details|answer)"
_NOT_COVERED = re.compile(
    rf"\b{_SUBJECT}\b[^.\n]{{0,60}}?\b{_NEGATION}\b[^.\n]{{0,30}}?\b{_VERB}"
    rf"|\b(?:is|are|isn't|aren't)\s+not\s+(?:covered|mentioned|discussed|addressed|explained)\b[^.\n]{{0,40}}\b{_SUBJECT}\b"
    rf"|\b(?:isn't|aren't)\s+(?:covered|mentioned|discussed|addressed|explained)\b[^.\n]{{0,40}}\b{_SUBJECT}\b"
    rf"|\bnot\s+(?:covered|mentioned|discussed|addressed)\s+(?:in|by)\s+{_SUBJECT}\b"
    rf"|\bno information\b[^.\n]{{0,60}}\b{_SUBJECT}\b"
    rf"|\b{_SUBJECT}\b[^.\n]{{0,40}}\bno information\b",
    re.IGNORECASE,
)


# Every phrasing above holds a negation; the full pattern runs only on the text around one (it
# costs ~0.25 ms on a 300-token answer, around a few words of it ~10 µs). The hint is
# `not\b|n't\b|\bno\b|\bfails?\b` ignoring case, written to start with a character class on
# lowered text: re then skips to each n or f (~9 µs on 2 KB, 118 µs as the plain alternation).
_NEGATION_HINT = re.compile(r"[nf](?:(?<=n)(?:ot|'t)|(?<=\bn)o|(?<=\bf)ails?)\b")
_NEGATION_HINT_ANY_CASE = re.compile(r"not\b|n't\b|\bno\b|\bfails?\b", re.IGNORECASE)
_BEFORE, _AFTER = 110, 100  # the farthest a phrasing reaches on either side of its negation


def says_not_covered(answer: str) -> bool:
    """True when the answer says the book (or its sources) does not cover the question."""
    lowered = answer.lower()
    hints = (
        _NEGATION_HINT.finditer(lowered)
        if len(lowered) == len(answer)  # lowering kept every offset (it does but for a few letters)
        else _NEGATION_HINT_ANY_CASE.finditer(answer)
    )
    for hint in hints:
        start = answer.rfind(" ", 0, max(0, hint.start() - _BEFORE)) + 1  # whole words only
        end = answer.find(" ", hint.end() + _AFTER)
        window = answer[start : end if end != -1 else len(answer)]
        if _NOT_COVERED.search(window) is not None:
            return True
    return False


@dataclasses.dataclass(frozen=True, slots=True)
class AnswerSignals:
    """Recorded with a message for the authors' insights (sql/009_ratings_and_insights.sql)."""

    best_similarity: float
    not_covered: bool

    def unanswerable(self, threshold: float) -> bool:
        """Nothing in the book came close to the question."""
        return self.best_similarity < threshold


def answer_signals(similarities: Iterable[float | None], answer: str) -> AnswerSignals:
    """Signals of an answer from its sources' dense similarities and its text. Sources that only
    keywords found (no similarity) count as nothing close in meaning: 0."""
    best = max((s for s in similarities if s is not None), default=0.0)
    return AnswerSignals(
        best_similarity=round(float(best), 4), not_covered=says_not_covered(answer)
    )


def count_unanswerable(signals: AnswerSignals, threshold: float) -> None:
    """Prometheus counts of questions the book could not answer, by reason (never their text)."""
    if signals.unanswerable(threshold):
        UNANSWERABLE.labels("no_close_passage").inc()
    if signals.not_covered:
        UNANSWERABLE.labels("answer_says_not_covered").inc()
