"""One lifecycle for every stream (answers and chapters): however its work ends — finished,
cancelled, interrupted, failed, or our own bug — it is settled (saved) and then sends exactly one
terminal frame, and the outcome is counted once."""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import TYPE_CHECKING, Any, Protocol

from server.errors import ChatError, InternalError
from server.metrics import STREAMS

if TYPE_CHECKING:
    from server.chat.stream import Stream

log = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    """How a stream's work ended (the `status` a message is saved with)."""

    COMPLETE = "complete"
    CANCELLED = "cancelled"  # the reader asked
    INTERRUPTED = "interrupted"  # nobody came back for it, or the server stopped
    FAILED = "failed"


class StreamWork(Protocol):
    """What a stream does: an answer or a chapter."""

    async def produce(self, stream: Stream) -> None:
        """Emit the stream's frames, up to but not including its terminal frame."""

    async def settle(
        self, stream: Stream, outcome: Outcome, error: ChatError | None
    ) -> ChatError | None:
        """Save how the work ended; returns the error to end the stream with (None: `done`)."""

    def done_fields(self, stream: Stream, outcome: Outcome) -> dict[str, Any]:
        """The fields of the `done` frame (`finish_reason`, `timings`, ...)."""


async def run(work: StreamWork, stream: Stream) -> None:
    """Run `work` on `stream` to its one terminal frame."""
    error: ChatError | None = None
    try:
        if stream.cancel_requested:  # before the task first ran
            raise asyncio.CancelledError
        await work.produce(stream)
        outcome = Outcome.COMPLETE
    except asyncio.CancelledError:
        _uncancel()
        outcome = Outcome.INTERRUPTED if stream.interrupted else Outcome.CANCELLED
    except ChatError as exc:
        outcome, error = Outcome.FAILED, exc
    except Exception:
        log.exception("%s stream %s failed", stream.kind, stream.id)
        outcome, error = Outcome.FAILED, InternalError()
    try:
        error = await _settle(work, stream, outcome, error)
    except Exception:  # the terminal frame must go out whatever saving did
        log.exception("%s stream %s could not be settled", stream.kind, stream.id)
        error = error or InternalError()
    STREAMS.labels(stream.kind, outcome if error is None else Outcome.FAILED).inc()
    if error is not None:
        stream.fail(error)
    else:
        stream.done(**work.done_fields(stream, outcome))


async def _settle(
    work: StreamWork, stream: Stream, outcome: Outcome, error: ChatError | None
) -> ChatError | None:
    """Settle to the end even if the stream is cancelled again meanwhile (a reader's cancel
    racing a shutdown): a save cut in half would leave the message `streaming`."""
    settling = asyncio.ensure_future(work.settle(stream, outcome, error))
    while True:
        try:
            return await asyncio.shield(settling)
        except asyncio.CancelledError:
            _uncancel()
            if settling.cancelled():
                return error or InternalError()


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
