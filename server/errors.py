"""One root exception; every failure the client may see carries a wire code and a retry hint."""

from __future__ import annotations

from typing import Any

from protocol.codes import CloseCode, ErrorCode


class ChatError(Exception):
    """Root of every error that maps to an `error` frame."""

    code: ErrorCode = ErrorCode.INTERNAL
    retryable: bool = False
    close_code: CloseCode | None = None

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable


class PeerError(ChatError):
    """The client did something wrong; the socket usually stays open."""


class InvalidMessage(PeerError):
    code = ErrorCode.INVALID_MESSAGE


class Unauthorized(PeerError):
    code = ErrorCode.UNAUTHORIZED
    close_code = CloseCode.UNAUTHENTICATED


class TokenExpired(PeerError):
    code = ErrorCode.TOKEN_EXPIRED
    close_code = CloseCode.UNAUTHENTICATED


class Forbidden(PeerError):
    code = ErrorCode.FORBIDDEN


class NotFound(PeerError):
    code = ErrorCode.NOT_FOUND


class DuplicateId(PeerError):
    code = ErrorCode.DUPLICATE_ID


class TooManyStreams(PeerError):
    code = ErrorCode.TOO_MANY_STREAMS
    retryable = True


class RateLimited(PeerError):
    code = ErrorCode.RATE_LIMITED
    retryable = True

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceError(ChatError):
    """A dependency failed; not the client's fault."""

    retryable = True


class UpstreamUnavailable(ServiceError):
    code = ErrorCode.UPSTREAM_UNAVAILABLE


class RetrievalUnavailable(ServiceError):
    code = ErrorCode.RETRIEVAL_UNAVAILABLE


class DatabaseUnavailable(ServiceError):
    code = ErrorCode.DATABASE_UNAVAILABLE


class InternalError(ChatError):
    """Our own bug: the message is generic, the details go to the log."""

    code = ErrorCode.INTERNAL
    retryable = False


class RemoteError(ChatError):
    """An error another server process reported, carried on with its wire code."""

    def __init__(self, code: ErrorCode, message: str, *, retryable: bool) -> None:
        super().__init__(message, retryable=retryable)
        self.code = code


class ConfigError(Exception):
    """A setting is wrong; raised at start, printed as one line naming the variable."""


class EmbeddingMismatch(ConfigError):
    """The vector collection was built by a different embedding model."""


def error_fields(exc: ChatError) -> dict[str, Any]:
    """The fields of the `error` frame for this exception."""
    fields: dict[str, Any] = {"code": exc.code, "message": exc.message, "retryable": exc.retryable}
    if isinstance(exc, RateLimited):
        fields["retry_after"] = exc.retry_after
    return fields


# The one table from wire code to HTTP status, for the HTTP side of the API.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_MESSAGE: 422,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.DUPLICATE_ID: 409,
    ErrorCode.TOO_MANY_STREAMS: 429,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UPSTREAM_UNAVAILABLE: 503,
    ErrorCode.RETRIEVAL_UNAVAILABLE: 503,
    ErrorCode.DATABASE_UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}
