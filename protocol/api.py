"""Bodies of the HTTP API beside the socket, as msgspec Structs: the handlers encode through them
and the OpenAPI document is generated from them, so what is documented is what is sent.

The reader's profile is `protocol.profile.Profile`; a saved message's selection and timings are
the frames' own `Selection` and `Timings`. Below the messages: a reader's ratings, conversations,
export and erasure (server/web/readers.py), and the authors' insights report
(server/web/insights.py, `textbook-chat insights`).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from protocol.codes import ErrorCode
from protocol.frames import Selection, Timings
from protocol.profile import Profile

Timestamp = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
JsonDocument = Annotated[
    dict[str, Any],
    Meta(title="JSON document", description="A JSON Schema, OpenAPI or AsyncAPI document."),
]
MessageStatus = Literal["streaming", "complete", "cancelled", "failed", "interrupted"]
RatingValue = Literal["up", "down"]
Comment = Annotated[str, Meta(max_length=2000)]
Title = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"\S")]


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


class Rating(msgspec.Struct, frozen=True):
    """A reader's rating of an answer, as messages and exports show it."""

    value: RatingValue
    comment: str | None = None


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
    rating: Rating | None = None  # the reader's, if they rated it


class Messages(msgspec.Struct, frozen=True):
    """The messages of one conversation, oldest first."""

    messages: list[Message]


# ---- a reader's own data ----------------------------------------------------------------------


class RatingRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """PUT /v1/messages/{id}/rating: rate one of your finished answers (again, to change it)."""

    value: RatingValue
    comment: Comment | None = None


class RatingSaved(msgspec.Struct, frozen=True):
    """The rating as saved."""

    message_id: uuid.UUID
    value: RatingValue
    comment: str | None
    updated_at: Timestamp


class ConversationRename(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """PATCH /v1/conversations/{id}: a new title."""

    title: Title


class ConversationsDeleted(msgspec.Struct, frozen=True):
    """DELETE /v1/conversations[/{id}]: how many conversations went, and how many of their
    answers were still streaming (cancelled first)."""

    deleted: int
    cancelled_streams: int


class ReaderErased(msgspec.Struct, frozen=True):
    """DELETE /v1/me: rows deleted per table (all zero when there was nothing left), and how many
    streams were cancelled first."""

    deleted: dict[str, int]
    cancelled_streams: int


class ExportedMessage(msgspec.Struct, frozen=True):
    """One question and its answer as exported."""

    id: uuid.UUID
    question: str
    selection: Selection | None
    chapter_id: str | None
    answer: str
    sources: list[SavedSource]
    status: MessageStatus
    model: str | None
    created_at: Timestamp
    finished_at: Timestamp | None
    rating: Rating | None


class ExportedConversation(msgspec.Struct, frozen=True):
    """One conversation with every message, oldest first."""

    id: uuid.UUID
    title: str
    created_at: Timestamp
    updated_at: Timestamp
    messages: list[ExportedMessage]


class ReaderExport(msgspec.Struct, frozen=True):
    """GET /v1/me/export: everything a reader wrote and was answered, in one document."""

    format: Literal["textbook-chat-export/1"]
    exported_at: Timestamp
    user_id: str
    profile: Profile | None
    conversations: list[ExportedConversation]


# ---- the authors' insights --------------------------------------------------------------------


class InsightsSettings(msgspec.Struct, frozen=True):
    """What the report was computed with."""

    min_readers: int  # k: a group's questions are shown only when this many readers asked
    unanswerable_similarity: float
    group_similarity: float


class InsightsTotals(msgspec.Struct, frozen=True):
    """Counts over the whole period (counts are never withheld, only text is)."""

    questions: int
    readers: int
    unanswerable: int  # best similarity below the threshold
    not_covered: int  # the answer says the book does not cover it
    rated_up: int
    rated_down: int
    highlights: int
    groups: int
    hidden_groups: int  # asked by fewer than min_readers readers: counted, not shown
    hidden_questions: int


class SourceRef(msgspec.Struct, frozen=True, omit_defaults=True):
    """A place in the book."""

    chapter: str
    title: str
    section: str | None = None
    url: str | None = None


class TopicGroup(msgspec.Struct, frozen=True):
    """Similar questions, with how the book did on them."""

    id: int
    label: str  # the group's most typical question
    questions: int
    readers: int
    unanswerable: int
    not_covered: int
    rated_up: int
    rated_down: int
    failing: int  # questions unanswerable, not covered or rated down (each counted once)
    gap_readers: int  # readers who asked one of those
    mean_similarity: float | None
    nearest: SourceRef | None  # where the book came closest; None when nothing came close
    examples: list[str]


class SectionCount(msgspec.Struct, frozen=True):
    """Questions answered from one section."""

    section: str | None
    questions: int


class ChapterInsight(msgspec.Struct, frozen=True):
    """Questions the book could answer whose best source is in this chapter, with their
    ratings, and the passages of the chapter readers highlighted to ask about."""

    chapter: str
    title: str
    url: str | None
    questions: int
    readers: int
    rated_up: int
    rated_down: int
    highlights: int
    sections: list[SectionCount]


class RatedDown(msgspec.Struct, frozen=True):
    """An answer its reader rated down, with what they said."""

    group: int
    question: str
    answer: str
    comment: str | None
    best_similarity: float | None
    sources: list[SourceRef]


class Highlight(msgspec.Struct, frozen=True):
    """A passage readers highlighted to ask about."""

    chapter: str | None
    text: str
    highlights: int
    readers: int


class SimilarityBin(msgspec.Struct, frozen=True):
    """Questions whose best similarity fell in [low, high)."""

    low: float
    high: float
    questions: int


class InsightsReport(msgspec.Struct, frozen=True):
    """GET /v1/insights, `textbook-chat insights`: where the book falls short, for a period.

    Never says who asked; a group's questions, comments and answers appear only when at least
    `settings.min_readers` distinct readers asked in it."""

    format: Literal["textbook-chat-insights/1"]
    generated_at: Timestamp
    since: Timestamp
    until: Timestamp
    settings: InsightsSettings
    totals: InsightsTotals
    gaps: list[TopicGroup]  # groups where readers hit a gap, worst first
    topics: list[TopicGroup]  # every shown group, most asked first
    chapters: list[ChapterInsight]
    rated_down: list[RatedDown]
    highlights: list[Highlight]
    similarity: list[SimilarityBin]


def error_body(code: ErrorCode, message: str, retryable: bool) -> ErrorBody:
    """The body of an HTTP error."""
    return ErrorBody(ErrorDetail(code=code, message=message, retryable=retryable))
