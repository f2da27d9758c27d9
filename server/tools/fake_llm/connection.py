"""One client connection to the fake: HTTP/1.1 parsing, routing, paced SSE streams."""

from __future__ import annotations

import asyncio
import dataclasses
import http
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import httptools
import msgspec

from server.errors import ConfigError
from server.tools.fake_llm.config import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    FakeLLMConfig,
    ReceivedRequest,
    StreamRecord,
    _last_user_text,
    _parse_marker,
    _word_count,
    reply_tokens,
)
from server.tools.fake_llm.wire import (
    _CHAT_PATHS,
    _EMBEDDINGS_PATHS,
    _MODELS_PATHS,
    _ChunkFrames,
    _embeddings_answer,
    _error_body,
    _http_chunk,
)

if TYPE_CHECKING:
    from server.tools.fake_llm.server import FakeLLM

_log = logging.getLogger(__name__)


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
