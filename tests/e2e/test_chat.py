"""End to end over a real socket: uvicorn, Postgres, the embedded Qdrant engine and the fake model."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator

import httpx
import pytest
import websockets
from qdrant_client import AsyncQdrantClient

from server.chat.llm import EXTRACTIVE_NOTICE, ExtractiveModel
from server.retrieval.retriever import Retriever
from server.retrieval.vectorstore import QdrantServerStore
from server.services import Services
from server.store import Store
from server.tools.client import connect, deltas
from server.tools.fake_llm import FakeLLM
from tests.conftest import LiveServer, free_port, model_config, token_for


@pytest.fixture
def slow_llm(fake_llm: FakeLLM) -> Iterator[FakeLLM]:
    """The fake model at 20 tokens/s with long answers; restored afterwards."""
    with model_config(fake_llm, tokens_per_answer=400, tokens_per_second=20):
        yield fake_llm


def _types(frames: list[dict[str, object]]) -> list[object]:
    return [f["type"] for f in frames]


async def test_question_streams_start_sources_deltas_done_and_persists(
    live: LiveServer, fake_llm: FakeLLM
) -> None:
    async with connect(live.ws_url, token_for("alice")) as chat:
        frames = await chat.ask("q1", "What is the zero-moment point?")
    kinds = _types(frames)
    assert kinds[:2] == ["start", "sources"]
    assert kinds[-1] == "done" and kinds.count("delta") >= 1
    assert set(kinds[2:-1]) == {"delta"}
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    sources = frames[1]["sources"]
    assert sources and all(s["text"] and s["title"] and s["chapter"] for s in sources)
    assert any("zero-moment" in s["text"].lower() or "zmp" in s["text"].lower() for s in sources)
    done = frames[-1]
    assert done["finish_reason"] == "stop"
    assert done["usage"]["completion_tokens"] > 0
    assert done["timings"]["total_ms"] >= done["timings"]["first_token_ms"] > 0
    assert "retrieval_ms" in done["timings"]

    # the prompt the model saw carries the sources and the question
    prompt = fake_llm.chat_requests[-1]["messages"]
    assert prompt[0]["role"] == "system"
    assert (
        "zero-moment point" in prompt[-1]["content"] and '<source id="1"' in prompt[-1]["content"]
    )

    start = frames[0]
    messages = await live.services.store.list_messages("alice", start["conversation_id"])
    assert len(messages) == 1
    saved = messages[0]
    assert saved["id"] == start["message_id"]
    assert saved["status"] == "complete"
    assert saved["answer"] == deltas(frames)
    assert saved["question"] == "What is the zero-moment point?"
    assert [s["chapter"] for s in saved["sources"]] == [s["chapter"] for s in sources]
    assert saved["completion_tokens"] == done["usage"]["completion_tokens"]


async def test_highlighted_text_grounds_the_answer(live: LiveServer, fake_llm: FakeLLM) -> None:
    selection = {
        "text": "A complementary filter blends the gyroscope's short-term accuracy with the accelerometer's long-term stability.",
        "page_url": "/docs/sensors-and-perception",
    }
    async with connect(live.ws_url, token_for("bob")) as chat:
        frames = await chat.ask("sel", "Why is this needed?", selection=selection)
    assert _types(frames)[:2] == ["start", "sources"] and frames[-1]["type"] == "done"
    assert any("gyro" in s["text"].lower() for s in frames[1]["sources"])
    user_message = fake_llm.chat_requests[-1]["messages"][-1]["content"]
    assert "<selection" in user_message and selection["text"] in user_message
    assert user_message.index("<selection") < user_message.index("Why is this needed?")
    saved = await live.services.store.list_messages("bob", frames[0]["conversation_id"])
    assert saved[0]["selection"]["text"] == selection["text"]
    assert saved[0]["status"] == "complete"


async def test_first_frame_auth_and_conversation_history(
    live: LiveServer, fake_llm: FakeLLM
) -> None:
    async with websockets.connect(live.ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token_for("carol")}))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready" and ready["user_id"] == "carol" and ready["protocol"] == 1
        assert ready["limits"]["max_streams"] >= 1
    async with connect(live.ws_url, token_for("carol")) as chat:
        first = await chat.ask("a", "What does ROS_DOMAIN_ID do?")
        conversation_id = first[0]["conversation_id"]
        second = await chat.ask("b", "And what is its default?", conversation_id=conversation_id)
    assert second[0]["conversation_id"] == conversation_id
    messages = fake_llm.chat_requests[-1]["messages"]
    assert messages[1] == {"role": "user", "content": "What does ROS_DOMAIN_ID do?"}
    assert messages[2] == {"role": "assistant", "content": deltas(first)}
    async with httpx.AsyncClient(base_url=live.http_url) as http:
        listing = await http.get(
            "/v1/conversations", headers={"Authorization": f"Bearer {token_for('carol')}"}
        )
        assert listing.status_code == 200
        assert conversation_id in [c["id"] for c in listing.json()["conversations"]]
        history = await http.get(
            f"/v1/conversations/{conversation_id}/messages",
            headers={"Authorization": f"Bearer {token_for('carol')}"},
        )
        assert [m["stream_id"] for m in history.json()["messages"]] == ["a", "b"]
        stranger = await http.get(
            f"/v1/conversations/{conversation_id}/messages",
            headers={"Authorization": f"Bearer {token_for('mallory')}"},
        )
        assert stranger.status_code == 404
        assert (await http.get("/v1/conversations")).status_code == 401


async def test_another_users_conversation_is_not_found(live: LiveServer) -> None:
    async with connect(live.ws_url, token_for("dave")) as chat:
        mine = await chat.ask("x", "What is Moravec's paradox?")
    async with connect(live.ws_url, token_for("eve")) as chat:
        frames = await chat.ask("y", "Tell me more", conversation_id=mine[0]["conversation_id"])
        assert frames == [
            {
                "type": "error",
                "id": "y",
                "seq": 1,
                "code": "not_found",
                "message": "no such conversation",
                "retryable": False,
            }
        ]
        frames = await chat.ask("z", "Tell me more", conversation_id="not-a-uuid")
        assert frames[-1]["code"] == "not_found"


async def test_cancel_closes_the_upstream_stream_and_keeps_the_partial_answer(
    live: LiveServer, slow_llm: FakeLLM
) -> None:
    disconnected = slow_llm.streams_disconnected
    async with connect(live.ws_url, token_for("frank")) as chat:
        await chat.send(type="ask", id="c1", question="Explain the capture point")
        frames = []
        while True:
            frame = await chat.recv()
            frames.append(frame)
            if frame["type"] == "delta" and len([f for f in frames if f["type"] == "delta"]) == 3:
                await chat.send(type="cancel", id="c1")
            if frame["type"] in ("done", "error"):
                break
        assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "cancelled"
        await slow_llm.wait_for(lambda: slow_llm.streams_disconnected > disconnected, timeout=2)
        # the socket stays usable
        await chat.send(type="ping", nonce="n1")
        assert await chat.recv_type("pong") == {"type": "pong", "nonce": "n1"}
        await chat.send(type="cancel", id="c1")
        gone = await chat.recv_type("error")
        assert gone["code"] == "not_found" and gone["id"] == "c1"
    saved = await live.services.store.list_messages("frank", frames[0]["conversation_id"])
    assert saved[0]["status"] == "cancelled"
    assert saved[0]["answer"] == deltas(frames) and saved[0]["answer"]


async def test_a_dropped_stream_is_interrupted_after_the_grace_period(
    services: Services, slow_llm: FakeLLM
) -> None:
    settings = services.settings.replace(resume_grace_s=0.5)
    async with LiveServer(dataclasses.replace(services, settings=settings)) as server:
        disconnected = slow_llm.streams_disconnected
        async with connect(server.ws_url, token_for("gina")) as chat:
            await chat.send(type="ask", id="d1", question="What is a VLA model?")
            start = await chat.recv_type("start")
            await chat.recv_type("delta")
        await asyncio.sleep(0.2)
        assert slow_llm.streams_disconnected == disconnected, "it keeps generating for a while"
        await slow_llm.wait_for(lambda: slow_llm.streams_disconnected > disconnected, timeout=3)
        for _ in range(100):
            saved = await services.store.list_messages("gina", start["conversation_id"])
            if saved[0]["status"] != "streaming":
                break
            await asyncio.sleep(0.02)
    assert saved[0]["status"] == "interrupted"
    assert saved[0]["answer"]


async def test_invalid_frames_get_errors_and_the_socket_stays_usable(live: LiveServer) -> None:
    async with connect(live.ws_url, token_for("hank")) as chat:
        cases = [
            "{not json",
            json.dumps({"type": "teleport"}),
            json.dumps({"type": "ask", "id": "q"}),
            json.dumps({"type": "ask", "id": "q", "question": "   "}),
            json.dumps({"type": "ask", "id": "q" * 65, "question": "hi"}),
            json.dumps({"type": "ask", "id": "q", "question": "x" * 4001}),
            json.dumps({"type": "ask", "id": "q", "question": 42}),
            json.dumps([1, 2]),
        ]
        ids = []
        for raw in cases:
            await chat.ws.send(raw)
            error = await chat.recv()
            assert error["type"] == "error" and error["code"] == "invalid_message", (raw, error)
            assert error["retryable"] is False
            ids.append(error.get("id"))
        # the error names the stream when the frame carries a usable id
        assert ids == [None, None, "q", "q", None, "q", "q", None]
        await chat.ws.send(b"\x00\x01binary")
        error = await chat.recv()
        assert error["code"] == "invalid_message" and "binary" in error["message"]
        missing = json.dumps({"type": "ask", "id": "q2"})
        await chat.ws.send(missing)
        error = await chat.recv()
        assert "question" in error["message"] and error["id"] == "q2"
        await chat.send(type="ping")
        assert await chat.recv() == {"type": "pong"}


async def _first_frame_then_close(
    url: str, frame: dict[str, object]
) -> tuple[dict[str, object], int]:
    """Send one frame on a fresh socket; return the server's answer and its close code."""
    async with connect(url) as chat:
        await chat.send(**frame)
        answer = await chat.recv()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await chat.recv()
    assert closed.value.rcvd is not None
    return answer, closed.value.rcvd.code


