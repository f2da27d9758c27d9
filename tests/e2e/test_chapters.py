"""Personalized and translated chapters over a real socket, with the fake model echoing sections."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from server.chapters.rewrite import split_chapter
from server.services import Services
from server.tools.client import connect, deltas
from server.tools.fake_llm import FakeLLM
from tests.conftest import LiveServer, model_config, token_for

CHAPTER = "ros2-basics/ros2-services-actions-qos"
PROFILE = {
    "software_background": "Python web developer",
    "hardware_background": "none",
    "level": "beginner",
}
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)


@pytest.fixture
def echo_llm(fake_llm: FakeLLM) -> Iterator[FakeLLM]:
    with model_config(fake_llm, echo=True):
        yield fake_llm


async def _put_profile(live: LiveServer, user: str, profile: dict[str, object]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=live.http_url) as http:
        return await http.put(
            "/v1/profile", json=profile, headers={"Authorization": f"Bearer {token_for(user)}"}
        )


async def _chapter(
    live: LiveServer, user: str, sid: str, **fields: object
) -> list[dict[str, object]]:
    async with connect(live.ws_url, token_for(user)) as chat:
        await chat.send(type="chapter", id=sid, **fields)
        return await chat.stream(sid)


def _squash(text: str) -> str:
    return re.sub(r"\n{2,}", "\n\n", text).strip()


async def test_profile_api(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.http_url) as http:
        auth = {"Authorization": f"Bearer {token_for('prof')}"}
        assert (await http.get("/v1/profile", headers=auth)).status_code == 404
        assert (await http.get("/v1/profile")).status_code == 401
        bad = await http.put("/v1/profile", json={**PROFILE, "level": "guru"}, headers=auth)
        assert bad.status_code == 422 and "level" in bad.json()["error"]["message"]
        missing = await http.put("/v1/profile", json={"level": "beginner"}, headers=auth)
        assert (
            missing.status_code == 422
            and "software_background" in missing.json()["error"]["message"]
        )
        extra = await http.put("/v1/profile", json={**PROFILE, "admin": True}, headers=auth)
        assert extra.status_code == 422 and "admin" in extra.json()["error"]["message"]
        huge = await http.put(
            "/v1/profile", json={**PROFILE, "software_background": "x" * 2001}, headers=auth
        )
        assert huge.status_code == 422 and "software_background" in huge.json()["error"]["message"]
        too_big = await http.put("/v1/profile", content=b"{" + b" " * 20_000 + b"}", headers=auth)
        assert too_big.status_code == 413
        ok = await http.put("/v1/profile", json={**PROFILE, "language": "ur"}, headers=auth)
        assert ok.status_code == 200
        assert (await http.get("/v1/profile", headers=auth)).json() == {**PROFILE, "language": "ur"}
        other = {"Authorization": f"Bearer {token_for('someone')}"}
        assert (await http.get("/v1/profile", headers=other)).status_code == 404


async def test_personalize_streams_in_order_and_keeps_code_byte_for_byte(
    live: LiveServer, echo_llm: FakeLLM
) -> None:
    assert (await _put_profile(live, "pia", PROFILE)).status_code == 200
    original = (await live.services.store.get_chapter(CHAPTER)).markdown  # type: ignore[union-attr]
    before = len(echo_llm.chat_requests)
    frames = await _chapter(live, "pia", "p1", chapter=CHAPTER, mode="personalize")
    assert frames[0]["type"] == "start" and frames[0]["direction"] == "ltr"
    assert frames[-1]["type"] == "done" and frames[-1]["cached"] is False
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    text = deltas(frames)
    # the echoing model returns every section as sent, so the chapter comes back whole and in order
    assert _squash(text) == _squash(original)
    code = FENCE.findall(original)
    assert code and [m.group(0) for m in FENCE.finditer(text)] == [
        m.group(0) for m in FENCE.finditer(original)
    ]
    sent = echo_llm.chat_requests[before:]
    assert len(sent) >= 2, "a chapter is split into sections"
    for request in sent:
        system, profile, user = (m["content"] for m in request["messages"])
        assert "Python web developer" not in system  # the reader's words are data, not rules
        assert "beginner" in profile and "Python web developer" in profile
        assert "```" not in user  # code never reaches the model: placeholders stand in for it
    assert any("@@CODE" in r["messages"][-1]["content"] for r in sent)


async def test_translate_sets_rtl_and_names_the_language(
    live: LiveServer, echo_llm: FakeLLM
) -> None:
    before = len(echo_llm.chat_requests)
    frames = await _chapter(live, "tara", "t1", chapter=CHAPTER, mode="translate", language="ur")
    assert frames[0]["direction"] == "rtl" and frames[-1]["type"] == "done"
    assert "Urdu" in echo_llm.chat_requests[before]["messages"][0]["content"]
    frames = await _chapter(live, "tara", "t2", chapter=CHAPTER, mode="translate", language="fr")
    assert frames[0]["direction"] == "ltr"


async def test_cache_hits_on_repeat_and_misses_after_a_change(
    live: LiveServer, echo_llm: FakeLLM, services: Services
) -> None:
    store = services.store
    assert (await _put_profile(live, "cal", {**PROFILE, "level": "advanced"})).status_code == 200
    first = await _chapter(live, "cal", "c1", chapter=CHAPTER, mode="personalize")
    assert first[-1]["cached"] is False
    requests = len(echo_llm.chat_requests)
    again = await _chapter(live, "cal", "c2", chapter=CHAPTER, mode="personalize")
    assert again[-1]["cached"] is True and deltas(again) == deltas(first)
    assert again[-1]["usage"] == first[-1]["usage"]
    assert len(echo_llm.chat_requests) == requests, "a cache hit calls no model"

    # another profile misses
    assert (
        await _put_profile(live, "cal", {**PROFILE, "level": "intermediate"})
    ).status_code == 200
    changed_profile = await _chapter(live, "cal", "c3", chapter=CHAPTER, mode="personalize")
    assert changed_profile[-1]["cached"] is False and len(echo_llm.chat_requests) > requests

    # a changed chapter misses
    row = await store.get_chapter(CHAPTER)
    assert row is not None
    edited = row.markdown + "\n\n## Summary\n\nQoS must match between publisher and subscriber.\n"
    await store.save_chapter(
        dataclasses.replace(row, markdown=edited, content_hash="edited-" + row.content_hash), []
    )
    try:
        requests = len(echo_llm.chat_requests)
        after_edit = await _chapter(live, "cal", "c4", chapter=CHAPTER, mode="personalize")
        assert after_edit[-1]["cached"] is False and "QoS must match" in deltas(after_edit)
        assert len(echo_llm.chat_requests) > requests
    finally:
        await store.save_chapter(row, [])


async def test_identical_concurrent_requests_generate_once(
    live: LiveServer, fake_llm: FakeLLM
) -> None:
    row = await live.services.store.get_chapter(CHAPTER)
    assert row is not None
    sections = len(split_chapter(row.markdown))
    with model_config(fake_llm, echo=True, tokens_per_second=200):
        before = len(fake_llm.chat_requests)
        token = token_for("sam")
        async with connect(live.ws_url, token) as a, connect(live.ws_url, token) as b:
            await a.send(type="chapter", id="x", chapter=CHAPTER, mode="translate", language="de")
            head = await a.recv_type("delta")
            await b.send(type="chapter", id="y", chapter=CHAPTER, mode="translate", language="de")
            first, second = await asyncio.gather(a.stream("x"), b.stream("y"))
        generated = len(fake_llm.chat_requests) - before
    assert first[-1]["type"] == second[-1]["type"] == "done"
    assert second[-1]["cached"] is False, "it joined the running generation, not the cache"
    assert deltas(second) == head["text"] + deltas(first)
    assert generated == sections


async def test_cancel_stops_every_upstream_request(live: LiveServer, fake_llm: FakeLLM) -> None:
    with model_config(fake_llm, echo=True, tokens_per_second=20):
        disconnected = fake_llm.streams_disconnected
        async with connect(live.ws_url, token_for("cy")) as chat:
            await chat.send(
                type="chapter", id="k", chapter=CHAPTER, mode="translate", language="es"
            )
            await chat.recv_type("delta")
            await fake_llm.wait_for(lambda: fake_llm.open_streams >= 2, timeout=3)
            running = fake_llm.open_streams
            await chat.send(type="cancel", id="k")
            frames = await chat.stream("k")
        assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "cancelled"
        await fake_llm.wait_for(lambda: fake_llm.open_streams == 0, timeout=2)
        assert fake_llm.streams_disconnected - disconnected >= running >= 2


async def test_refusals(live: LiveServer, services: Services, echo_llm: FakeLLM) -> None:
    frames = await _chapter(live, "nobody", "n1", chapter=CHAPTER, mode="personalize")
    assert frames[-1]["code"] == "not_found" and "profile" in frames[-1]["message"]
    frames = await _chapter(
        live, "nobody", "n2", chapter="no/such", mode="translate", language="ur"
    )
    assert frames[-1]["code"] == "not_found"
    frames = await _chapter(live, "nobody", "n3", chapter=CHAPTER, mode="translate")
    assert frames[-1]["code"] == "invalid_message" and "language" in frames[-1]["message"]
    no_model = dataclasses.replace(services, llm_client=None)
    async with LiveServer(no_model) as server, connect(server.ws_url, token_for("nobody")) as chat:
        await chat.send(type="chapter", id="n4", chapter=CHAPTER, mode="translate", language="ur")
        frames = await chat.stream("n4")
    assert frames[-1]["code"] == "upstream_unavailable" and "model" in frames[-1]["message"]


async def test_profile_from_token_claims(live: LiveServer, echo_llm: FakeLLM) -> None:
    async with connect(
        live.ws_url, token_for("claimed", level="advanced", softwareBackground="C++")
    ) as chat:
        await chat.send(type="chapter", id="cl", chapter=CHAPTER, mode="personalize")
        frames = await chat.stream("cl")
    assert frames[-1]["type"] == "done"
    assert "C++" in echo_llm.chat_requests[-1]["messages"][1]["content"]


async def test_chapter_job_claims_readers_and_take_overs(
    services: Services, database_url: str
) -> None:
    store = services.store
    here, elsewhere = f"here:{os.getpid()}:t", f"elsewhere:{os.getpid()}:t"
    await store.heartbeat(elsewhere, [])
    await store.heartbeat(here, [])
    key = f"claim-{time.time_ns()}"
    try:
        assert await store.claim_chapter_job(key, elsewhere, "j1") == "j1"
        assert await store.claim_chapter_job(key, here, "j2") == "j1", "a live holder keeps it"
        # ... unless its journal never started (an abandoned claim) for a few seconds
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE chapter_jobs SET started_at = now() - interval '1 minute' WHERE key = $1",
                key,
            )
        finally:
            await conn.close()
        assert await store.claim_chapter_job(key, here, "j3") == "j3"
        await store.release_chapter_job(key, "j1")  # a late release of the old claim: no effect
        assert await store.claim_chapter_job(key, elsewhere, "j4") == "j3"

        # readers count while their process lives
        await store.add_job_reader("j3", "r1", elsewhere)
        await store.add_job_reader("j3", "r2", "gone:1:x")
        assert await store.job_readers("j3") == 1
        await store.remove_job_reader("j3", "r1")
        assert await store.job_readers("j3") == 0

        # a holder that stops heartbeating loses it; its rows are pruned
        await store.drop_owner(here)
        assert await store.claim_chapter_job(key, elsewhere, "j5") == "j5"
        await store.claim_chapter_job(key + "-orphan", "gone:1:x", "j6")
        await store.prune_chapter_jobs()
        assert await store.claim_chapter_job(key + "-orphan", elsewhere, "j7") == "j7"
        await store.release_chapter_job(key, "j5")
        await store.release_chapter_job(key + "-orphan", "j7")
        assert await store.claim_chapter_job(key, here, "j8") == "j8"
        await store.release_chapter_job(key, "j8")
    finally:
        await store.drop_owner(here)
        await store.drop_owner(elsewhere)
