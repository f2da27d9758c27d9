"""The fake model server, driven through the real openai SDK over loopback HTTP."""

from __future__ import annotations

import asyncio
import base64
import sys
import time
from collections.abc import AsyncIterator

import httpx
import numpy as np
import openai
import pytest
from openai import AsyncOpenAI

from server.errors import ConfigError
from server.tools.fake_llm import (
    FakeLLM,
    FakeLLMConfig,
    embed_text,
    expected_reply,
    measure_capacity,
)

QUESTION = "photosynthesis converts light energy into chemical energy"


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(FakeLLMConfig(tokens_per_answer=8)) as server:
        yield server


@pytest.fixture
async def client(fake: FakeLLM) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=fake.base_url, api_key="x", max_retries=0) as sdk:
        yield sdk


def ask(text: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You answer from sources."},
        {"role": "user", "content": text},
    ]


async def test_stream_concatenates_to_reply_with_role_finish_and_usage_chunks(
    fake: FakeLLM, client: AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(
        model="m", messages=ask(QUESTION), stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    # role chunk + 8 content chunks + finish chunk + usage chunk
    assert len(chunks) == 11
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Based on the sources [1] photosynthesis converts light"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8
    assert len({c.id for c in chunks}) == 1
    assert fake.chat_requests[-1]["messages"][-1]["content"] == QUESTION
    assert fake.received[-1].has_authorization
    assert (fake.streams_started, fake.streams_completed, fake.open_streams) == (1, 1, 0)


async def test_stream_without_include_usage_has_no_usage_chunk(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="m", messages=ask("hi"), stream=True)
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 10
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)


async def test_non_stream_completion(fake: FakeLLM, client: AsyncOpenAI) -> None:
    fake.config = FakeLLMConfig(reply="Chlorophyll absorbs light [2].")
    answer = await client.chat.completions.create(model="m", messages=ask(QUESTION))
    assert answer.choices[0].message.content == "Chlorophyll absorbs light [2]."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 4
    assert fake.streams_started == 0


async def test_fixed_reply_streams_word_by_word(fake: FakeLLM, client: AsyncOpenAI) -> None:
    fake.config = FakeLLMConfig(reply="One two  three ")
    stream = await client.chat.completions.create(model="m", messages=ask("x"), stream=True)
    deltas = [c.choices[0].delta.content async for c in stream if c.choices[0].delta.content]
    assert deltas == ["One", " two", "  three "]


async def test_marker_overrides_tokens_per_request(client: AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(
        model="m", messages=ask("cells divide [[fake:tokens=7]]")
    )
    assert answer.choices[0].message.content == "Based on the sources [1] cells divide"
    assert expected_reply("cells divide [[fake:tokens=7]]", FakeLLMConfig(tokens_per_answer=7)) == (
        answer.choices[0].message.content
    )


async def test_unknown_marker_is_a_400(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="unknown fake directive"):
        await client.chat.completions.create(model="m", messages=ask("[[fake:tokenz=3]]"))


async def test_tokens_per_second_paces_the_stream(fake: FakeLLM, client: AsyncOpenAI) -> None:
    fake.config = FakeLLMConfig(tokens_per_answer=10, tokens_per_second=50)
    began = time.monotonic()
    stream = await client.chat.completions.create(model="m", messages=ask("x"), stream=True)
    arrivals = [time.monotonic() async for chunk in stream if chunk.choices[0].delta.content]
    assert len(arrivals) == 10
    # 9 gaps of 20 ms after the first token
    assert arrivals[-1] - arrivals[0] >= 0.15
    assert time.monotonic() - began < 2.0


async def test_first_token_delay(fake: FakeLLM, client: AsyncOpenAI) -> None:
    fake.config = FakeLLMConfig(tokens_per_answer=3, first_token_delay=0.3)
    began = time.monotonic()
    stream = await client.chat.completions.create(model="m", messages=ask("x"), stream=True)
    async for chunk in stream:
        if chunk.choices[0].delta.content:
            assert time.monotonic() - began >= 0.25
            break
    await stream.close()
    record = fake.stream_records[-1]
    assert record.first_token_at is not None
    assert record.first_token_at - record.started_at >= 0.29


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (503, openai.InternalServerError),
        (500, openai.InternalServerError),
        (429, openai.RateLimitError),
    ],
)
async def test_fail_status_raises_the_sdk_error(
    fake: FakeLLM, client: AsyncOpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    fake.config = FakeLLMConfig(fail_status=status)
    with pytest.raises(error) as caught:
        await client.chat.completions.create(model="m", messages=ask("x"), stream=True)
    assert caught.value.status_code == status
    assert "injected" in caught.value.message
    assert fake.failures_injected == 1
    assert fake.streams_started == 0


async def test_fail_first_n_then_recover(fake: FakeLLM) -> None:
    fake.config = FakeLLMConfig(
        tokens_per_answer=2, fail_status=503, fail_first_n=2, retry_after_ms=5
    )
    async with AsyncOpenAI(base_url=fake.base_url, api_key="x", max_retries=2) as sdk:
        answer = await sdk.chat.completions.create(model="m", messages=ask("x"))
    assert answer.choices[0].message.content == "Based on"
    assert fake.failures_injected == 2
    assert len(fake.chat_requests) == 3


async def test_break_after_tokens_makes_the_sdk_stream_raise(
    fake: FakeLLM, client: AsyncOpenAI
) -> None:
    fake.config = FakeLLMConfig(tokens_per_answer=10, break_after_tokens=3)
    stream = await client.chat.completions.create(model="m", messages=ask("x"), stream=True)
    received: list[str] = []

    async def drain() -> None:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    # openai 3.x wraps httpx's RemoteProtocolError (incomplete chunked read) in APIConnectionError
    with pytest.raises(openai.APIConnectionError) as caught:
        await drain()
    await stream.close()
    assert "".join(received) == "Based on the"
    assert type(caught.value.__cause__).__name__ == "RemoteProtocolError"
    assert fake.streams_broken == 1
    assert fake.stream_records[-1].outcome == "broken"


async def test_closing_the_sdk_stream_early_is_seen_as_a_disconnect(
    fake: FakeLLM, client: AsyncOpenAI
) -> None:
    fake.config = FakeLLMConfig(tokens_per_answer=1000, tokens_per_second=50)
    stream = await client.chat.completions.create(model="m", messages=ask("x"), stream=True)
    seen = 0
    async for _chunk in stream:
        seen += 1
        if seen == 3:
            break
    assert fake.open_streams == 1
    closed_at = time.monotonic()
    await stream.close()
    await fake.wait_for(lambda: fake.streams_disconnected >= 1, timeout=1)
    record = fake.stream_records[-1]
    assert record.disconnected_at is not None
    assert record.disconnected_at - closed_at < 1.0
    assert 2 <= record.tokens_sent < 1000
    assert (fake.open_streams, fake.streams_completed) == (0, 0)


async def test_hang_never_answers(fake: FakeLLM, client: AsyncOpenAI) -> None:
    fake.config = FakeLLMConfig(hang=True)
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="m", messages=ask("x"), timeout=0.3)
    assert fake.requests_hung == 1
    await fake.wait_for(lambda: fake.open_connections == 0, timeout=1)


