"""What the CLI and the HTTP endpoint share: the period, who is an author, and the report."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from protocol.api import InsightsReport
from server.errors import InvalidMessage
from server.insights.report import ReportOptions, build_report
from server.retrieval.embeddings import Embedder
from server.settings import Settings
from server.store import Store

DEFAULT_DAYS = 30


def period(
    since: str | None, until: str | None, days: int | None = None, *, now: dt.datetime | None = None
) -> tuple[dt.datetime, dt.datetime]:
    """[since, until) from ISO dates or times (UTC unless they say otherwise); without `since`,
    the `days` (30) before `until`; without `until`, now."""
    end = _instant(until, "until") if until else (now or dt.datetime.now(dt.UTC))
    if since:
        start = _instant(since, "since")
    else:
        span = DEFAULT_DAYS if days is None else days
        if not 1 <= span <= 3660:
            raise InvalidMessage("days: expected 1 to 3660")
        start = end - dt.timedelta(days=span)
    if start >= end:
        raise InvalidMessage("since must be before until")
    return start, end


def _instant(value: str, name: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidMessage(f"{name}: expected an ISO date or time like 2026-01-31") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def is_author(claims: Mapping[str, Any], settings: Settings) -> bool:
    """The token's ADMIN_CLAIM holds ADMIN_ROLE: as the value, in a list, or in a comma-separated
    string (Better-Auth's admin plugin keeps roles as "admin,user")."""
    value = claims.get(settings.admin_claim)
    if isinstance(value, str):
        roles = [r.strip() for r in value.split(",")]
    elif isinstance(value, list):
        roles = [r for r in value if isinstance(r, str)]
    else:
        return False
    return settings.admin_role in roles


def options_from(settings: Settings, min_readers: int | None = None) -> ReportOptions:
    """The report's options from the settings (INSIGHTS_MIN_READERS, UNANSWERABLE_SIMILARITY)."""
    return ReportOptions(
        min_readers=min_readers if min_readers is not None else settings.insights_min_readers,
        unanswerable_similarity=settings.unanswerable_similarity,
    )


async def report_for(
    store: Store,
    embedder: Embedder,
    since: dt.datetime,
    until: dt.datetime,
    options: ReportOptions,
) -> InsightsReport:
    """The report over what the database holds for [since, until)."""
    rows = await store.questions_between(since, until)
    outline = await store.book_outline()
    return await build_report(rows, outline, embedder, since=since, until=until, options=options)
