"""Average-linkage grouping of question vectors, and the answer signals recorded for insights."""

from __future__ import annotations

import numpy as np
import pytest

from server.insights import groups, signals
from server.insights.groups import average_linkage, group_questions
from server.insights.signals import answer_signals, says_not_covered


def _partition(labels: list[int]) -> set[frozenset[int]]:
    out: dict[int, set[int]] = {}
    for i, label in enumerate(labels):
        out.setdefault(label, set()).add(i)
    return {frozenset(v) for v in out.values()}


def _clusters(seed: int = 7) -> tuple[np.ndarray, list[int]]:
    """Three tight clusters in 16 dimensions and one outlier; returns vectors and true labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, 16))
    sizes = [5, 4, 3, 1]
    rows, truth = [], []
    for c, n in enumerate(sizes):
        for _ in range(n):
            rows.append(centres[c] + 0.15 * rng.standard_normal(16))
            truth.append(c)
    return np.asarray(rows, dtype=np.float32), truth


def test_tight_clusters_are_found_whatever_the_order() -> None:
    vectors, truth = _clusters()
    expected = _partition(truth)
    assert _partition(average_linkage(vectors, 0.7)) == expected
    rng = np.random.default_rng(1)
    for _ in range(5):
        order = rng.permutation(len(vectors))
        labels = average_linkage(vectors[order], 0.7)
        back = [0] * len(order)
        for pos, i in enumerate(order):
            back[i] = labels[pos]
        assert _partition(back) == expected


def test_threshold_bounds_the_average_similarity_inside_a_group() -> None:
    vectors, _ = _clusters(seed=3)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    for threshold in (0.2, 0.5, 0.8, 0.95):
        labels = average_linkage(vectors, threshold)
        for part in _partition(labels):
            idx = sorted(part)
            if len(idx) > 1:
                block = sims[np.ix_(idx, idx)][~np.eye(len(idx), dtype=bool)]
                assert block.mean() >= threshold - 1e-6
    assert len(set(average_linkage(vectors, 1.01))) == len(vectors)  # nothing joins
    assert len(set(average_linkage(vectors, -1.01))) == 1  # everything does


def test_average_not_single_linkage() -> None:
    # a chain a-b-c where a and c are far apart: single linkage would join all three
    a = np.array([1.0, 0.0, 0.0])
    c = np.array([0.0, 1.0, 0.0])
    b = (a + c) / np.linalg.norm(a + c)
    labels = average_linkage(np.asarray([a, b, c], dtype=np.float32), 0.6)
    assert len(set(labels)) == 2


def test_identical_questions_are_one_row_and_weigh_more() -> None:
    vectors, truth = _clusters()
    texts = [f"question {t}-{i}" for i, t in enumerate(truth)]
    texts.append("Question 0-0 ")  # the first question again, spelled differently
    vectors = np.vstack([vectors, vectors[:1]])
    labels = group_questions(texts, vectors, 0.7)
    assert labels[-1] == labels[0]
    assert group_questions([], np.zeros((0, 3), dtype=np.float32)) == []


def test_beyond_the_exact_limit_questions_join_the_nearest_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vectors, truth = _clusters()
    monkeypatch.setattr(groups, "MAX_EXACT", 6)
    texts = [f"q{i}" for i in range(len(truth))]
    labels = group_questions(texts, vectors, 0.7)
    assert _partition(labels) == _partition(truth)


@pytest.mark.parametrize(
    "answer",
    [
        "The book does not cover how to cook pasta.",
        "I'm sorry, but the provided sources don't mention the Champions League.",
        "This isn't covered in the textbook.",
        "The sources do not contain information about hurricanes [1].",
        "No language model is configured...\n\nThe book does not seem to cover this question.",
        "That topic is not discussed in the book.",
        "The textbook has no information about stock trading.",
        "Unfortunately, the given context does not provide details on this.",
    ],
)
def test_answers_saying_the_book_does_not_cover_it(answer: str) -> None:
    assert says_not_covered(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "The book covers ROS 2 topics in chapter 3 [1].",
        "ROS 2 does not include a master node; discovery is distributed [2].",
        "A robot cannot mention what it cannot sense.",
        "The sources describe the zero-moment point as the point where moments cancel [1].",
        "",
    ],
)
def test_answers_that_do_not_say_so(answer: str) -> None:
    assert not says_not_covered(answer)


@pytest.mark.parametrize(
    "text",
    [
        "NOT no No NO fails Fails FAIL fail failed cannot can't won't isn't no-one know nothing",
        "Nothing here, nor anywhere: not_ no1 xnot n't fails. The BOOK does NOT cover it",
        "İstanbul is not in the book: lowering İ adds a character, so offsets must not shift",
    ],
)
def test_the_negation_hint_finds_what_the_any_case_pattern_finds(text: str) -> None:
    """The fast hint (lowered text, a character class first) is the plain pattern, faster."""
    lowered = text.lower()
    if len(lowered) == len(text):
        fast = [m.start() for m in signals._NEGATION_HINT.finditer(lowered)]
        plain = [m.start() for m in signals._NEGATION_HINT_ANY_CASE.finditer(text)]
        assert fast == plain and fast
    else:
        assert says_not_covered(text.replace("is not in", "is not covered in"))


def test_answer_signals_take_the_closest_source() -> None:
    signals = answer_signals([0.41, None, 0.62, 0.3], "The sources describe it [1].")
    assert signals.best_similarity == 0.62 and not signals.not_covered
    assert not signals.unanswerable(0.35) and signals.unanswerable(0.7)
    keywords_only = answer_signals([None, None], "The book does not cover it.")
    assert keywords_only.best_similarity == 0.0 and keywords_only.not_covered
    assert answer_signals([], "").best_similarity == 0.0
