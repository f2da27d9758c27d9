"""What the fake model answers: its config, `[[fake:...]]` markers, reply tokens and embeddings."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from collections.abc import Callable
from typing import Any, Literal

import msgspec
import numpy as np

from server.errors import ConfigError

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
