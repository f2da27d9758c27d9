"""Validate the retrieval evaluation set (eval/retrieval.jsonl) against the two test corpora."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CORPORA, ROOT

EVAL_FILE = ROOT / "eval" / "retrieval.jsonl"

BOOKS = ("book-a", "book-b")
KINDS = ("keyword", "paraphrase", "selection")
REQUIRED_KEYS = {"id", "book", "kind", "question", "source", "evidence"}
OPTIONAL_KEYS = {"selection", "also"}
# Per-book targets are approximate; the bounds leave room to add or drop a few items.
TOTAL_PER_BOOK = (50, 75)
PER_KIND = {"keyword": (15, 25), "paraphrase": (20, 32), "selection": (12, 18)}
EVIDENCE_WORDS = (5, 15)
# A file with at least this many words has substantive content and must be asked about.
SUBSTANTIVE_WORDS = 200
# Paraphrases must avoid the book's wording; one incidental shared word (e.g. "robot") is tolerated.
MAX_PARAPHRASE_SHARED_WORDS = 1
STOPWORDS = frozenset(
    re.findall(
        r"\w+",
        """a an the of to in on for and or is are be it its this that with as at by from how what
    why which when where who do does did can i my me you your we our so if not no but into than then
    there their they them should would could will about after before over up out just one some any
    all very much many more most get got has have had was were been being am s t don doesn isn ll
    re ve d only too""",
    )
)


def _load_items() -> list[dict[str, Any]]:
    lines = EVAL_FILE.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


ITEMS = _load_items()
ITEM_IDS = [str(item.get("id")) for item in ITEMS]


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _content_words(text: str) -> set[str]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {_stem(w) for w in words if w not in STOPWORDS}


def _stem(word: str) -> str:
    # Crude suffix stripping so "joints"/"joint" or "mapping"/"mapped" count as the same word.
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) > len(suffix) + 3:
            return word[: -len(suffix)]
    return word


def _corpus_files(book: str) -> list[Path]:
    return sorted(p for p in (CORPORA / book).rglob("*") if p.suffix in (".md", ".mdx"))


@pytest.fixture(scope="module")
def corpus_texts() -> dict[tuple[str, str], str]:
    """Whitespace-normalised text of every Markdown/MDX file, keyed by (book, relative path)."""
    if not CORPORA.is_dir():
        pytest.skip(f"test corpora not present at {CORPORA}")
    return {
        (book, path.relative_to(CORPORA / book).as_posix()): _normalise(
            path.read_text(encoding="utf-8")
        )
        for book in BOOKS
        for path in _corpus_files(book)
    }


def test_ids_are_unique_and_follow_book_prefix() -> None:
    duplicates = [item_id for item_id, n in Counter(ITEM_IDS).items() if n > 1]
    assert not duplicates, f"duplicate ids: {duplicates}"
    for item in ITEMS:
        assert re.fullmatch(r"[ab]-\d{3}", item["id"]), item["id"]
        assert item["book"] == f"book-{item['id'][0]}", item["id"]


@pytest.mark.parametrize("item", ITEMS, ids=ITEM_IDS)
def test_item_schema(item: dict[str, Any]) -> None:
    keys = set(item)
    assert keys >= REQUIRED_KEYS, f"missing keys: {REQUIRED_KEYS - keys}"
    assert keys <= REQUIRED_KEYS | OPTIONAL_KEYS, (
        f"unknown keys: {keys - REQUIRED_KEYS - OPTIONAL_KEYS}"
    )
    assert item["book"] in BOOKS
    assert item["kind"] in KINDS
    for key in ("question", "source", "evidence"):
        assert isinstance(item[key], str)
        assert item[key].strip() == item[key] != "", f"{key} is empty or padded"
    assert len(item["question"].split()) >= 4, "a question is a full sentence, not a keyword"
    assert item["source"].endswith((".md", ".mdx"))
    assert not item["source"].startswith(("/", "book-")), "source is relative to the book root"
    if item["kind"] == "selection":
        assert isinstance(item.get("selection"), str)
        assert len(item["selection"].split()) >= 8, "a selection is a 1-3 sentence passage"
    else:
        assert "selection" not in item, "only kind=selection items carry a selection"
    if "also" in item:
        also = item["also"]
        assert isinstance(also, list)
        assert also, "omit 'also' rather than leaving it empty"
        assert all(isinstance(p, str) for p in also)
        assert item["source"] not in also
        assert len(set(also)) == len(also)


@pytest.mark.parametrize("item", ITEMS, ids=ITEM_IDS)
def test_evidence_is_a_short_phrase(item: dict[str, Any]) -> None:
    low, high = EVIDENCE_WORDS
    assert low <= len(item["evidence"].split()) <= high, item["evidence"]


@pytest.mark.parametrize("book", BOOKS)
def test_counts_per_book_and_kind(book: str) -> None:
    items = [item for item in ITEMS if item["book"] == book]
    low, high = TOTAL_PER_BOOK
    assert low <= len(items) <= high, f"{book}: {len(items)} items"
    kinds = Counter(item["kind"] for item in items)
    for kind, (low, high) in PER_KIND.items():
        assert low <= kinds[kind] <= high, f"{book}: {kinds[kind]} {kind} items"


@pytest.mark.parametrize(
    "item", [i for i in ITEMS if i["kind"] == "paraphrase"], ids=lambda i: str(i["id"])
)
def test_paraphrases_avoid_the_evidence_wording(item: dict[str, Any]) -> None:
    shared = _content_words(item["question"]) & _content_words(item["evidence"])
    assert len(shared) <= MAX_PARAPHRASE_SHARED_WORDS, f"shares {sorted(shared)} with evidence"


@pytest.mark.parametrize("item", ITEMS, ids=ITEM_IDS)
def test_evidence_and_selection_occur_in_source(
    item: dict[str, Any], corpus_texts: dict[tuple[str, str], str]
) -> None:
    key = (item["book"], item["source"])
    assert key in corpus_texts, f"no such file: {item['book']}/{item['source']}"
    text = corpus_texts[key]
    assert _normalise(item["evidence"]) in text, "evidence not found verbatim in source"
    if "selection" in item:
        assert _normalise(item["selection"]) in text, "selection not found verbatim in source"


@pytest.mark.parametrize("item", ITEMS, ids=ITEM_IDS)
def test_also_lists_exactly_the_other_files_holding_the_evidence(
    item: dict[str, Any], corpus_texts: dict[tuple[str, str], str]
) -> None:
    evidence = _normalise(item["evidence"])
    holders = {
        path
        for (book, path), text in corpus_texts.items()
        if book == item["book"] and path != item["source"] and evidence in text
    }
    also = set(item.get("also", []))
    for path in also:
        assert (item["book"], path) in corpus_texts, f"'also' file missing: {path}"
    assert also == holders, (
        f"evidence also occurs in {sorted(holders)}; 'also' lists {sorted(also)}"
    )


@pytest.mark.parametrize("book", BOOKS)
def test_every_substantive_file_is_covered(
    book: str, corpus_texts: dict[tuple[str, str], str]
) -> None:
    sources = {item["source"] for item in ITEMS if item["book"] == book}
    substantive = {
        path
        for (b, path), text in corpus_texts.items()
        if b == book and len(text.split()) >= SUBSTANTIVE_WORDS
    }
    assert substantive, f"{book}: no files found"
    missing = sorted(substantive - sources)
    assert not missing, f"{book}: files without any item: {missing}"
