"""Error codes and close codes of protocol v1, and the tables of what each one means."""

from __future__ import annotations

import dataclasses
import enum


class ErrorCode(enum.StrEnum):
    """The `code` of an `error` frame."""

    INVALID_MESSAGE = "invalid_message"
    UNAUTHORIZED = "unauthorized"
    TOKEN_EXPIRED = "token_expired"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    DUPLICATE_ID = "duplicate_id"
    TOO_MANY_STREAMS = "too_many_streams"
    RATE_LIMITED = "rate_limited"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    RETRIEVAL_UNAVAILABLE = "retrieval_unavailable"
    DATABASE_UNAVAILABLE = "database_unavailable"
    INTERNAL = "internal"


class CloseCode(enum.IntEnum):
    """WebSocket close codes of protocol v1."""

    NORMAL = 1000
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    UNAUTHENTICATED = 4401
    AUTH_TIMEOUT = 4408
    TOO_MANY_CONNECTIONS = 4429


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorRule:
    """What an error code means: retry hint, the HTTP status that carries it, and the close code
    that follows it on a socket (None: the socket stays open)."""

    retryable: bool
    http_status: int
    close_code: CloseCode | None = None
    meaning: str = dataclasses.field(kw_only=True)  # for people: the API documents quote it


ERRORS: dict[ErrorCode, ErrorRule] = {
    ErrorCode.INVALID_MESSAGE: ErrorRule(
        False, 422, meaning="a malformed frame or body; the message names the field"
    ),
    ErrorCode.UNAUTHORIZED: ErrorRule(
        False, 401, CloseCode.UNAUTHENTICATED, meaning="no token, or a bad one"
    ),
    ErrorCode.TOKEN_EXPIRED: ErrorRule(  # closes 4401 after a grace period
        True,
        401,
        meaning="the token expired: use a fresh one (a socket has a grace period to send `auth`)",
    ),
    ErrorCode.FORBIDDEN: ErrorRule(False, 403, meaning="not allowed for this reader"),
    ErrorCode.NOT_FOUND: ErrorRule(
        False, 404, meaning="no such stream, conversation, chapter or profile (or another's)"
    ),
    ErrorCode.DUPLICATE_ID: ErrorRule(False, 409, meaning="a live stream already has this id"),
    ErrorCode.TOO_MANY_STREAMS: ErrorRule(
        True, 429, meaning="too many live streams on this connection or for this reader"
    ),
    ErrorCode.RATE_LIMITED: ErrorRule(
        True, 429, meaning="over the reader's request or token budget: wait `retry_after` s"
    ),
    ErrorCode.UPSTREAM_UNAVAILABLE: ErrorRule(
        True, 503, meaning="the model is unreachable, not configured, or the server is draining"
    ),
    ErrorCode.RETRIEVAL_UNAVAILABLE: ErrorRule(
        True, 503, meaning="the vector store is unreachable"
    ),
    ErrorCode.DATABASE_UNAVAILABLE: ErrorRule(True, 503, meaning="Postgres is unreachable"),
    ErrorCode.INTERNAL: ErrorRule(False, 500, meaning="a bug on our side; the details are logged"),
}

CLOSES: dict[CloseCode, str] = {
    CloseCode.NORMAL: "normal: the client closed, or the connection was idle",
    CloseCode.POLICY_VIOLATION: "policy violation: repeated invalid frames",
    CloseCode.MESSAGE_TOO_BIG: "a frame over the size limit",
    CloseCode.SERVICE_RESTART: "the server is restarting: reconnect and `resume`",
    CloseCode.TRY_AGAIN_LATER: "try again later: overloaded, or the client reads too slowly",
    CloseCode.UNAUTHENTICATED: "not authenticated: the token is missing, invalid or expired",
    CloseCode.AUTH_TIMEOUT: "no `auth` frame in time",
    CloseCode.TOO_MANY_CONNECTIONS: "too many connections for this reader",
}
"""What each close code means, for people (the API documents quote it)."""
