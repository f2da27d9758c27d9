"""`textbook-chat insights`: the report for a period, from the database, without a server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

import msgspec

from protocol.api import InsightsReport
from server.errors import ChatError, ConfigError
from server.insights.html import render_html
from server.insights.service import options_from, period, report_for
from server.settings import Settings


async def run_insights(settings: Settings, args: argparse.Namespace) -> int:
    """Compute the report and write it where asked; print a summary."""
    from server.services import connect_store, embedder_for, openai_client

    if args.min_readers is not None and args.min_readers < 1:
        raise ConfigError("--min-readers: must be at least 1")
    if args.book_url and not args.book_url.startswith(("https://", "http://")):
        raise ConfigError("--book-url: expected an http(s) URL")
    try:
        since, until = period(args.since, args.until, args.days)
    except ChatError as exc:
        raise ConfigError(exc.message) from None
    async with contextlib.AsyncExitStack() as stack:
        store, _ = await connect_store(settings, stack)
        await store.migrate()
        client = openai_client(settings) if settings.model_configured else None
        if client is not None:
            stack.push_async_callback(client.close)
        embedder = embedder_for(settings, client)
        stack.push_async_callback(embedder.aclose)
        report = await report_for(
            store, embedder, since, until, options_from(settings, args.min_readers)
        )
    if args.json is not None:
        data = msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"
        if str(args.json) == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            await asyncio.to_thread(_write, args.json, data)
    if args.html is not None:
        page = render_html(report, book_url=args.book_url).encode()
        await asyncio.to_thread(_write, args.html, page)
    if str(args.json) != "-":
        print(summary(report))
    return 0


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def summary(report: InsightsReport) -> str:
    """A few lines for the terminal: totals and the worst gaps."""
    t = report.totals
    lines = [
        f"{report.since[:10]} to {report.until[:10]}: {t.questions} questions from {t.readers}"
        f" readers; {t.unanswerable} unanswerable, {t.not_covered} answered 'not covered',"
        f" {t.rated_down} rated down; {t.groups} topics ({t.hidden_groups} hidden: fewer than"
        f" {report.settings.min_readers} readers)",
    ]
    for g in report.gaps[:10]:
        lines.append(
            f"  gap #{g.id}: {g.gap_readers}/{g.readers} readers, {g.failing}/{g.questions}"
            f" questions: {g.label}"
        )
    return "\n".join(lines)
