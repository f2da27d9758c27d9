"""A reader's conversations as one JSON document or one Markdown file."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from protocol.api import ReaderExport
from server.store import Store


async def reader_export(store: Store, user_id: str) -> ReaderExport:
    """Everything the user asked and was answered, with their profile and ratings."""
    data: dict[str, Any] = await store.export_reader(user_id)
    return msgspec.convert(
        {
            "format": "textbook-chat-export/1",
            "exported_at": dt.datetime.now(dt.UTC).isoformat(),
            **data,
        },
        ReaderExport,
    )


def export_markdown(export: ReaderExport) -> str:
    """The export for people: a heading per conversation, each question and its answer."""
    lines = [
        "# Conversations with the book",
        "",
        f"Exported {export.exported_at} for `{export.user_id}`.",
        "",
    ]
    if export.profile is not None:
        p = export.profile
        lines += [
            "## Profile",
            "",
            f"- Level: {p.level}",
            f"- Software background: {_line(p.software_background) or '—'}",
            f"- Hardware background: {_line(p.hardware_background) or '—'}",
        ]
        if p.language:
            lines.append(f"- Language: {p.language}")
        lines.append("")
    if not export.conversations:
        lines += ["No conversations.", ""]
    for conversation in export.conversations:
        lines += [f"## {_line(conversation.title)}", "", f"_Started {conversation.created_at}_", ""]
        for m in conversation.messages:
            lines += [f"### {_line(m.question)}", ""]
            if m.selection is not None:
                lines += [*(f"> {q}" for q in m.selection.text.splitlines() or [""]), ""]
            lines += [m.answer.strip() or "_(no answer)_", ""]
            if m.status != "complete":
                lines += [f"_The answer was {m.status}._", ""]
            if m.sources:
                lines.append("Sources:")
                for n, s in enumerate(m.sources, start=1):
                    where = " › ".join(p for p in (s.title, s.section) if p)
                    lines.append(f"{n}. [{where}]({s.url})" if s.url else f"{n}. {where}")
                lines.append("")
            if m.rating is not None:
                said = f": {_line(m.rating.comment)}" if m.rating.comment else ""
                lines += [f"Your rating: {m.rating.value}{said}", ""]
    return "\n".join(lines).rstrip() + "\n"


def _line(text: str) -> str:
    """One line of text (a heading or list item must not run into the next)."""
    return " ".join(text.split())