async def test_bad_tokens_close_4401(live: LiveServer) -> None:
    for token, code in [("garbage", "unauthorized"), (token_for("ivy", ttl=-60), "token_expired")]:
        error, close_code = await _first_frame_then_close(
            live.ws_url, {"type": "auth", "token": token}
        )
        assert error["type"] == "error" and error["code"] == code
        assert close_code == 4401
    error, close_code = await _first_frame_then_close(live.ws_url, {"type": "ping"})
    assert error["code"] == "unauthorized" and close_code == 4401


async def test_refresh_same_user_and_other_user(live: LiveServer) -> None:
    async with connect(live.ws_url, token_for("jo", ttl=60)) as chat:
        await chat.send(type="auth", token=token_for("jo", ttl=900))
        ready = await chat.recv_type("ready")
        assert ready["user_id"] == "jo"
        await chat.send(type="auth", token=token_for("someone-else"))
        assert (await chat.recv())["code"] == "unauthorized"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await chat.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_duplicate_and_too_many_streams(live: LiveServer, slow_llm: FakeLLM) -> None:
    limit = live.services.settings.max_streams_per_connection
    async with connect(live.ws_url, token_for("kim")) as chat:
        for i in range(limit):
            await chat.send(type="ask", id=f"s{i}", question=f"question {i} about humanoid robots")
        await chat.send(type="ask", id="s0", question="again")
        await chat.send(type="ask", id="extra", question="one too many")
        errors = {}
        while len(errors) < 2:
            frame = await chat.recv()
            if frame["type"] == "error":
                errors[frame["code"]] = frame
        assert errors["duplicate_id"]["id"] == "s0"
        assert (
            errors["too_many_streams"]["id"] == "extra"
            and errors["too_many_streams"]["retryable"] is True
        )
        for i in range(limit):
            await chat.send(type="cancel", id=f"s{i}")


