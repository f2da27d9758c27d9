"""A reader's own data over HTTP against the real server: ratings, conversations, export, and
erasure that leaves nothing behind, even while streams run, concurrently, and on another process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.services import Services
from server.store.readers import ERASED_TABLES
from server.tools.client import ChatClient, connect, deltas
from server.tools.fake_llm import FakeLLM
from tests.conftest import LiveServer, model_config, server_with, token_for
from tests.processes import serve_copy
from tests.readers.helpers import api, auth, eventually, fetch, rows_of, tables_with_user_id

PROFILE = {
    "software_background": "C++ games",
    "hardware_background": "Arduino",
    "level": "advanced",
}


@pytest.fixture
async def server(services: Services) -> AsyncIterator[LiveServer]:
    """The server with session state of its own (no presence heartbeat, so `presence` holds only
    what a test puts there)."""
    async with server_with(services) as live:
        yield live


@pytest.fixture
def slow_llm(fake_llm: FakeLLM) -> Iterator[FakeLLM]:
    with model_config(fake_llm, tokens_per_answer=400, tokens_per_second=20):
        yield fake_llm


async def _ask(
    server: LiveServer, user: str, sid: str, question: str, **fields: Any
) -> list[dict[str, Any]]:
    async with connect(server.ws_url, token_for(user)) as chat:
        frames = await chat.ask(sid, question, **fields)
    assert frames[-1]["type"] == "done", frames[-1]
    return frames


async def _until_deltas(chat: ChatClient, sid: str, n: int) -> dict[str, Any]:
    """Read until the stream has sent `n` deltas; returns its `start`."""
    start: dict[str, Any] = {}
    seen = 0
    while seen < n:
        frame = await chat.recv()
        if frame.get("id") != sid:
            continue
        if frame["type"] == "start":
            start = frame
        seen += frame["type"] == "delta"
        assert frame["type"] not in ("done", "error"), frame
    return start


async def test_a_reader_rates_their_finished_answers_only(
    server: LiveServer, fake_llm: FakeLLM
) -> None:
    frames = await _ask(server, "rater", "r1", "What is the zero-moment point?")
    message, conversation = frames[0]["message_id"], frames[0]["conversation_id"]
    rating = f"/v1/messages/{message}/rating"
    async with api(server) as http:
        up = await http.put(rating, json={"value": "up"}, headers=auth("rater"))
        assert up.status_code == 200 and up.json()["value"] == "up" and up.json()["comment"] is None
        down = await http.put(
            rating, json={"value": "down", "comment": "  Too vague  "}, headers=auth("rater")
        )
        assert down.json() | {"updated_at": None} == {
            "message_id": message,
            "value": "down",
            "comment": "Too vague",
            "updated_at": None,
        }
        listing = await http.get(
            f"/v1/conversations/{conversation}/messages", headers=auth("rater")
        )
        assert listing.json()["messages"][0]["rating"] == {"value": "down", "comment": "Too vague"}

        # Another reader's message is not found, whatever they try; the rating stays.
        for method in ("PUT", "DELETE"):
            stranger = await http.request(
                method, rating, json={"value": "up"}, headers=auth("mallory")
            )
            assert stranger.status_code == 404 and stranger.json()["error"]["code"] == "not_found"
        for bad in (
            {"value": "meh"},
            {"value": "up", "extra": 1},
            {"value": "up", "comment": "x" * 2001},
            {},
        ):
            refused = await http.put(rating, json=bad, headers=auth("rater"))
            assert refused.status_code == 422, bad
        assert (await http.put(rating, content=b"{", headers=auth("rater"))).status_code == 422
        assert (await http.put(rating, json={"value": "up"})).status_code == 401
        for missing in ("not-a-uuid", "00000000-0000-4000-8000-000000000000"):
            gone = await http.put(
                f"/v1/messages/{missing}/rating", json={"value": "up"}, headers=auth("rater")
            )
            assert gone.status_code == 404
        rows = await fetch(
            server.services.settings.database_url or "",
            "SELECT rating, comment FROM ratings WHERE message_id = $1::uuid",
            message,
        )
        assert [tuple(r) for r in rows] == [(-1, "Too vague")]

        # Withdrawn, and withdrawing again is fine.
        assert (await http.delete(rating, headers=auth("rater"))).status_code == 204
        assert (await http.delete(rating, headers=auth("rater"))).status_code == 204
        listing = await http.get(
            f"/v1/conversations/{conversation}/messages", headers=auth("rater")
        )
        assert listing.json()["messages"][0]["rating"] is None
        metrics = (await http.get("/metrics")).text
    assert 'chat_answer_ratings_total{rating="down"}' in metrics
    assert 'chat_answer_ratings_total{rating="withdrawn"}' in metrics


async def test_an_answer_still_streaming_cannot_be_rated(
    server: LiveServer, slow_llm: FakeLLM
) -> None:
    async with connect(server.ws_url, token_for("hasty")) as chat, api(server) as http:
        await chat.send(type="ask", id="s1", question="Explain the capture point")
        start = await _until_deltas(chat, "s1", 1)
        early = await http.put(
            f"/v1/messages/{start['message_id']}/rating",
            json={"value": "up"},
            headers=auth("hasty"),
        )
        assert (
            early.status_code == 422 and "still being written" in early.json()["error"]["message"]
        )
        await chat.send(type="cancel", id="s1")
        end = (await chat.stream("s1"))[-1]
        assert end["finish_reason"] == "cancelled"
        late = await http.put(
            f"/v1/messages/{start['message_id']}/rating",
            json={"value": "up"},
            headers=auth("hasty"),
        )
        assert late.status_code == 200  # a cancelled answer is finished too


async def test_rename_and_delete_one_then_all_conversations(
    server: LiveServer, fake_llm: FakeLLM
) -> None:
    first = await _ask(server, "tidy", "c1", "What does ROS_DOMAIN_ID do?")
    second = await _ask(server, "tidy", "c2", "What is a VLA model?")
    one, two = first[0]["conversation_id"], second[0]["conversation_id"]
    await server.services.journal.flush()
    db = server.services.settings.database_url or ""
    journaled = "SELECT stream_id FROM streams WHERE user_id = 'tidy' ORDER BY 1"
    assert [r["stream_id"] for r in await fetch(db, journaled)] == ["c1", "c2"]
    async with api(server) as http:
        renamed = await http.patch(
            f"/v1/conversations/{one}", json={"title": " Domains "}, headers=auth("tidy")
        )
        assert renamed.status_code == 200 and renamed.json()["title"] == "Domains"
        assert renamed.json()["id"] == one
        for body in ({"title": ""}, {"title": "   "}, {"title": "x" * 201}, {"name": "y"}):
            assert (
                await http.patch(f"/v1/conversations/{one}", json=body, headers=auth("tidy"))
            ).status_code == 422
        for method in ("PATCH", "DELETE"):
            stranger = await http.request(
                method, f"/v1/conversations/{one}", json={"title": "mine"}, headers=auth("mallory")
            )
            assert stranger.status_code == 404
        titles = await http.get("/v1/conversations", headers=auth("tidy"))
        assert {c["title"] for c in titles.json()["conversations"]} == {
            "Domains",
            "What is a VLA model?",
        }

        gone = await http.delete(f"/v1/conversations/{one}", headers=auth("tidy"))
        assert gone.json() == {"deleted": 1, "cancelled_streams": 0}
        assert (
            await http.get(f"/v1/conversations/{one}/messages", headers=auth("tidy"))
        ).status_code == 404
        assert (
            await http.delete(f"/v1/conversations/{one}", headers=auth("tidy"))
        ).status_code == 404
        assert [r["stream_id"] for r in await fetch(db, journaled)] == ["c2"]
        kept = await http.get(f"/v1/conversations/{two}/messages", headers=auth("tidy"))
        assert len(kept.json()["messages"]) == 1

        assert (
            await http.put("/v1/profile", json=PROFILE, headers=auth("tidy"))
        ).status_code == 200
        cleared = await http.delete("/v1/conversations", headers=auth("tidy"))
        assert cleared.json() == {"deleted": 1, "cancelled_streams": 0}
        assert (await http.get("/v1/conversations", headers=auth("tidy"))).json() == {
            "conversations": []
        }
        assert (await http.get("/v1/profile", headers=auth("tidy"))).status_code == 200  # kept
        again = await http.delete("/v1/conversations", headers=auth("tidy"))
        assert again.json() == {"deleted": 0, "cancelled_streams": 0}
    assert await fetch(db, journaled) == []
    assert await rows_of(db, "tidy") == {"profiles": 1, "rate_windows": 1, "usage_daily": 1}


async def test_export_as_json_and_markdown(server: LiveServer, fake_llm: FakeLLM) -> None:
    selection = {"text": "A complementary filter blends gyroscope and accelerometer readings."}
    frames = await _ask(server, "keeper", "e1", "Why is this needed?", selection=selection)
    follow = await _ask(
        server, "keeper", "e2", "And its drawbacks?", conversation_id=frames[0]["conversation_id"]
    )
    async with api(server) as http:
        await http.put("/v1/profile", json=PROFILE, headers=auth("keeper"))
        await http.put(
            f"/v1/messages/{follow[0]['message_id']}/rating",
            json={"value": "down", "comment": "Missing the drift"},
            headers=auth("keeper"),
        )
        as_json = await http.get("/v1/me/export", headers=auth("keeper"))
        as_md = await http.get("/v1/me/export?format=markdown", headers=auth("keeper"))
        assert (
            await http.get("/v1/me/export?format=pdf", headers=auth("keeper"))
        ).status_code == 422
        assert (await http.get("/v1/me/export")).status_code == 401
        nobody = await http.get("/v1/me/export", headers=auth("nobody-yet"))
    assert as_json.status_code == 200 and "attachment" in as_json.headers["content-disposition"]
    doc = as_json.json()
    assert doc["format"] == "textbook-chat-export/1" and doc["user_id"] == "keeper"
    assert doc["profile"]["level"] == "advanced"
    [conversation] = doc["conversations"]
    first, second = conversation["messages"]
    assert (
        first["question"] == "Why is this needed?"
        and first["selection"]["text"] == selection["text"]
    )
    assert first["answer"] == deltas(frames) and first["sources"] and first["rating"] is None
    assert second["rating"] == {"value": "down", "comment": "Missing the drift"}
    text = as_md.text
    assert as_md.headers["content-type"].startswith("text/markdown")
    assert "### Why is this needed?" in text and f"> {selection['text']}" in text
    assert deltas(follow).strip() in text and "Your rating: down: Missing the drift" in text
    assert "- Level: advanced" in text
    assert nobody.json()["conversations"] == [] and nobody.json()["profile"] is None


async def test_erasing_a_reader_leaves_nothing_in_any_table(
    server: LiveServer, fake_llm: FakeLLM
) -> None:
    db = server.services.settings.database_url or ""
    assert set(await tables_with_user_id(db)) == set(ERASED_TABLES), "a new table holds user ids"
    async with api(server) as http:
        for user in ("gone", "stays"):
            assert (
                await http.put(
                    "/v1/profile",
                    json=PROFILE | {"level": "beginner" if user == "stays" else "advanced"},
                    headers=auth(user),
                )
            ).status_code == 200
        frames = await _ask(server, "gone", "g1", "What is Moravec's paradox?")
        await _ask(
            server,
            "gone",
            "g2",
            "Why is it needed?",
            selection={"text": "Sensors drift over time."},
        )
        await _ask(server, "stays", "s1", "What is Moravec's paradox?")
        await http.put(
            f"/v1/messages/{frames[0]['message_id']}/rating",
            json={"value": "up"},
            headers=auth("gone"),
        )
        with model_config(fake_llm, echo=True):
            for user in ("gone", "stays"):
                async with connect(server.ws_url, token_for(user)) as chat:
                    await chat.send(
                        type="chapter", id="p1", chapter="humanoid-locomotion", mode="personalize"
                    )
                    assert (await chat.stream("p1"))[-1]["type"] == "done"
        # presence is written by a process's heartbeat while the reader is connected
        await fetch(db, "INSERT INTO owners (owner) VALUES ('elsewhere') ON CONFLICT DO NOTHING")
        await fetch(db, "INSERT INTO presence VALUES ('elsewhere', 'gone', 1, 0)")
        await server.services.journal.flush()
        before = await rows_of(db, "gone")
        assert set(before) == set(ERASED_TABLES), before
        keys = [
            r["stream_key"]
            for r in await fetch(db, "SELECT stream_key FROM streams WHERE user_id = 'gone'")
        ]
        cached = [
            r["key"]
            for r in await fetch(db, "SELECT key FROM chapter_cache_readers WHERE user_id = 'gone'")
        ]
        assert len(keys) == 3 and len(cached) == 1
        assert await fetch(db, "SELECT 1 FROM chapter_cache WHERE key = $1", cached[0])
        others = await rows_of(db, "stays")

        erased = await http.delete("/v1/me", headers=auth("gone"))
        assert erased.status_code == 200
        body = erased.json()
        assert body["cancelled_streams"] == 0
        assert body["deleted"]["messages"] == 2 and body["deleted"]["ratings"] == 1
        assert body["deleted"]["chapter_cache"] == 1 and body["deleted"]["stream_frames"] >= 3

        assert await rows_of(db, "gone") == {}
        assert (
            await fetch(db, "SELECT 1 FROM stream_frames WHERE stream_key = ANY($1::text[])", keys)
            == []
        )
        assert (
            await fetch(db, "SELECT 1 FROM chapter_cache WHERE key = ANY($1::text[])", cached) == []
        )
        assert await rows_of(db, "stays") == others  # nobody else's data went with it
        again = await http.delete("/v1/me", headers=auth("gone"))
        assert again.status_code == 200 and set(again.json()["deleted"].values()) == {0}
        export = (await http.get("/v1/me/export", headers=auth("gone"))).json()
        assert export["conversations"] == [] and export["profile"] is None
    async with connect(server.ws_url, token_for("gone")) as chat:  # not resumable from memory
        await chat.send(type="resume", id="g1", after_seq=0)
        assert (await chat.recv_type("error"))["code"] == "not_found"


async def test_erasing_while_a_stream_runs_cancels_it_first(
    server: LiveServer, slow_llm: FakeLLM
) -> None:
    db = server.services.settings.database_url or ""
    disconnected = slow_llm.streams_disconnected
    async with connect(server.ws_url, token_for("midway")) as chat, api(server) as http:
        await chat.send(type="ask", id="m1", question="Explain the capture point")
        await _until_deltas(chat, "m1", 3)
        erasing = asyncio.create_task(http.delete("/v1/me", headers=auth("midway")))
        end = (await chat.stream("m1"))[-1]
        assert end["type"] == "done" and end["finish_reason"] == "cancelled"
        erased = await erasing
        assert erased.status_code == 200 and erased.json()["cancelled_streams"] == 1
        assert erased.json()["deleted"]["messages"] == 1  # saved as cancelled, then deleted
        await slow_llm.wait_for(lambda: slow_llm.streams_disconnected > disconnected, timeout=3)
        assert await rows_of(db, "midway") == {}
        async with connect(server.ws_url, token_for("midway")) as other:  # not from memory either
            await other.send(type="resume", id="m1", after_seq=0)
            assert (await other.recv_type("error"))["code"] == "not_found"
        with model_config(slow_llm, tokens_per_answer=5, tokens_per_second=0):
            after = await chat.ask("m2", "What is a humanoid?")  # the socket goes on
    assert after[-1]["type"] == "done"
    await server.services.journal.flush()
    assert set(await rows_of(db, "midway")) >= {"conversations", "messages"}  # new data is new


async def test_concurrent_deletes_of_one_reader(server: LiveServer, slow_llm: FakeLLM) -> None:
    db = server.services.settings.database_url or ""
    async with connect(server.ws_url, token_for("twice")) as chat, api(server) as http:
        await http.put("/v1/profile", json=PROFILE, headers=auth("twice"))
        for sid in ("t1", "t2"):
            await chat.send(type="ask", id=sid, question=f"Explain balance control ({sid})")
        for sid in ("t1", "t2"):
            await _until_deltas(chat, sid, 1)
        calls = [http.delete("/v1/me", headers=auth("twice")) for _ in range(3)]
        calls += [http.delete("/v1/conversations", headers=auth("twice")) for _ in range(2)]
        results = await asyncio.gather(*calls)
        ends = await chat.ends({"t1", "t2"})
    assert [r.status_code for r in results] == [200] * 5
    assert {e["finish_reason"] for e in ends} == {"cancelled"}
    erased = [r.json()["deleted"] for r in results[:3]]  # rows per table, from DELETE /v1/me
    cleared = [
        r.json()["deleted"] for r in results[3:]
    ]  # conversations, from DELETE /v1/conversations
    # every row went exactly once, whichever call took it
    assert sum(e["conversations"] for e in erased) + sum(cleared) == 2
    assert sum(e["profiles"] for e in erased) == 1
    assert await rows_of(db, "twice") == {}


@pytest.mark.usefixtures("services")  # the index the other process copies
async def test_a_stream_on_another_process_is_cancelled_before_the_delete(
    tmp_path: Path, tmp_data_dir: Path, database_url: str, server: LiveServer, fake_llm: FakeLLM
) -> None:
    with model_config(fake_llm, tokens_per_answer=400, tokens_per_second=20):
        async with serve_copy(
            tmp_path / "a",
            tmp_data_dir / "main" / "qdrant",
            tmp_path / "a.log",
            DATABASE_URL=database_url,
            OPENAI_BASE_URL=fake_llm.base_url,
        ) as (port, _proc):
            disconnected = fake_llm.streams_disconnected
            async with connect(f"ws://127.0.0.1:{port}/v1/chat", token_for("roaming")) as chat:
                await chat.send(type="ask", id="far", question="How do humanoids keep balance?")
                await _until_deltas(chat, "far", 3)
                async with api(server) as http:  # this process does not hold the stream
                    erased = await http.delete("/v1/me", headers=auth("roaming"))
                assert erased.status_code == 200 and erased.json()["cancelled_streams"] == 1
                assert erased.json()["deleted"]["messages"] == 1
                end = (await chat.stream("far"))[-1]
                assert end["type"] == "done" and end["finish_reason"] == "cancelled"
                await fake_llm.wait_for(
                    lambda: fake_llm.streams_disconnected > disconnected, timeout=3
                )
                # while the socket is open, its process counts it (and only that)
                left = await rows_of(database_url, "roaming")
                assert set(left) <= {"presence"}, left
                async with connect(f"ws://127.0.0.1:{port}/v1/chat", token_for("roaming")) as again:
                    await again.send(type="resume", id="far", after_seq=0)  # forgotten there too
                    assert (await again.recv_type("error"))["code"] == "not_found"

            async def nothing_left() -> bool:
                return await rows_of(database_url, "roaming") == {}

            await eventually(nothing_left, timeout=15)
