"""Frames of protocol v1: one frozen msgspec Struct per frame type, tagged by `type`."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from protocol import languages
from protocol.codes import ERRORS, ErrorCode
from protocol.limits import MAX_FRAME_BYTES, MAX_QUESTION_CHARS, MAX_SELECTION_CHARS, STREAM_ID_MAX

PROTOCOL_VERSION = 1

# No string a client sends may hold NUL: Postgres cannot store it. (Lone surrogates never get
# this far: msgspec's JSON parser refuses them.)
NO_NUL = r"^[^\x00]*$"
StreamId = Annotated[str, Meta(min_length=1, max_length=STREAM_ID_MAX, pattern=NO_NUL)]
Token = Annotated[str, Meta(min_length=1, max_length=16_384, pattern=NO_NUL)]
Question = Annotated[str, Meta(min_length=1, max_length=MAX_QUESTION_CHARS, pattern=NO_NUL)]
SelectionText = Annotated[str, Meta(min_length=1, max_length=MAX_SELECTION_CHARS, pattern=NO_NUL)]
ShortText = Annotated[str, Meta(max_length=2048, pattern=NO_NUL)]
ChapterRef = Annotated[str, Meta(min_length=1, max_length=256, pattern=NO_NUL)]
LanguageCode = Annotated[str, Meta(pattern=languages.PATTERN, max_length=35)]
Nonce = Annotated[str, Meta(max_length=128, pattern=NO_NUL)]
Seq = Annotated[int, Meta(ge=0)]
ConversationId = Annotated[str, Meta(min_length=1, max_length=64, pattern=NO_NUL)]

Mode = Literal["personalize", "translate"]
FinishReason = Literal["stop", "length", "cancelled"]
Direction = Literal["ltr", "rtl"]


class _Frame(msgspec.Struct, frozen=True, tag_field="type", omit_defaults=True):
    """Base of every frame."""


# ---- client → server ---------------------------------------------------------------------


class Selection(msgspec.Struct, frozen=True, omit_defaults=True):
    """Text the reader highlighted, with where it came from."""

    text: SelectionText
    page_url: ShortText | None = None
    chapter: ChapterRef | None = None

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ValueError("selection.text must not be blank")


class Auth(_Frame, frozen=True, tag="auth"):
    """Authenticate the connection, or refresh its token."""

    token: Token


class Ask(_Frame, frozen=True, tag="ask"):
    """Ask a question; the answer streams back."""

    id: StreamId
    question: Question
    conversation_id: ConversationId | None = None
    selection: Selection | None = None
    chapter: ChapterRef | None = None

    def __post_init__(self) -> None:
        if not self.question.strip():
            raise ValueError("question must not be blank")


class Chapter(_Frame, frozen=True, tag="chapter"):
    """Stream a chapter rewritten for this reader, or translated."""

    id: StreamId
    chapter: ChapterRef
    mode: Mode
    language: LanguageCode | None = None

    def __post_init__(self) -> None:
        if self.language is not None and not languages.is_known(self.language):
            raise ValueError(f"language {self.language!r} is not one we translate into")


class Cancel(_Frame, frozen=True, tag="cancel"):
    """Stop a stream."""

    id: StreamId


class Resume(_Frame, frozen=True, tag="resume"):
    """Re-attach to a stream begun on an earlier connection; replay after `after_seq`."""

    id: StreamId
    after_seq: Seq


class Ping(_Frame, frozen=True, tag="ping"):
    """Application-level liveness probe."""

    nonce: Nonce | None = None


ClientFrame = Auth | Ask | Chapter | Cancel | Resume | Ping


# ---- server → client ---------------------------------------------------------------------


class Limits(msgspec.Struct, frozen=True):
    """Limits the server enforces on this connection."""

    max_streams: int
    max_question_chars: int = MAX_QUESTION_CHARS
    max_selection_chars: int = MAX_SELECTION_CHARS
    max_frame_bytes: int = MAX_FRAME_BYTES


class Ready(_Frame, frozen=True, tag="ready", omit_defaults=False):
    """Authentication succeeded (or the token was refreshed)."""

    session_id: str
    user_id: str
    expires_at: int
    limits: Limits
    protocol: int = PROTOCOL_VERSION


class Start(_Frame, frozen=True, tag="start"):
    """A stream began."""

    id: str
    seq: int
    message_id: str
    conversation_id: str | None = None
    direction: Direction | None = None


class Source(msgspec.Struct, frozen=True, omit_defaults=True):
    """A passage of the book given to the model, best first."""

    chapter: str
    title: str
    score: float
    text: str
    section: str | None = None
    url: str | None = None


class Sources(_Frame, frozen=True, tag="sources"):
    """The passages an answer is grounded in."""

    id: str
    seq: int
    sources: list[Source]


class Delta(_Frame, frozen=True, tag="delta"):
    """The next piece of generated text."""

    id: str
    seq: int
    text: str


class Usage(msgspec.Struct, frozen=True):
    """Token counts reported by the model."""

    prompt_tokens: int
    completion_tokens: int


class Timings(msgspec.Struct, frozen=True, omit_defaults=True):
    """Where the stream's time went, in milliseconds."""

    first_token_ms: float
    total_ms: float
    retrieval_ms: float | None = None
    embed_ms: float | None = None  # the query embedding, part of retrieval
    search_ms: float | None = None  # the vector search, part of retrieval
    db_ms: float | None = None  # Postgres work before the answer starts
    model_first_chunk_ms: float | None = None  # model request sent to its first chunk
    server_added_ms: float | None = None  # first model chunk in to first delta sent


class Done(_Frame, frozen=True, tag="done"):
    """The stream ended normally or was cancelled."""

    id: str
    seq: int
    finish_reason: FinishReason
    timings: Timings
    usage: Usage | None = None
    cached: bool | None = None


class Error(_Frame, frozen=True, tag="error"):
    """A stream failed (with `id`) or a connection-level problem (without)."""

    code: ErrorCode
    message: str
    retryable: bool
    id: str | None = None
    seq: int | None = None
    retry_after: float | None = None  # seconds, for rate_limited


class Pong(_Frame, frozen=True, tag="pong"):
    """Answer to `ping`."""

    nonce: str | None = None


ServerFrame = Ready | Start | Sources | Delta | Done | Error | Pong
StreamFrame = Start | Sources | Delta | Done | Error
TERMINAL_TYPES = frozenset({"done", "error"})  # exactly one of these ends every stream


def error_frame(
    code: ErrorCode,
    message: str,
    *,
    retryable: bool | None = None,
    id: str | None = None,
    seq: int | None = None,
    retry_after: float | None = None,
) -> Error:
    """The one way an `error` frame is made: `retryable` defaults to what the code means."""
    if retryable is None:
        retryable = ERRORS[code].retryable
    return Error(
        code=code, message=message, retryable=retryable, id=id, seq=seq, retry_after=retry_after
    )
