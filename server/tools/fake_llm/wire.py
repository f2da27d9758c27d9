"""Bytes the fake puts on the wire: HTTP chunks, OpenAI error bodies, SSE chunk frames, embeddings."""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from server.tools.fake_llm.config import embed_text

_EMBEDDINGS_PATHS = ("/v1/embeddings", "/embeddings")
_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
_MODELS_PATHS = ("/v1/models", "/models")


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
