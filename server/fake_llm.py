"""OpenAI-compatible fake model server: real HTTP on loopback, cheap enough for 1,000s of streams.

Hand-rolled on asyncio.Protocol + httptools rather than a framework: a paced stream costs one timer
callback and one socket write per token, and a client hang-up is seen at once via connection_lost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import http
import itertools
import logging
import math
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, cast

import httptools
import msgspec
import numpy as np

from server.errors import ConfigError

_log = logging.getLogger(__name__)
DEFAULT_EMBEDDING_DIMENSIONS = 1536
_LEAD_WORDS = ("Based", "on", "the", "sources", "[1]")
_MARKER = re.compile(r"\[\[fake:([^\]]*)\]\]")
_MARKER_KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "tokens": ("tokens_per_answer", int),
    "tps": ("tokens_per_second", float),
    "delay": ("first_token_delay", float),
    "break": ("break_after_tokens", int),
    "fail": ("fail_status", int),
    "hang": ("hang", lambda value: value not in ("0", "false")),
}


@dataclasses.dataclass
class FakeLLMConfig:
    """How the fake model answers; read at the start of every request, so tests may change it."""

    tokens_per_answer: int = 40
    tokens_per_second: float = 0.0  # 0 = everything in one write
    first_token_delay: float = 0.0
    reply: str | None = None  # fixed answer text; otherwise built from the last user message
    fail_status: int | None = None  # chat requests get this HTTP error instead of an answer
    fail_first_n: int | None = None  # only the first N chat requests fail (None = all)
    retry_after_ms: int | None = None  # sent as `retry-after-ms` with injected failures
    break_after_tokens: int | None = None  # close the socket mid-stream after N content tokens
    hang: bool = False  # read the request, never answer
    embeddings_fail_status: int | None = None
    embedding_mode: Literal["hash", "words"] = "hash"  # "words": shared words → similar vectors
    model: str = "fake-model"
    echo: bool = False  # answer with the last user message itself, whitespace and all

    def validate(self) -> None:
        """Raise ConfigError for values the server cannot honour."""
        if self.tokens_per_answer < 0 or self.tokens_per_second < 0 or self.first_token_delay < 0:
            raise ConfigError("fake LLM: token counts, rates and delays must be >= 0")
        for status in (self.fail_status, self.embeddings_fail_status):
            if status is not None and not 400 <= status <= 599:
                raise ConfigError(f"fake LLM: failure status must be 4xx/5xx, got {status}")


@dataclasses.dataclass(slots=True)
class ReceivedRequest:
    """One HTTP request as the fake saw it."""

    method: str
    path: str
    body: dict[str, Any] | None
    has_authorization: bool
    received_at: float


@dataclasses.dataclass(slots=True)
class StreamRecord:
    """Timeline of one streamed answer (time.monotonic seconds), for latency measurements."""

    started_at: float
    first_token_at: float | None = None
    ended_at: float | None = None
    tokens_sent: int = 0
    outcome: Literal["open", "completed", "disconnected", "broken"] = "open"

    @property
    def disconnected_at(self) -> float | None:
        """When the client hung up, if it did before the end."""
        return self.ended_at if self.outcome == "disconnected" else None


def reply_tokens(user_text: str, config: FakeLLMConfig) -> list[str]:
    """The content deltas the fake streams for a last user message (markers already removed)."""
    if config.echo:
        return re.findall(r"\s*\S+|\s+$", user_text)
    if config.reply is not None:
        return re.findall(r"\s*\S+\s*$|\s*\S+|\s+$", config.reply)
    words = itertools.chain(_LEAD_WORDS, itertools.cycle(user_text.split() or ["answer"]))
    picked = itertools.islice(words, config.tokens_per_answer)
    return [word if i == 0 else " " + word for i, word in enumerate(picked)]


def expected_reply(user_text: str, config: FakeLLMConfig) -> str:
    """The full answer text the fake gives, for assertions."""
    return "".join(reply_tokens(_MARKER.sub("", user_text).strip(), config))


def embed_text(item: str | list[int], dimensions: int, mode: str = "hash") -> np.ndarray[Any, Any]:
    """Deterministic float32 unit vector for one embeddings input."""
    if mode == "words" and isinstance(item, str):
        vector = np.zeros(dimensions, dtype=np.float32)
        for word in re.findall(r"\w+", item.lower()):
            digest = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest())
            vector[digest % dimensions] += 1.0 if digest >> 63 else -1.0
        norm = float(np.linalg.norm(vector))
        if norm > 0:
            return vector / np.float32(norm)
    key = item.encode() if isinstance(item, str) else msgspec.json.encode(item)
    seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest())
    vector = np.random.default_rng(seed).standard_normal(dimensions, dtype=np.float32)
    return vector / np.float32(np.linalg.norm(vector))


def _parse_marker(text: str) -> tuple[dict[str, Any], str]:
    """Overrides from a `[[fake:tokens=5,tps=20]]` marker, and the user text without it."""
    match = _MARKER.search(text)
    if match is None:
        return {}, text
    overrides: dict[str, Any] = {}
    for item in filter(None, re.split(r"[,\s]+", match.group(1))):
        key, _, value = item.partition("=")
        if key not in _MARKER_KEYS:
            raise ValueError(f"unknown fake directive {key!r}")
        field, convert = _MARKER_KEYS[key]
        overrides[field] = convert(value or "1")
    return overrides, _MARKER.sub("", text).strip()


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        raise ValueError("'messages' must be a list")
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _word_count(messages: list[Any]) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))


def _http_chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _error_body(status: int, message: str) -> bytes:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    if status == 429:
        kind = "requests"
    code = {429: "rate_limit_exceeded", 404: "not_found", 503: "overloaded"}.get(status)
    error = {"message": message, "type": kind, "param": None, "code": code}
    return msgspec.json.encode({"error": error})


class _ChunkFrames:
    """Pre-encoded parts of one stream's chat.completion.chunk events, each one an HTTP chunk."""

    __slots__ = ("_content_head", "_content_tail", "_fixed", "_head", "_open_tail", "_usage_null")

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self._usage_null = b',"usage":null' if include_usage else b""
        self._head = (
            b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,'
            b'"system_fingerprint":"fp_fake","choices":[{"index":0,"delta":'
            % (completion_id.encode(), created, msgspec.json.encode(model))
        )
        self._open_tail = b',"logprobs":null,"finish_reason":null}]' + self._usage_null + b"}\n\n"
        self._content_head = self._head + b'{"content":'
        self._content_tail = b"}" + self._open_tail
        self._fixed = len(self._content_head) + len(self._content_tail)

    def role(self) -> bytes:
        delta = b'{"role":"assistant","content":"","refusal":null}'
        return _http_chunk(self._head + delta + self._open_tail)

    def content(self, text: str) -> bytes:
        # the per-token hot path: one encode, one format
        encoded = msgspec.json.encode(text)
        return b"%x\r\n%b%b%b\r\n" % (
            self._fixed + len(encoded),
            self._content_head,
            encoded,
            self._content_tail,
        )

    def finish(self) -> bytes:
        tail = b',"logprobs":null,"finish_reason":"stop"}]' + self._usage_null + b"}\n\n"
        return _http_chunk(self._head + b"{}" + tail)


