"""Per-user rate limits and quotas, counted in Postgres so they hold across connections and processes."""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from server.errors import RateLimited
from server.settings import Settings
from server.store import Store


class StreamAdmission(Protocol):
    """Counts a user's live streams on other processes (Cluster)."""

    async def admit_stream(self, user_id: str) -> None: ...


class RateLimiter:
    """Requests per minute and completion tokens per day, per user; and live streams across processes."""

    def __init__(
        self, store: Store, settings: Settings, admission: StreamAdmission | None = None
    ) -> None:
        self._store = store
        self._admission = admission
        self._per_minute = settings.requests_per_minute
        self._per_day = settings.completion_tokens_per_day

    async def admit(self, user_id: str) -> None:
        """Count one request; raise RateLimited (or TooManyStreams) when over a limit."""
        if self._admission is not None:
            await self._admission.admit_stream(user_id)
        if not self._per_minute and not self._per_day:
            return
        requests, tokens, minute_left = await self._store.count_request(user_id)
        if self._per_minute and requests > self._per_minute:
            raise RateLimited(
                f"more than {self._per_minute} requests a minute; retry in {minute_left:.0f} s",
                retry_after=round(minute_left, 1),
            )
        if self._per_day and tokens >= self._per_day:
            left = _seconds_to_utc_midnight()
            raise RateLimited(
                f"daily quota of {self._per_day} completion tokens used; it resets at 00:00 UTC",
                retry_after=round(left),
            )

    async def record(self, user_id: str, completion_tokens: int | None) -> None:
        """Add a finished stream's completion tokens to today's usage."""
        if completion_tokens:
            await self._store.add_usage(user_id, completion_tokens)


def _seconds_to_utc_midnight() -> float:
    now = dt.datetime.now(dt.UTC)
    tomorrow = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (tomorrow - now).total_seconds()
