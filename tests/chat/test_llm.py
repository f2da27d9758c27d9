"""The model client against the fake model over real HTTP: what it lets go once the model answers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai

from server.chat.llm import Generation, OpenAIChatModel, sse_data
from server.chat.prompt import build_prompt
from server.store import Turn
from tests.conftest import free_port


def _members(obj: Any) -> Iterator[Any]:
    if isinstance(obj, dict):
        yield from obj.values()
    elif isinstance(obj, (list, tuple, set, frozenset)):
        yield from obj
    else:
        yield from getattr(obj, "__dict__", {}).values()
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                yield getattr(obj, name, None)


def _holds(value: Any, marker: str, needle: bytes) -> bool:
    if isinstance(value, str):
        return marker in value
    if isinstance(value, (bytes, bytearray)):
        return needle in value
    # the collector does not track a container of atoms (a message's dict): look inside
    if isinstance(value, (dict, list, tuple)) and not gc.is_tracked(value):
        return any(_holds(v, marker, needle) for v in _members(value))
    return False


def holders_of(marker: str) -> int:
    """Objects the garbage collector knows that hold a str or bytes with `marker` in it."""
    gc.collect()
    needle = marker.encode()
    found = 0
    for obj in gc.get_objects():
        try:
            members = list(_members(obj))
        except Exception:  # an object whose attributes cannot be read is not a holder here
            continue
        if any(_holds(value, marker, needle) for value in members):
            found += 1
    return found


@contextlib.asynccontextmanager
async def model_process() -> AsyncIterator[str]:
    """The fake model in a process of its own (in this one, what it received would show up as
    holders); its base URL."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", "fake-llm", "serve", "--port", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                await writer.wait_closed()
                break
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        await proc.wait()


async def test_the_prompt_is_let_go_once_the_model_answers() -> None:
    """The prompt is most of an active stream's memory: once the model streams, neither the
    prompt, nor the SDK's request options, nor the request's body may still hold it."""
    marker = f"passage-{uuid.uuid4().hex}"
    async with model_process() as base_url:
        client = openai.AsyncOpenAI(
            api_key="k", base_url=base_url, http_client=openai.DefaultAioHttpClient()
        )
        await _stream_and_look(client, marker)


async def _stream_and_look(client: openai.AsyncOpenAI, marker: str) -> None:
    model = OpenAIChatModel(client, "fake", max_tokens=64, first_byte_s=10.0)
    try:
        # An earlier turn: the fake model's answer echoes the last question only, so what the
        # client reads does not hold the marker.
        earlier = Turn(f"{marker} is in this question. " * 50, "an answer")
        generation = Generation()
        answer = model.stream(
            build_prompt("What is it? [[fake:tokens=20]]", [], history=[earlier]), generation
        )
        del earlier
        assert holders_of(marker) > 0  # the prompt, held by the stream that has not started
        pieces = [await anext(answer)]
        assert holders_of(marker) == 0
        pieces += [piece async for piece in answer]
        assert pieces and generation.completion_tokens == 20
    finally:
        await client.close()


async def test_sse_data_hands_over_the_events_each_read_completed_together() -> None:
    """Tokens that arrived in one read are handled (and sent) together; an event split across
    reads waits for its end."""

    async def reads() -> AsyncIterator[bytes]:
        for chunk in (b"data: a\n\ndata: b\n\nda", b"ta: c\n", b"\n", b": ping\n\n", b"data: d"):
            yield chunk

    assert [payloads async for payloads in sse_data(reads())] == [[b"a", b"b"], [b"c"], [b"d"]]
