"""Retrieval on the sample book: readers' own words find the right chapter (a guard, not the benchmark).

The benchmark is `textbook-chat eval-retrieval` over the two real books (see README).
"""

from __future__ import annotations

import pytest

from server.services import Services

QUESTIONS = [
    ("Why does a robot trained in simulation fail on the real machine?", "what-is-physical-ai"),
    (
        "Why is it easy for computers to play chess but hard to pick up a cup?",
        "what-is-physical-ai",
    ),
    (
        "My gyro reading slowly wanders off over time; how do I correct it?",
        "sensors-and-perception",
    ),
    (
        "Should I buy a laser scanner or a stereo camera for outdoor mapping?",
        "sensors-and-perception",
    ),
    ("How do nodes find each other without a central master?", "ros2-basics/ros2-nodes-and-topics"),
    (
        "How do I keep two robots on the same network from hearing each other?",
        "ros2-basics/ros2-nodes-and-topics",
    ),
    (
        "When should a long-running goal with feedback be used instead of request and reply?",
        "ros2-basics/ros2-services-actions-qos",
    ),
    (
        "My subscriber gets no messages from a best-effort publisher. Why?",
        "ros2-basics/ros2-services-actions-qos",
    ),
    (
        "Where must the point with no tipping moment stay for the foot to remain flat?",
        "humanoid-locomotion",
    ),
    ("Where should a pushed robot step so it can come to a stop?", "humanoid-locomotion"),
    (
        "How are continuous arm motions turned into tokens for a language model?",
        "vision-language-action",
    ),
    ("Why predict several future actions at once instead of one?", "vision-language-action"),
]


@pytest.mark.parametrize(("question", "chapter"), QUESTIONS)
async def test_paraphrased_questions_find_their_chapter(
    services: Services, question: str, chapter: str
) -> None:
    passages = await services.retriever.search(question, limit=6)
    assert passages[0].chapter_id == chapter, [p.chapter_id for p in passages]