class _Pacer:
    """Shared millisecond timer buckets: one loop timer serves every token due in the same ms.

    uvloop's call_at costs ~3 µs (a libuv timer each): 6% of a core at 20,000 tokens/s.
    Callbacks cannot be cancelled; they must check whether their work is still wanted.
    """

    _RESOLUTION = 0.001

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buckets: dict[int, list[Callable[[], None]]] = {}

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        key = math.ceil(when / self._RESOLUTION)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = []
            self._loop.call_at(key * self._RESOLUTION, self._fire, key)
        bucket.append(callback)

    def _fire(self, key: int) -> None:
        for callback in self._buckets.pop(key):
            try:
                callback()
            except Exception:  # one broken stream must not starve the others in its bucket
                _log.exception("fake LLM: pacer callback failed")


@dataclasses.dataclass(slots=True)
class _Stream:
    record: StreamRecord
    frames: _ChunkFrames
    tokens: list[str]
    limit: int  # tokens to send before finishing or breaking
    interval: float
    start_at: float  # loop time of the first token
    tail: bytes  # finish + usage + [DONE] + last chunk, encoded up front
    keep_alive: bool


_EMBEDDINGS_PATHS = ("/v1/embeddings", "/embeddings")
_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
_MODELS_PATHS = ("/v1/models", "/models")


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests are answered in order, one at a time."""

    def __init__(self, owner: FakeLLM) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        assert owner._pacer is not None, "connections exist only after start()"
        self._pacer = owner._pacer
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body = bytearray()
        self._has_auth = False
        self._queue: deque[tuple[str, str, bytes, bool, bool]] = deque()
        self._busy = False
        self._closed = False
        self._paused = False
        self._tick_on_resume = False
        self._timer: asyncio.TimerHandle | None = None
        self._stream: _Stream | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._owner._connection_opened(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._respond(400, _error_body(400, "malformed HTTP request"), keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._stream is not None and self._stream.record.outcome == "open":
            self._owner._stream_ended(self._stream.record, "disconnected")
        self._stream = None
        self._owner._connection_closed(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._tick_on_resume:
            self._tick_on_resume = False
            self._tick()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._body, self._has_auth = b"", bytearray(), False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self._has_auth = True

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        method = self._parser.get_method().decode()
        path = self._url.decode("latin-1").partition("?")[0]
        keep_alive = self._parser.should_keep_alive()
        self._queue.append((method, path, bytes(self._body), self._has_auth, keep_alive))
        if not self._busy:
            self._next()

    # request handling
    def _next(self) -> None:
        method, path, raw, has_auth, keep_alive = self._queue.popleft()
        self._busy = True
        try:
            body = msgspec.json.decode(raw) if raw else None
            if body is not None and not isinstance(body, dict):
                raise ValueError("request body must be a JSON object")
            self._owner._record(ReceivedRequest(method, path, body, has_auth, time.monotonic()))
            self._route(method, path, body or {}, keep_alive)
        except (ValueError, TypeError, msgspec.DecodeError, ConfigError) as exc:
            self._respond(400, _error_body(400, str(exc)), keep_alive)

    def _route(self, method: str, path: str, body: dict[str, Any], keep_alive: bool) -> None:
        expected = "GET" if path in _MODELS_PATHS else "POST"
        if path not in _CHAT_PATHS + _EMBEDDINGS_PATHS + _MODELS_PATHS:
            self._respond(404, _error_body(404, f"no route {path}"), keep_alive)
        elif method != expected:
            self._respond(405, _error_body(405, f"{method} not allowed on {path}"), keep_alive)
        elif path in _MODELS_PATHS:
            model = {
                "id": self._owner.config.model,
                "object": "model",
                "created": 0,
                "owned_by": "fake",
            }
            self._respond(200, msgspec.json.encode({"object": "list", "data": [model]}), keep_alive)
        elif path in _EMBEDDINGS_PATHS:
            self._owner._spawn(self._embeddings(body, keep_alive))
        else:
            self._chat(body, keep_alive)

    def _respond(self, status: int, body: bytes, keep_alive: bool, headers: bytes = b"") -> None:
        if self._closed or self._transport is None:
            return
        phrase = http.HTTPStatus(status).phrase.encode()
        connection = b"" if keep_alive else b"connection: close\r\n"
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n" % (status, phrase)
        length = b"content-length: %d\r\n" % len(body)
        self._transport.write(head + length + headers + connection + b"\r\n" + body)
        self._finish(keep_alive)

    def _finish(self, keep_alive: bool) -> None:
        self._busy = False
        self._stream = None
        if not keep_alive:
            assert self._transport is not None
            self._transport.close()
        elif self._queue:
            self._next()

    def _chat(self, body: dict[str, Any], keep_alive: bool) -> None:
        owner = self._owner
        config = owner.config
        messages = body.get("messages")
        overrides, user_text = _parse_marker(_last_user_text(messages))
        if overrides:
            config = dataclasses.replace(config, **overrides)
            config.validate()
        if config.hang:
            owner.requests_hung += 1
            return  # stays busy until the client gives up
        status = config.fail_status
        if status is not None and owner._take_failure(config):
            retry = b""
            if config.retry_after_ms is not None:
                retry = b"retry-after-ms: %d\r\n" % config.retry_after_ms
            message = f"fake LLM injected HTTP {status}"
            self._respond(status, _error_body(status, message), keep_alive, retry)
            return
        tokens = reply_tokens(user_text, config)
        model = str(body.get("model") or config.model)
        completion_id = f"chatcmpl-fake{owner._next_id():08x}"
        prompt_tokens = _word_count(messages) if isinstance(messages, list) else 0
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        if body.get("stream") is True:
            stream_options = body.get("stream_options") or {}
            include_usage = bool(stream_options.get("include_usage"))
            self._start_stream(
                completion_id, model, tokens, usage, include_usage, config, keep_alive
            )
            return
        said = {"role": "assistant", "content": "".join(tokens), "refusal": None}
        choice = {"index": 0, "message": said, "logprobs": None, "finish_reason": "stop"}
        answer = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [choice],
            "usage": usage,
        }
        rate = config.tokens_per_second
        delay = config.first_token_delay + (len(tokens) / rate if rate > 0 else 0.0)
        if config.break_after_tokens is not None:
            assert self._transport is not None
            self._timer = self._loop.call_later(delay, self._transport.close)
        else:
            encoded = msgspec.json.encode(answer)
            self._timer = self._loop.call_later(delay, self._respond, 200, encoded, keep_alive)

    def _start_stream(
        self,
        completion_id: str,
        model: str,
        tokens: list[str],
        usage: dict[str, int],
        include_usage: bool,
        config: FakeLLMConfig,
        keep_alive: bool,
    ) -> None:
        assert self._transport is not None
        created = int(time.time())
        frames = _ChunkFrames(completion_id, created, model, include_usage)
        tail = [frames.finish()]
        if include_usage:
            usage_chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [],
                "usage": usage,
            }
            tail.append(_http_chunk(b"data: " + msgspec.json.encode(usage_chunk) + b"\n\n"))
        tail.append(_http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        limit = len(tokens)
        if config.break_after_tokens is not None:
            limit = min(limit, config.break_after_tokens)
        rate = config.tokens_per_second
        record = StreamRecord(started_at=time.monotonic())
        self._stream = _Stream(
            record=record,
            frames=frames,
            tokens=tokens,
            limit=limit,
            interval=1.0 / rate if rate > 0 else 0.0,
            start_at=self._loop.time() + config.first_token_delay,
            tail=b"".join(tail),
            keep_alive=keep_alive,
        )
        self._owner._stream_started(record)
        connection = b"" if keep_alive else b"connection: close\r\n"
        self._transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n%s\r\n" % connection
        )
        if config.first_token_delay > 0:
            self._pacer.call_at(self._stream.start_at, self._tick)
        else:
            self._tick()

    def _tick(self) -> None:
        """Send the next token (or all of them when unpaced), then finish or break."""
        stream, transport = self._stream, self._transport
        if stream is None or transport is None or self._closed:
            return  # the client hung up before this pacer callback came due
        if self._paused:  # the client is not reading; go on when its buffer drains
            self._tick_on_resume = True
            return
        record = stream.record
        sent = record.tokens_sent
        if stream.interval and 0 < sent < stream.limit - 1:  # hot path: one token, next one paced
            transport.write(stream.frames.content(stream.tokens[sent]))
            record.tokens_sent = sent + 1
            self._pacer.call_at(stream.start_at + (sent + 1) * stream.interval, self._tick)
            return
        out: list[bytes] = []
        if record.first_token_at is None:
            record.first_token_at = time.monotonic()
            out.append(stream.frames.role())
        end = stream.limit if stream.interval == 0 else min(stream.limit, sent + 1)
        out.extend(stream.frames.content(token) for token in stream.tokens[sent:end])
        record.tokens_sent = end
        transport.write(b"".join(out))
        if end < stream.limit:
            self._pacer.call_at(stream.start_at + end * stream.interval, self._tick)
        elif stream.limit < len(stream.tokens):  # break_after_tokens: drop the line mid-body
            self._owner._stream_ended(record, "broken")
            self._stream = None
            transport.close()
        else:
            transport.write(stream.tail)
            self._owner._stream_ended(record, "completed")
            self._finish(stream.keep_alive)

    async def _embeddings(self, body: dict[str, Any], keep_alive: bool) -> None:
        config = self._owner.config
        status = config.embeddings_fail_status
        if status is not None:
            self._respond(
                status, _error_body(status, f"fake LLM injected HTTP {status}"), keep_alive
            )
            return
        raw = body.get("input")
        if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)):
            raw = [raw]
        dimensions = body.get("dimensions") or DEFAULT_EMBEDDING_DIMENSIONS
        if (
            not isinstance(raw, list)
            or not raw
            or not isinstance(dimensions, int)
            or dimensions < 1
        ):
            message = "'input' must be a string or a non-empty list; 'dimensions' a positive int"
            self._respond(400, _error_body(400, message), keep_alive)
            return
        use_base64 = body.get("encoding_format") == "base64"
        answer = await asyncio.to_thread(
            _embeddings_answer,
            raw,
            dimensions,
            config.embedding_mode,
            use_base64,
            body.get("model"),
        )
        self._respond(200, answer, keep_alive)


def _embeddings_answer(
    inputs: list[Any], dimensions: int, mode: str, use_base64: bool, model: Any
) -> bytes:
    data = []
    for index, item in enumerate(inputs):
        vector = embed_text(item, dimensions, mode)
        encoded: Any = (
            base64.b64encode(vector.astype("<f4").tobytes()).decode()
            if use_base64
            else vector.tolist()
        )
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    count = sum(len(i.split()) if isinstance(i, str) else len(i) for i in inputs)
    usage = {"prompt_tokens": count, "total_tokens": count}
    return msgspec.json.encode(
        {"object": "list", "data": data, "model": str(model or "fake-embedding"), "usage": usage}
    )


class FakeLLM:
    """The fake server: start it, point an OpenAI client at `base_url`, inspect what it saw."""

    def __init__(self, config: FakeLLMConfig | None = None) -> None:
        self._config = config or FakeLLMConfig()
        self._config.validate()
        self.received: deque[ReceivedRequest] = deque(maxlen=1000)
        self.stream_records: deque[StreamRecord] = deque(maxlen=20_000)
        self.requests_total = 0
        self.requests_hung = 0
        self.failures_injected = 0
        self.connections_opened = 0
        self.streams_started = 0
        self.streams_completed = 0
        self.streams_disconnected = 0
        self.streams_broken = 0
        self.open_streams = 0
        self._ids = itertools.count(1)
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._pacer: _Pacer | None = None
        self._address: tuple[str, int] | None = None

    @property
    def config(self) -> FakeLLMConfig:
        """Behaviour for next requests; assigning a new one restarts the `fail_first_n` count."""
        return self._config

    @config.setter
    def config(self, config: FakeLLMConfig) -> None:
        config.validate()
        self._config = config
        self.failures_injected = 0

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Decoded JSON bodies of the last (up to 1,000) requests, oldest first."""
        return [r.body for r in self.received if r.body is not None]

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """Bodies of the chat completion requests among `requests`."""
        return [r.body for r in self.received if r.body is not None and r.path in _CHAT_PATHS]

    @property
    def base_url(self) -> str:
        """The OpenAI `base_url`, e.g. http://127.0.0.1:PORT/v1."""
        if self._address is None:
            raise RuntimeError("FakeLLM is not started")
        return f"http://{self._address[0]}:{self._address[1]}/v1"

    @property
    def open_connections(self) -> int:
        """Client connections currently open (idle keep-alive ones included)."""
        return len(self._connections)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (0 = any free port)."""
        loop = asyncio.get_running_loop()
        self._pacer = _Pacer(loop)
        self._server = await loop.create_server(lambda: _Connection(self), host, port, backlog=4096)
        self._address = self._server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        """Stop listening and drop every connection, hung or streaming ones included."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            connection.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost callbacks run
        self._server = None

    async def __aenter__(self) -> FakeLLM:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 2.0) -> None:  # noqa: ASYNC109
        """Wait until predicate() holds; re-checked whenever a request or a stream changes state."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"fake LLM: condition not met within {timeout} s")
            if self._changed is None:
                self._changed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    # hooks for _Connection
    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _next_id(self) -> int:
        return next(self._ids)

    def _record(self, request: ReceivedRequest) -> None:
        self.received.append(request)
        self.requests_total += 1
        self._notify()

    def _take_failure(self, config: FakeLLMConfig) -> bool:
        if config.fail_first_n is not None and self.failures_injected >= config.fail_first_n:
            return False
        self.failures_injected += 1
        return True

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _connection_opened(self, connection: _Connection) -> None:
        self._connections.add(connection)
        self.connections_opened += 1

    def _connection_closed(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        self._notify()

    def _stream_started(self, record: StreamRecord) -> None:
        self.stream_records.append(record)
        self.streams_started += 1
        self.open_streams += 1
        self._notify()

    def _stream_ended(
        self, record: StreamRecord, outcome: Literal["completed", "disconnected", "broken"]
    ) -> None:
        record.outcome = outcome
        record.ended_at = time.monotonic()
        self.open_streams -= 1
        if outcome == "completed":
            self.streams_completed += 1
        elif outcome == "disconnected":
            self.streams_disconnected += 1
        else:
            self.streams_broken += 1
        self._notify()


def _run_loop(main: Any) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(main)
    else:
        uvloop.run(main)


def run(host: str = "127.0.0.1", port: int = 8100, config: FakeLLMConfig | None = None) -> None:
    """Serve until interrupted (blocking; for a CLI command). Prints the base URL once listening."""

    async def serve() -> None:
        server = FakeLLM(config)
        await server.start(host, port)
        print(f"fake LLM listening on {server.base_url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        _run_loop(serve())


@dataclasses.dataclass
class CapacityResult:
    """One probe level: N paced streams against a fake pinned to one core."""

    streams: int
    completed: int
    server_cpu: float  # busy fraction of one core while all streams were open
    client_cpu: float
    lateness_p50_ms: float  # token arrival vs its ideal time (first token + k/tps)
    lateness_p99_ms: float


class _ProbeStream(asyncio.Protocol):
    """Bare SSE reader: counts content deltas and how late each one arrived."""

    def __init__(
        self, request: bytes, interval: float, lateness: list[float], started: Callable[[], None]
    ) -> None:
        self.request, self.interval, self.lateness, self.started = (
            request,
            interval,
            lateness,
            started,
        )
        self.first: float | None = None
        self.tokens = 0
        self.done = asyncio.get_running_loop().create_future()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        cast(asyncio.Transport, transport).write(self.request)

    def data_received(self, data: bytes) -> None:
        count = data.count(b'"delta":{"content":')
        if count:
            now = time.monotonic()
            if self.first is None:
                self.first = now
                self.started()
            for index in range(self.tokens, self.tokens + count):
                self.lateness.append(now - self.first - index * self.interval)
            self.tokens += count
        if b"data: [DONE]" in data and not self.done.done():
            self.done.set_result(True)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(False)


def _process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime in USER_HZ ticks


async def _probe_level(
    port: int, pid: int, streams: int, rate: float, tokens: int
) -> CapacityResult:
    loop = asyncio.get_running_loop()
    content = f"capacity probe [[fake:tokens={tokens},tps={rate}]]"
    body = msgspec.json.encode(
        {"model": "fake", "stream": True, "messages": [{"role": "user", "content": content}]}
    )
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    lateness: list[float] = []
    all_started = asyncio.Event()
    started = 0

    def one_started() -> None:
        nonlocal started
        started += 1
        if started == streams:
            all_started.set()

    connect_slots = asyncio.Semaphore(256)

    async def open_stream() -> _ProbeStream:
        async with connect_slots:
            factory = lambda: _ProbeStream(request, 1.0 / rate, lateness, one_started)  # noqa: E731
            return (await loop.create_connection(factory, "127.0.0.1", port))[1]

    began = time.monotonic()
    readers = await asyncio.gather(*(open_stream() for _ in range(streams)))
    try:
        await asyncio.wait_for(all_started.wait(), timeout=10)
        window = max(0.5, min(3.0, tokens / rate - (time.monotonic() - began) - 1.0))
        server0, client0, wall0 = _process_cpu_seconds(pid), time.process_time(), time.monotonic()
        await asyncio.sleep(window)
        wall = time.monotonic() - wall0
        server_cpu = (_process_cpu_seconds(pid) - server0) / wall
        client_cpu = (time.process_time() - client0) / wall
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(r.done for r in readers)), timeout=tokens / rate + 10
        )
    finally:
        for reader in readers:
            if reader.transport is not None:
                reader.transport.close()
    ordered = sorted(lateness) or [0.0]
    return CapacityResult(
        streams=streams,
        completed=sum(outcomes),
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        lateness_p50_ms=1000 * ordered[len(ordered) // 2],
        lateness_p99_ms=1000 * ordered[int(len(ordered) * 0.99)],
    )


async def measure_capacity(
    levels: tuple[int, ...] = (500, 1000, 2000, 4000),
    tokens_per_second: float = 20.0,
    tokens: int = 100,
    time_budget: float = 55.0,
    pin_cores: bool = True,
) -> list[CapacityResult]:
    """Ramp paced streams against a fake in a subprocess pinned to one core; stops at saturation."""
    began = time.monotonic()
    own_cores = os.sched_getaffinity(0)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.fake_llm",
        "serve",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    results: list[CapacityResult] = []
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        port = int(line.rstrip().rsplit(":", 1)[1].split("/")[0])
        if pin_cores and len(own_cores) >= 2:  # server on one core, this client on the others
            server_core = min(own_cores)
            os.sched_setaffinity(process.pid, {server_core})
            os.sched_setaffinity(0, own_cores - {server_core})
        for streams in levels:
            if time.monotonic() - began + tokens / tokens_per_second + 5 > time_budget:
                break
            result = await _probe_level(port, process.pid, streams, tokens_per_second, tokens)
            results.append(result)
            if result.server_cpu > 0.9 or result.completed < streams:
                break
    finally:
        os.sched_setaffinity(0, own_cores)
        process.terminate()
        await process.wait()
    return results


def main(argv: list[str] | None = None) -> None:
    """`python -m server.fake_llm serve|probe`."""
    parser = argparse.ArgumentParser(prog="textbook-chat fake-llm")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the fake until interrupted")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8100)
    serve.add_argument("--tokens", type=int, default=40)
    serve.add_argument("--tps", type=float, default=0.0)
    serve.add_argument("--first-token-delay", type=float, default=0.0)
    serve.add_argument(
        "--fail-status", type=int, default=None, help="answer chat requests with this HTTP error"
    )
    serve.add_argument(
        "--fail-first-n", type=int, default=None, help="only the first N requests fail"
    )
    serve.add_argument("--break-after", type=int, default=None, help="cut streams after N tokens")
    serve.add_argument("--echo", action="store_true", help="answer with the last user message")
    probe = commands.add_parser("probe", help="measure paced streams one core sustains")
    probe.add_argument("--levels", default="500,1000,2000,4000")
    probe.add_argument("--tps", type=float, default=20.0)
    probe.add_argument("--tokens", type=int, default=100)
    args = parser.parse_args(argv)
    if args.command == "serve":
        config = FakeLLMConfig(
            tokens_per_answer=args.tokens,
            tokens_per_second=args.tps,
            first_token_delay=args.first_token_delay,
            fail_status=args.fail_status,
            fail_first_n=args.fail_first_n,
            break_after_tokens=args.break_after,
            echo=args.echo,
        )
        run(args.host, args.port, config)
        return
    levels = tuple(int(n) for n in args.levels.split(","))
    results: list[CapacityResult] = []

    async def measure() -> None:
        results.extend(await measure_capacity(levels, args.tps, args.tokens))

    _run_loop(measure())
    print("streams completed server_cpu client_cpu late_p50_ms late_p99_ms")
    for r in results:
        print(
            f"{r.streams:7d} {r.completed:9d} {r.server_cpu:10.2f} {r.client_cpu:10.2f}"
            f" {r.lateness_p50_ms:11.1f} {r.lateness_p99_ms:11.1f}"
        )


if __name__ == "__main__":
    main()
