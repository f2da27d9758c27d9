"""Chunk text cleanup: MDX wrappers, admonition markers and comments out, code left as is."""

from __future__ import annotations

import re

from server.ingest.markdown.syntax import (
    ADMONITION_CLOSE,
    ADMONITION_OPEN,
    FENCE_CLOSE,
    FENCE_OPEN,
    BlockParser,
    is_component_name,
    split_lines,
)

TAG = re.compile(
    r"</?(?P<name>[A-Za-z][\w.:-]*)(?:\s(?:[^<>\"'{}]|\"[^\"]*\"|'[^']*'|\{[^{}]*\})*)?/?>"
)
CUSTOM_HEADING_ID = re.compile(r"(?<=\S)[ \t]*\{#[^}]+\}[ \t]*$")


def _strip_tags(line: str) -> str:
    """Remove JSX/HTML tags outside code spans, keeping the text between them."""
    pieces = re.split(r"(`+[^`]*?`+)", line)
    for n in range(0, len(pieces), 2):
        pieces[n] = TAG.sub(
            lambda m: "" if is_component_name(m.group("name")) else m.group(0), pieces[n]
        )
    return "".join(pieces)


def admonition_title(rest: str) -> str:
    """Title of `:::kind[Title]`, `:::kind{title="Title"}` or legacy `:::kind Title`."""
    rest = rest.strip()
    if rest.startswith("["):
        return rest[1 : rest.find("]") if "]" in rest else len(rest)].strip()
    if rest.startswith("{"):
        m = re.search(r"title=(?:\"([^\"]*)\"|'([^']*)')", rest)
        return (m.group(1) or m.group(2) or "").strip() if m else ""
    return rest


def _clean_prose(text: str) -> str:
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"\{/\*.*?\*/\}", "", text, flags=re.S)
    lines: list[str] = []
    for line in text.split("\n"):
        opener = ADMONITION_OPEN.match(line)
        if opener:
            title = admonition_title(opener.group("rest"))
            if title:
                indent = line[: len(line) - len(line.lstrip())]
                lines.append(f"{indent}**{title}**")
        elif not ADMONITION_CLOSE.match(line):
            lines.append(CUSTOM_HEADING_ID.sub("", _strip_tags(line)).rstrip())
    return "\n".join(lines)


def clean_markdown(text: str) -> str:
    """Chunk text of a markdown snippet: markup wrappers and comments gone, code untouched."""
    parser = BlockParser(split_lines(text))
    out: list[str] = []
    prose: list[str] = []
    i = 0
    while i < len(parser.lines):
        if parser.is_fence_open(i):
            out.append(_clean_prose("\n".join(prose)))
            prose = []
            end = parser.fence_end(i)
            out.append(closed_fence(parser.lines[i:end]))
            i = end
        else:
            prose.append(parser.lines[i])
            i += 1
    out.append(_clean_prose("\n".join(prose)))
    joined = "\n".join(part for part in out if part.strip())
    return re.sub(r"\n[ \t]*\n(?:[ \t]*\n)+", "\n\n", joined).strip("\n")


def closed_fence(lines: list[str]) -> str:
    """A fenced block's text, closing the fence if the author forgot to."""
    opener = FENCE_OPEN.match(lines[0])
    assert opener is not None
    fence = opener.group("fence")
    closer = FENCE_CLOSE.match(lines[-1]) if len(lines) > 1 else None
    if closer and closer.group("fence")[0] == fence[0] and len(closer.group("fence")) >= len(fence):
        return "\n".join(lines)
    indent = lines[0][: len(lines[0]) - len(lines[0].lstrip())]
    return "\n".join([*lines, indent + fence])


def shorten_mermaid(text: str, limit: int) -> str:
    """Mermaid keeps its node labels but loses its tail beyond `limit` characters."""
    lines = text.split("\n")
    if len(text) <= limit or len(lines) < 3:
        return text
    kept = [lines[0]]
    size = len(lines[0]) + len(lines[-1]) + 8
    for line in lines[1:-1]:
        if size + len(line) + 1 > limit:
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join([*kept, "%% …", lines[-1]])


def jsx_label(open_tag: str) -> str:
    """The `label` or `title` attribute of an opening JSX tag, e.g. a TabItem's tab name."""
    m = re.search(r"\b(?:label|title)=(?:\"([^\"]*)\"|'([^']*)'|\{[\"']([^\"']*)[\"']\})", open_tag)
    return next((g for g in m.groups() if g), "") if m else ""
