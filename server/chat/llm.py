"""Streamed completions: an OpenAI-compatible model, or an honest extractive fallback without one."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol

import httpx2
import msgspec
import openai

from server.chat.prompt import Prompt
from server.errors import UpstreamUnavailable


@dataclasses.dataclass(slots=True)
class Generation:
    """What a model stream reported besides its text; filled while it runs."""

    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ChatModel(Protocol):
    """Something that streams an answer's text for a prompt."""

    name: str
    # Its pieces come over a socket as the model writes them: reading it once a delta tick
    # (Stream.paced) reads a fast model's tokens together. A model that has its whole answer
    # at once would only be slowed down.
    read_on_tick: bool

    def stream(self, prompt: Prompt, generation: Generation) -> AsyncGenerator[str, None]:
        """Yield pieces of the answer; fill `generation` with usage and finish reason."""
        ...


# The SDK (on httpx2) raises its transport's errors unwrapped while a raw stream is read.
# The SDK's per-chunk pydantic models cost ~110 µs each and its line iterator decodes text we only
# need as bytes; we keep the SDK as the transport (base URL, auth, retries, status errors) and
# read the raw SSE bytes ourselves.
class _DeltaContent(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _DeltaContent | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: dict[str, Any] | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)
_request_encoder = msgspec.json.Encoder()


async def sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """The `data:` payloads of a server-sent event stream, as bytes: those completed by each
    read together, so that tokens which arrived together are handled (and sent) together."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        payloads = [line[5:].strip() for line in lines if line.startswith(b"data:")]
        if payloads:
            yield payloads
    if pending.startswith(b"data:"):
        yield [pending[5:].strip()]


def _read_chunk(data: bytes, generation: Generation, texts: list[str]) -> None:
    """Add one completion chunk's text to `texts` and its usage and finish reason to
    `generation`."""
    try:
        chunk = _chunk_decoder.decode(data)
    except msgspec.DecodeError:
        raise UpstreamUnavailable("the model sent a malformed stream") from None
    if chunk.error is not None:
        raise UpstreamUnavailable("the model reported an error mid-stream")
    if chunk.usage is not None:
        generation.prompt_tokens = chunk.usage.prompt_tokens
        generation.completion_tokens = chunk.usage.completion_tokens
    for choice in chunk.choices:
        if choice.finish_reason:
            generation.finish_reason = "length" if choice.finish_reason == "length" else "stop"
        if choice.delta is not None and (text := choice.delta.content):
            if "\x00" in text:  # Postgres cannot store NUL: never pass it on
                text = text.replace("\x00", "")
            if text:
                texts.append(text)


class OpenAIChatModel:
    """Any OpenAI-compatible chat completions endpoint, streamed."""

    read_on_tick = True

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: str,
        *,
        max_tokens: int,
        first_byte_s: float,
        temperature: float = 0.2,
    ) -> None:
        self.name = model
        self._client = client
        self._max_tokens = max_tokens
        self._first_byte_s = first_byte_s
        self._temperature = temperature

    async def stream(self, prompt: Prompt, generation: Generation) -> AsyncGenerator[str, None]:
        """Stream the completion's text; closing the generator closes the upstream HTTP stream.

        One deadline covers the request up to the model's first bytes, the SDK's retries
        included: a reader waits MODEL_TIMEOUT_SECONDS at most, not that times the retries.

        Once the model answers, nothing here holds the prompt (passages and history, several
        times the rest of a stream's memory): the SDK's typed `create` would keep its request
        options, messages included, and the request's body for the life of the response, so the
        request goes through its documented raw `post` (same client: base URL, auth, retries,
        status errors), the body is let go once sent and the response keeps only the method
        and URL of its request."""
        # bytes, sent as they are: the SDK would encode a dict with the stdlib json (44 µs for a
        # 9 KB prompt, 3 µs with msgspec)
        body = _request_encoder.encode(
            {
                "model": self.name,
                "messages": prompt.messages,  # plain role/content dicts
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": self._max_tokens,
                "temperature": self._temperature,
            }
        )
        del prompt
        response: httpx2.Response | None = None
        try:
            async with asyncio.timeout(self._first_byte_s) as first_bytes:
                response = await self._client.post(
                    "/chat/completions", cast_to=httpx2.Response, content=body, stream=True
                )
                del body
                response.request = httpx2.Request(response.request.method, response.request.url)
                async for payloads in sse_data(response.aiter_bytes()):
                    if first_bytes.when() is not None:
                        first_bytes.reschedule(None)  # from here the SDK's read timeout holds
                    texts: list[str] = []
                    done = False
                    for data in payloads:
                        if data == b"[DONE]":
                            done = True
                            break
                        _read_chunk(data, generation, texts)
                    if texts:
                        yield "".join(texts)
                    if done:
                        break
        except openai.APIStatusError as exc:
            status = exc.status_code
            retryable = status == 429 or status >= 500
            raise UpstreamUnavailable(
                f"the model provider answered HTTP {status}", retryable=retryable
            ) from None
        except (openai.APIConnectionError, openai.APITimeoutError, httpx2.HTTPError):
            raise UpstreamUnavailable(
                "the model provider could not be reached or broke off"
            ) from None
        except TimeoutError:
            raise UpstreamUnavailable(
                f"the model provider did not answer within {self._first_byte_s:g} s"
            ) from None
        finally:
            if response is not None:
                await response.aclose()


EXTRACTIVE_NOTICE = (
    "No language model is configured on this server, so this answer quotes the most relevant "
    "passages of the book instead of composing one."
)
_WORDS = re.compile(r"\S+\s*")


class ExtractiveModel:
    """Composes an answer from the best retrieved passages, saying plainly that no model is configured."""

    name = "extractive"
    read_on_tick = False

    def __init__(self, passages: int = 3, chars_per_passage: int = 600) -> None:
        self._passages = passages
        self._chars = chars_per_passage

    async def stream(self, prompt: Prompt, generation: Generation) -> AsyncGenerator[str, None]:
        """Yield the composed answer a few words at a time."""
        text = compose_extract(prompt, self._passages, self._chars)
        words = _WORDS.findall(text)
        for i in range(0, len(words), 4):
            yield "".join(words[i : i + 4])
        generation.finish_reason = "stop"


def compose_extract(prompt: Prompt, passages: int, chars: int) -> str:
    """The extractive answer's text."""
    if not prompt.sources:
        return EXTRACTIVE_NOTICE + "\n\nThe book does not seem to cover this question."
    parts = [EXTRACTIVE_NOTICE, ""]
    for n, source in enumerate(prompt.sources[:passages], start=1):
        where = " › ".join(p for p in (source.title, source.section) if p)
        body = source.body
        if body.startswith(where + "\n"):
            body = body[len(where) + 1 :]  # the breadcrumb line chunks carry for retrieval
        parts.append(f"**{where}** [{n}]\n\n{_excerpt(body, chars)}\n")

    return "\n".join(parts)


def _excerpt(text: str, limit: int) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    excerpt = text[: cut if cut > limit // 2 else limit].rstrip() + " …"
    if excerpt.count("```") % 2:  # cut inside a code block: close it, or the rest renders as code
        excerpt += "\n```"
    return excerpt