async def test_model_failure_maps_to_upstream_unavailable(
    live: LiveServer, fake_llm: FakeLLM
) -> None:
    with model_config(fake_llm, fail_status=503):
        async with connect(live.ws_url, token_for("lee")) as chat:
            frames = await chat.ask("f", "What is LiDAR?")
    error = frames[-1]
    assert (
        error["type"] == "error"
        and error["code"] == "upstream_unavailable"
        and error["retryable"] is True
    )
    assert "test-key" not in error["message"] and "Traceback" not in error["message"]
    saved = await live.services.store.list_messages("lee", frames[0]["conversation_id"])
    assert saved[0]["status"] == "failed" and saved[0]["error_code"] == "upstream_unavailable"


async def test_unknown_chapter_filter_is_not_found(live: LiveServer) -> None:
    async with connect(live.ws_url, token_for("max")) as chat:
        frames = await chat.ask("cf", "What is QoS?", chapter="no-such-chapter")
        assert frames[-1]["code"] == "not_found"
        chapter_id = next(iter(live.services.catalog._chapters))
        frames = await chat.ask("ok", "What is this chapter about?", chapter=chapter_id)
        assert frames[-1]["type"] == "done"
        assert {s["chapter"] for s in frames[1]["sources"]} == {chapter_id}


