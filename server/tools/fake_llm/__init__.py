"""OpenAI-compatible fake model server: real HTTP on loopback, cheap enough for 1,000s of streams.

Hand-rolled on asyncio.Protocol + httptools rather than a framework: a paced stream costs one timer
callback and one socket write per token, and a client hang-up is seen at once via connection_lost.
"""

from __future__ import annotations

from server.tools.fake_llm.cli import main
from server.tools.fake_llm.config import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    FakeLLMConfig,
    ReceivedRequest,
    StreamRecord,
    embed_text,
    expected_reply,
    reply_tokens,
)
from server.tools.fake_llm.probe import CapacityResult, measure_capacity
from server.tools.fake_llm.server import FakeLLM, run

__all__ = [
    "DEFAULT_EMBEDDING_DIMENSIONS",
    "CapacityResult",
    "FakeLLM",
    "FakeLLMConfig",
    "ReceivedRequest",
    "StreamRecord",
    "embed_text",
    "expected_reply",
    "main",
    "measure_capacity",
    "reply_tokens",
    "run",
]