async def test_embeddings_are_deterministic_unit_vectors(
    fake: FakeLLM, client: AsyncOpenAI
) -> None:
    texts = ["mitochondria", "ribosomes make proteins"]
    first = await client.embeddings.create(model="e", input=texts)  # SDK asks for base64
    again = await client.embeddings.create(model="e", input=texts, encoding_format="float")
    short = await client.embeddings.create(model="e", input="mitochondria", dimensions=64)

    vectors = [np.array(item.embedding) for item in first.data]
    assert [len(v) for v in vectors] == [1536, 1536]
    assert [item.embedding for item in again.data] == [v.tolist() for v in vectors]
    assert all(abs(float(np.linalg.norm(v)) - 1.0) < 1e-5 for v in vectors)
    assert abs(float(vectors[0] @ vectors[1])) < 0.2
    assert len(short.data[0].embedding) == 64
    assert short.data[0].embedding == embed_text("mitochondria", 64).tolist()
    assert fake.requests[-1]["dimensions"] == 64


async def test_word_embeddings_relate_texts_sharing_words(fake: FakeLLM) -> None:
    fake.config = FakeLLMConfig(embedding_mode="words")
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.post(
            "/embeddings",
            json={"input": ["light energy", "light energy", "cell wall"], "dimensions": 256},
        )
    vectors = [np.array(item["embedding"]) for item in response.json()["data"]]
    assert float(vectors[0] @ vectors[1]) == pytest.approx(1.0)
    assert float(vectors[0] @ vectors[2]) == pytest.approx(0.0, abs=0.5)


