"""Bodies of the HTTP API beside the socket, as msgspec Structs: the handlers encode through them
and the OpenAPI document is generated from them, so what is documented is what is sent.

The reader's profile is `protocol.profile.Profile`; a saved message's selection and timings are
the frames' own `Selection` and `Timings`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from protocol.codes import ErrorCode
from protocol.frames import Selection, Timings

Timestamp = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
JsonDocument = Annotated[
    dict[str, Any],
    Meta(title="JSON document", description="A JSON Schema, OpenAPI or AsyncAPI document."),
]
MessageStatus = Literal["streaming", "complete", "cancelled", "failed", "interrupted"]


class ErrorDetail(msgspec.Struct, frozen=True):
    """What went wrong: the code and retry hint of an `error` frame, and a message for people."""

    code: ErrorCode
    message: str
    retryable: bool


class ErrorBody(msgspec.Struct, frozen=True):
    """The body of every HTTP error the API answers with."""

    error: ErrorDetail


class Health(msgspec.Struct, frozen=True):
    """The process is alive."""

    status: Literal["ok"]


class Readiness(msgspec.Struct, frozen=True):
    """Whether every dependency is reachable: each check is "ok…" or what is wrong."""

    status: Literal["ok", "unavailable", "draining"]
    checks: dict[str, str]


class Conversation(msgspec.Struct, frozen=True):
    """One of the reader's conversations."""

    id: uuid.UUID
    title: str
    created_at: Timestamp
    updated_at: Timestamp


class Conversations(msgspec.Struct, frozen=True):
    """The reader's conversations, most recently updated first (at most 50)."""

    conversations: list[Conversation]


class SavedSource(msgspec.Struct, frozen=True):
    """A passage an answer was grounded in, as saved with the message (without its text)."""

    chapter: str
    title: str
    score: float
    section: str | None = None
    url: str | None = None


class Message(msgspec.Struct, frozen=True):
    """One question and its answer, as saved: the partial text when cut short."""

    id: uuid.UUID
    stream_id: str
    question: str
    selection: Selection | None
    chapter_id: str | None
    answer: str
    sources: list[SavedSource]
    status: MessageStatus
    error_code: ErrorCode | None
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str | None
    timings: Timings | None
    created_at: Timestamp
    finished_at: Timestamp | None


class Messages(msgspec.Struct, frozen=True):
    """The messages of one conversation, oldest first."""

    messages: list[Message]


def error_body(code: ErrorCode, message: str, retryable: bool) -> ErrorBody:
    """The body of an HTTP error."""
    return ErrorBody(ErrorDetail(code=code, message=message, retryable=retryable))
