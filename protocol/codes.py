"""Error codes and close codes of protocol v1, and the one table of what each error code means."""

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


ERRORS: dict[ErrorCode, ErrorRule] = {
    ErrorCode.INVALID_MESSAGE: ErrorRule(False, 422),
    ErrorCode.UNAUTHORIZED: ErrorRule(False, 401, CloseCode.UNAUTHENTICATED),
    ErrorCode.TOKEN_EXPIRED: ErrorRule(True, 401),  # closes 4401 after a grace period
    ErrorCode.FORBIDDEN: ErrorRule(False, 403),
    ErrorCode.NOT_FOUND: ErrorRule(False, 404),
    ErrorCode.DUPLICATE_ID: ErrorRule(False, 409),
    ErrorCode.TOO_MANY_STREAMS: ErrorRule(True, 429),
    ErrorCode.RATE_LIMITED: ErrorRule(True, 429),
    ErrorCode.UPSTREAM_UNAVAILABLE: ErrorRule(True, 503),
    ErrorCode.RETRIEVAL_UNAVAILABLE: ErrorRule(True, 503),
    ErrorCode.DATABASE_UNAVAILABLE: ErrorRule(True, 503),
    ErrorCode.INTERNAL: ErrorRule(False, 500),
}
