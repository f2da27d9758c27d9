"""GET /v1/insights: the authors' report, for tokens whose ADMIN_CLAIM holds ADMIN_ROLE.

`ENDPOINTS` joins the API's table in server/web/http.py."""

from __future__ import annotations

import asyncio

from starlette.responses import HTMLResponse, Response

from protocol.api import InsightsReport
from protocol.codes import ErrorCode
from server.errors import Forbidden, InvalidMessage
from server.insights.html import render_html
from server.insights.service import is_author, options_from, period, report_for
from server.web.endpoint import Call, Endpoint

# A report embeds every question of the period: one at a time per process is plenty for authors
# and keeps a burst of requests from starving the readers' answers of the embedding model.
_one_at_a_time = asyncio.Lock()
# The HTML is self-contained: nothing may load, inline styles only.
_HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "Cache-Control": "no-store",
}


async def insights(call: Call) -> InsightsReport | Response:
    """Where the book falls short, for a period: the authors' report.

    `?days=30` (the default) or `?since=&until=` (ISO dates or times); `?format=html` for a
    self-contained page with charts. Needs a token whose ADMIN_CLAIM (`role`) holds ADMIN_ROLE
    (`admin`); a group's questions appear only when INSIGHTS_MIN_READERS readers asked in it.
    """
    services = call.services
    settings = services.settings
    if not is_author(call.reader.claims, settings):
        raise Forbidden(
            f"insights need a token whose {settings.admin_claim!r} claim is {settings.admin_role!r}"
        )
    q = call.request.query_params
    kind = q.get("format", "json")
    if kind not in ("json", "html"):
        raise InvalidMessage("format: expected json or html")
    days = q.get("days")
    if days is not None and not days.isdigit():
        raise InvalidMessage("days: expected a whole number")
    since, until = period(q.get("since"), q.get("until"), int(days) if days else None)
    async with _one_at_a_time:
        report = await report_for(
            services.store, services.embedder, since, until, options_from(settings)
        )
    if kind == "html":
        return HTMLResponse(render_html(report), headers=_HTML_HEADERS)
    return report


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        "/v1/insights",
        insights,
        {200: InsightsReport},
        auth=True,
        errors=(ErrorCode.FORBIDDEN, ErrorCode.INVALID_MESSAGE, ErrorCode.DATABASE_UNAVAILABLE),
    ),
)
