"""Ranking of retrieved index points into passages: folding, chapter relevance, neighbours."""

from __future__ import annotations

import gc
import weakref

import pytest

from server.retrieval.retriever import CHAPTER_WEIGHT, NEIGHBOUR_WEIGHT, ChunkTable, rank_passages
from server.retrieval.vectorstore import Hit


def hit(point: str, chunk: str, chapter: str, position: int, score: float) -> Hit:
    payload = {
        "chunk_id": chunk,
        "chapter_id": chapter,
        "title": f"Chapter {chapter}",
        "section_title": f"Section of {chunk}",
        "url": f"/{chapter}",
        "position": position,
        "text": f"text of {chunk}",
    }
    return Hit(id=point, score=score, payload=payload)


def test_windows_fold_into_their_chunk_at_its_best_score() -> None:
    hits = [hit("w1", "c1", "ch1", 0, 0.30), hit("c1", "c1", "ch1", 0, 0.10)]
    [passage] = rank_passages(hits, 6, with_neighbours=False)
    assert passage.chunk_id == "c1"
    assert passage.text == "text of c1"
    assert passage.section == "Section of c1"
    # Its own best score plus its chapter's share: the chapter's best two are 0.30 and nothing.
    assert passage.score == pytest.approx(0.30 + CHAPTER_WEIGHT * 0.15)


def test_a_chapter_matching_in_several_places_wins_a_close_call() -> None:
    hits = [
        hit("x", "stray", "ch1", 0, 0.19),
        hit("a", "a", "ch2", 0, 0.18),
        hit("b", "b", "ch2", 5, 0.175),
    ]
    ranked = [p.chunk_id for p in rank_passages(hits, 6, with_neighbours=False)]
    assert ranked == ["a", "b", "stray"]
    assert [p.chunk_id for p in rank_passages(hits, 1, with_neighbours=False)] == ["a"]


def test_a_selection_lifts_the_passages_beside_the_best_match() -> None:
    hits = [
        hit("sel", "selected", "ch1", 3, 0.40),
        hit("far", "far", "ch2", 0, 0.12),
        hit("next", "next", "ch1", 4, 0.02),
    ]
    plain = [p.chunk_id for p in rank_passages(hits, 6, with_neighbours=False)]
    assert plain == ["selected", "far", "next"]
    lifted = rank_passages(hits, 6, with_neighbours=True)
    assert [p.chunk_id for p in lifted] == ["selected", "next", "far"]
    assert lifted[1].score == pytest.approx(0.02 + CHAPTER_WEIGHT * 0.21 + NEIGHBOUR_WEIGHT * 0.40)


def test_no_hits_no_passages() -> None:
    assert rank_passages([], 6, with_neighbours=True) == []


def test_results_of_different_queries_share_one_chunk_object() -> None:
    chunks: ChunkTable = weakref.WeakValueDictionary()
    first = rank_passages([hit("c1", "c1", "ch1", 0, 0.3)], 6, with_neighbours=False, chunks=chunks)
    second = rank_passages(
        [hit("c1", "c1", "ch1", 0, 0.1)], 6, with_neighbours=False, chunks=chunks
    )
    assert first[0].chunk is second[0].chunk
    assert first[0].score != second[0].score  # the score is the query's own


def test_a_re_ingested_chunk_is_not_served_from_the_table() -> None:
    chunks: ChunkTable = weakref.WeakValueDictionary()
    [old] = rank_passages([hit("c1", "c1", "ch1", 0, 0.3)], 6, with_neighbours=False, chunks=chunks)
    changed = hit("c1", "c1", "ch1", 0, 0.3)
    changed.payload["text"] = "the chunk's new text"
    [new] = rank_passages([changed], 6, with_neighbours=False, chunks=chunks)
    assert new.text == "the chunk's new text"
    assert old.text == "text of c1"


def test_the_table_keeps_no_chunk_nothing_else_holds() -> None:
    chunks: ChunkTable = weakref.WeakValueDictionary()
    passages = rank_passages(
        [hit("c1", "c1", "ch1", 0, 0.3)], 6, with_neighbours=False, chunks=chunks
    )
    assert "c1" in chunks
    del passages
    gc.collect()
    assert "c1" not in chunks
