"""One root exception; every failure the client may see carries a wire code and a retry hint.

What a code means (retryable by default, its HTTP status, the close that follows it) is one
table in protocol/codes.py; the `error` frame is made in one place, protocol.frames.error_frame.
"""

from __future__ import annotations

from protocol.codes import ERRORS, ErrorCode
from protocol.frames import Error, error_frame


class ChatError(Exception):
    """Root of every error that maps to an `error` frame."""

    code: ErrorCode = ErrorCode.INTERNAL
    retry_after: float | None = None

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = ERRORS[self.code].retryable if retryable is None else retryable

    @property
    def http_status(self) -> int:
        """The status of an HTTP response carrying this error."""
        return ERRORS[self.code].http_status

    def frame(self, id: str | None = None, seq: int | None = None) -> Error:
        """The `error` frame for this error (of a stream, when `id` is given)."""
        return error_frame(
            self.code,
            self.message,
            retryable=self.retryable,
            id=id,
            seq=seq,
            retry_after=self.retry_after,
        )


class PeerError(ChatError):
    """The client did something wrong; the socket usually stays open."""


class InvalidMessage(PeerError):
    code = ErrorCode.INVALID_MESSAGE


class Unauthorized(PeerError):
    code = ErrorCode.UNAUTHORIZED


class TokenExpired(PeerError):
    code = ErrorCode.TOKEN_EXPIRED


class Forbidden(PeerError):
    code = ErrorCode.FORBIDDEN


class NotFound(PeerError):
    code = ErrorCode.NOT_FOUND


class DuplicateId(PeerError):
    code = ErrorCode.DUPLICATE_ID


class TooManyStreams(PeerError):
    code = ErrorCode.TOO_MANY_STREAMS


class RateLimited(PeerError):
    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceError(ChatError):
    """A dependency failed; not the client's fault."""


class UpstreamUnavailable(ServiceError):
    code = ErrorCode.UPSTREAM_UNAVAILABLE


class RetrievalUnavailable(ServiceError):
    code = ErrorCode.RETRIEVAL_UNAVAILABLE


class DatabaseUnavailable(ServiceError):
    code = ErrorCode.DATABASE_UNAVAILABLE


class InternalError(ChatError):
    """Our own bug: the message is generic, the details go to the log."""

    code = ErrorCode.INTERNAL

    def __init__(self, message: str = "internal error") -> None:
        super().__init__(message)


class RemoteError(ChatError):
    """An error another server process reported, carried on with its wire code."""

    def __init__(self, code: ErrorCode, message: str, *, retryable: bool) -> None:
        self.code = code
        super().__init__(message, retryable=retryable)


class ConfigError(Exception):
    """A setting is wrong; raised at start, printed as one line naming the variable."""


class EmbeddingMismatch(ConfigError):
    """The vector collection was built by a different embedding model."""