async def test_http_basics(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.http_url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert set(ready.json()["checks"]) == {"database", "vector_store", "model"}
        schema = (await http.get("/v1/protocol")).json()
        names = set(schema["$defs"])
        assert {
            "Ask",
            "Auth",
            "Cancel",
            "Delta",
            "Done",
            "Error",
            "Ready",
            "Sources",
            "Start",
        } <= names


async def test_extractive_mode_without_a_model(services: Services) -> None:
    extractive = dataclasses.replace(services, model=ExtractiveModel())
    async with LiveServer(extractive) as server, connect(server.ws_url, token_for("nia")) as chat:
        frames = await chat.ask("e", "How does a complementary filter fix gyroscope drift?")
    text = deltas(frames)
    assert text.startswith(EXTRACTIVE_NOTICE)
    assert frames[-1]["type"] == "done"
    assert frames[1]["sources"][0]["title"] in text
    # it has its whole answer at once: not read a piece a tick (Stream.paced), it goes out as
    # the first piece and the rest merged
    assert sum(f["type"] == "delta" for f in frames) <= 2


async def test_origin_enforced_when_configured(services: Services) -> None:
    settings = services.settings.replace(allowed_origins=("https://book.example.com",))
    guarded = dataclasses.replace(services, settings=settings)
    async with LiveServer(guarded) as server:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(server.ws_url, token_for("oz"), origin="https://evil.example.com"):
                pass
        assert refused.value.response.status_code == 403
        async with connect(
            server.ws_url, token_for("oz"), origin="https://book.example.com"
        ) as chat:
            await chat.send(type="ping")
            assert (await chat.recv())["type"] == "pong"


async def test_auth_timeout_closes_4408(services: Services) -> None:
    settings = services.settings.replace(auth_timeout_s=0.3)
    async with LiveServer(dataclasses.replace(services, settings=settings)) as server:
        async with websockets.connect(server.ws_url) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408


async def test_model_breaking_mid_stream_keeps_the_partial_answer(
    live: LiveServer, fake_llm: FakeLLM
) -> None:
    with model_config(fake_llm, tokens_per_answer=50, break_after_tokens=5):
        async with connect(live.ws_url, token_for("pat")) as chat:
            frames = await chat.ask("b", "What is a humanoid?")
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "upstream_unavailable"
    assert frames[-1]["retryable"] is True
    partial = deltas(frames)
    assert partial
    saved = await live.services.store.list_messages("pat", frames[0]["conversation_id"])
    assert saved[0]["status"] == "failed" and saved[0]["answer"] == partial


async def test_vector_store_down_is_retrieval_unavailable(services: Services) -> None:
    unreachable = QdrantServerStore(
        AsyncQdrantClient(
            url=f"http://127.0.0.1:{free_port()}", timeout=1, check_compatibility=False
        )
    )
    broken = dataclasses.replace(
        services,
        vectors=unreachable,
        retriever=Retriever(services.embedder, unreachable, services.bm25),
    )
    try:
        async with LiveServer(broken) as server:
            async with connect(server.ws_url, token_for("quinn")) as chat:
                frames = await chat.ask("r", "What is a humanoid?")
            async with httpx.AsyncClient(base_url=server.http_url) as http:
                ready = await http.get("/readyz")
    finally:
        await unreachable.aclose()
    assert frames == [
        {
            "type": "error",
            "id": "r",
            "seq": 1,
            "code": "retrieval_unavailable",
            "message": frames[0]["message"],
            "retryable": True,
        }
    ]
    assert ready.status_code == 503
    assert ready.json()["checks"]["vector_store"] != "ok"
    assert ready.json()["checks"]["database"] == "ok"


async def test_database_down_is_database_unavailable(services: Services, database_url: str) -> None:
    store = await Store.connect(database_url)
    await store.close()  # a pool that can no longer reach the database
    broken = dataclasses.replace(services, store=store)
    async with LiveServer(broken) as server:
        async with connect(server.ws_url, token_for("ray")) as chat:
            frames = await chat.ask("d", "What is a humanoid?")
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            ready = await http.get("/readyz")
            history = await http.get(
                "/v1/conversations", headers={"Authorization": f"Bearer {token_for('ray')}"}
            )
    assert frames[-1]["code"] == "database_unavailable" and frames[-1]["retryable"] is True
    assert (
        "Traceback" not in frames[-1]["message"] and "postgres" not in frames[-1]["message"].lower()
    )
    assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"
    assert history.status_code == 503 and history.json()["error"]["code"] == "database_unavailable"


async def test_metrics_and_where_the_first_delta_time_went(
    live: LiveServer, fake_llm: FakeLLM
) -> None:
    with model_config(fake_llm, tokens_per_answer=10, tokens_per_second=100):
        async with connect(live.ws_url, token_for("metra")) as chat:
            frames = await chat.ask("m", "What is the zero-moment point?")
    timings = frames[-1]["timings"]
    for span in ("embed_ms", "search_ms", "db_ms", "model_first_chunk_ms", "server_added_ms"):
        assert timings[span] >= 0, span
    assert timings["retrieval_ms"] >= timings["embed_ms"]
    async with httpx.AsyncClient(base_url=live.http_url) as http:
        text = (await http.get("/metrics")).text
    for name in (
        "chat_connections_open",
        'chat_streams_total{kind="answer",outcome="complete"}',
        "chat_first_delta_seconds_bucket",
        "chat_delta_gap_seconds_count",
        "chat_model_first_chunk_seconds_count",
        "chat_embedding_seconds_count",
        "chat_retrieval_seconds_count",
        "chat_database_seconds_count",
        "chat_server_added_seconds_count",
        "chat_errors_total",
        "chat_outbox_merges_total",
        "chat_slow_client_closes_total",
    ):
        assert name in text, name


async def test_cors_for_the_http_api_follows_allowed_origins(services: Services) -> None:
    settings = services.settings.replace(allowed_origins=("https://book.example.com",))
    allowed = {
        "Origin": "https://book.example.com",
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    other = {"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"}
    async with (
        LiveServer(dataclasses.replace(services, settings=settings)) as server,
        httpx.AsyncClient(base_url=server.http_url) as http,
    ):
        preflight = await http.options("/v1/profile", headers=allowed)
        refused = await http.options("/v1/profile", headers=other)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://book.example.com"
    assert "access-control-allow-origin" not in refused.headers