async def test_embeddings_failure_injection(fake: FakeLLM, client: AsyncOpenAI) -> None:
    fake.config = FakeLLMConfig(embeddings_fail_status=503)
    with pytest.raises(openai.InternalServerError):
        await client.embeddings.create(model="e", input="x")


async def test_models_and_unknown_routes(fake: FakeLLM, client: AsyncOpenAI) -> None:
    models = [model.id async for model in client.models.list()]
    assert models == ["fake-model"]
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        missing = await http.get("/nowhere")
        wrong_method = await http.get("/chat/completions")
        not_json = await http.post("/chat/completions", content=b"{")
    assert missing.status_code == 404
    assert wrong_method.status_code == 405
    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"


async def test_two_hundred_concurrent_streams(fake: FakeLLM, client: AsyncOpenAI) -> None:
    fake.config = FakeLLMConfig(tokens_per_answer=10, tokens_per_second=100)

    async def one(n: int) -> str:
        stream = await client.chat.completions.create(
            model="m", messages=ask(f"question {n}"), stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    answers = await asyncio.gather(*(one(n) for n in range(200)))
    assert answers == [expected_reply(f"question {n}", fake.config) for n in range(200)]
    assert answers[7] == "Based on the sources [1] question 7 question 7 question"
    assert (fake.streams_completed, fake.open_streams) == (200, 0)


async def test_wait_for_times_out(fake: FakeLLM) -> None:
    with pytest.raises(TimeoutError):
        await fake.wait_for(lambda: fake.streams_started > 0, timeout=0.05)


def test_bad_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        FakeLLM(FakeLLMConfig(tokens_per_second=-1))
    with pytest.raises(ConfigError):
        FakeLLM(FakeLLMConfig(fail_status=200))


async def test_base64_embedding_matches_float32_bytes(fake: FakeLLM) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.post(
            "/embeddings", json={"input": "x", "dimensions": 8, "encoding_format": "base64"}
        )
    raw = base64.b64decode(response.json()["data"][0]["embedding"])
    assert np.frombuffer(raw, dtype="<f4").tolist() == embed_text("x", 8).tolist()


async def test_capacity_probe_reports_a_small_level() -> None:
    # Enough work inside the measuring window for CPU accounting (10 ms ticks) to see it: 20
    # tokens at 50/s once ended before the window began on a busy machine and read as 0.0.
    results = await measure_capacity(
        levels=(100,), tokens_per_second=100, tokens=200, pin_cores=False
    )
    assert len(results) == 1
    assert results[0].completed == 100
    assert 0 < results[0].server_cpu < 1.5


async def test_cli_serve_answers_over_http() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.tools.fake_llm",
        "serve",
        "--port",
        "0",
        "--tokens",
        "3",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        base_url = line.split()[-1]
        async with AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as sdk:
            answer = await sdk.chat.completions.create(model="m", messages=ask("cli check"))
        assert answer.choices[0].message.content == "Based on the"
    finally:
        process.terminate()
        await process.wait()
