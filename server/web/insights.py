"""GET /v1/insights: the authors' report, for tokens whose ADMIN_CLAIM holds ADMIN_ROLE."""

from __future__ import annotations

import asyncio

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from server.errors import ChatError, Forbidden, InvalidMessage
from server.insights.html import render_html
from server.insights.service import is_author, options_from, period, report_for
from server.web.http import _bearer, error_response, services_of

# A report embeds every question of the period: one at a time per process is plenty for authors
# and keeps a burst of requests from starving the readers' answers of the embedding model.
_one_at_a_time = asyncio.Lock()
# The HTML is self-contained: nothing may load, inline styles only.
_HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "Cache-Control": "no-store",
}


async def insights(request: Request) -> Response:
    """Where the book falls short: `?since=&until=` (ISO dates; default the last `days`, 30),
    `?format=json` (default) or `html`."""
    try:
        identity = await _bearer(request)
        services = services_of(request)
        settings = services.settings
        if not is_author(identity.claims, settings):
            raise Forbidden(
                f"insights need a token whose {settings.admin_claim!r} claim is {settings.admin_role!r}"
            )
        q = request.query_params
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
    except ChatError as exc:
        return error_response(exc)
    if kind == "html":
        return HTMLResponse(render_html(report), headers=_HTML_HEADERS)
    return Response(
        msgspec.json.encode(report),
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


ROUTES = [Route("/v1/insights", insights, methods=["GET"])]
