"""Structure-aware packing of chapter sections into retrieval-sized chunk texts."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from server.ingest.markdown.clean import (
    TAG,
    admonition_title,
    clean_markdown,
    closed_fence,
    jsx_label,
    shorten_mermaid,
)
from server.ingest.markdown.syntax import (
    ADMONITION_OPEN,
    LIST_ITEM,
    TABLE_DELIMITER,
    Block,
    BlockParser,
    split_lines,
)

UnitKind = Literal["prose", "code", "table", "heading", "group"]
BREADCRUMB_SEPARATOR = " › "
MAX_CRUMB_CHARS = 80


@dataclass(frozen=True, slots=True)
class SectionText:
    """One section's markdown (its heading line first) and where it sits in the chapter."""

    markdown: str
    path: tuple[str, ...]
    level: int
    title: str


@dataclass(frozen=True, slots=True)
class ChunkDraft:
    """A chunk's text and the section it is filed under; ids and hashes are added by the caller."""

    section: int
    path: tuple[str, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Unit:
    """A piece of cleaned markdown that should stay whole if it fits."""

    text: str
    kind: UnitKind
    section: int
    parts: tuple[Unit, ...] = ()


class _UnitBuilder:
    def __init__(self, parser: BlockParser, section: int, mermaid_limit: int) -> None:
        self.parser = parser
        self.section = section
        self.mermaid_limit = mermaid_limit

    def text(self, start: int, end: int) -> str:
        return "\n".join(self.parser.lines[start:end])

    def units(self, blocks: Sequence[Block]) -> list[Unit]:
        out: list[Unit] = []
        for block in blocks:
            unit = self.unit(block)
            if unit is not None:
                out.append(unit)
        return out

    def unit(self, block: Block) -> Unit | None:
        kind = block.kind
        if kind in ("blank", "hr", "esm", "frontmatter", "marker"):
            return None
        if kind == "code":
            code = closed_fence(self.parser.lines[block.start : block.end])
            if re.match(r"^[ \t]*(`{3,}|~{3,})[ \t]*mermaid\b", code):
                code = shorten_mermaid(code, self.mermaid_limit)
            return Unit(code, "code", self.section)
        if kind == "table":
            return Unit(self.text(block.start, block.end), "table", self.section)
        if kind in ("admonition", "jsx") and block.inner_end > block.inner_start:
            return self.group(block)
        cleaned = clean_markdown(self.text(block.start, block.end))
        return Unit(cleaned, "prose", self.section) if cleaned.strip() else None

    def group(self, block: Block) -> Unit | None:
        opening = self.text(block.start, block.inner_start)
        parts: list[Unit] = []
        if block.kind == "admonition":
            opener = ADMONITION_OPEN.match(opening)
            title = admonition_title(opener.group("rest")) if opener else ""
        else:
            title = jsx_label(opening)
            # Text written on the opening tag's own line is content too.
            remainder = clean_markdown(TAG.sub("", opening, count=1))
            if remainder:
                parts.append(Unit(remainder, "prose", self.section))
        if title:
            parts.insert(0, Unit(f"**{title}**", "heading", self.section))
        parts += self.units(block.children)
        if block.kind == "jsx":
            tail = clean_markdown(self.text(block.inner_end, block.end))
            if tail:
                parts.append(Unit(tail, "prose", self.section))
        if not any(p.kind != "heading" for p in parts):
            return None
        return Unit("\n\n".join(p.text for p in parts), "group", self.section, tuple(parts))


_SPLITTERS = (re.compile(r"(?<=\n)"), re.compile(r"(?<=[.!?;:] )"), re.compile(r"(?<= )"))


def _hard_split(text: str, budget: int, level: int = 0) -> list[str]:
    """Split at line ends, then sentence ends, then spaces, then anywhere."""
    if len(text) <= budget:
        return [text.rstrip()] if text.strip() else []
    if level == len(_SPLITTERS):
        return [text[n : n + budget] for n in range(0, len(text), budget)]
    packed: list[str] = []
    for piece in _SPLITTERS[level].split(text):
        if packed and len(packed[-1]) + len(piece) <= budget:
            packed[-1] += piece
        else:
            packed.append(piece)
    return [part for piece in packed for part in _hard_split(piece, budget, level + 1)]


def _balanced(lines: list[str], room: int) -> list[list[str]]:
    """Lines in consecutive runs of at most `room` characters, of about equal size."""
    fitted = [
        p for line in lines for p in (_hard_split(line, room) if len(line) > room else [line])
    ]
    total = sum(len(line) + 1 for line in fitted)
    limit = min(room, -(-total // -(-total // room)) + 40)
    runs: list[list[str]] = [[]]
    size = 0
    for line in fitted:
        if runs[-1] and size + len(line) + 1 > limit:
            runs.append([])
            size = 0
        runs[-1].append(line)
        size += len(line) + 1
    return runs


def _split_code(unit: Unit, budget: int) -> list[Unit]:
    """Code in balanced pieces, each re-fenced with the original opening and closing lines."""
    lines = unit.text.split("\n")
    head, tail = lines[0], lines[-1]
    room = budget - len(head) - len(tail) - 2
    if room < 40:  # an absurdly long fence line: give up on keeping the fence
        return [Unit(piece, "prose", unit.section) for piece in _hard_split(unit.text, budget)]
    return [
        Unit("\n".join([head, *body, tail]), "code", unit.section)
        for body in _balanced(lines[1:-1], room)
    ]


def _split_table(unit: Unit, budget: int) -> list[Unit]:
    """Table rows in pieces, each repeating the header so it still reads as a table."""
    lines = unit.text.split("\n")
    header_size = 2 if len(lines) > 1 and TABLE_DELIMITER.match(lines[1]) else 1
    header, rows = lines[:header_size], lines[header_size:]
    if len("\n".join(header)) > budget // 2:
        header, rows = [], lines
    room = budget - sum(len(h) + 1 for h in header)
    return [
        Unit("\n".join([*header, *run]), "table", unit.section) for run in _balanced(rows, room)
    ]


def _split_prose(unit: Unit, budget: int) -> list[Unit]:
    """Paragraphs, list items and fenced code inside a prose unit, as separate units."""
    parser = BlockParser(split_lines(unit.text))
    atoms: list[Unit] = []
    i = 0
    while i < len(parser.lines):
        if parser.is_fence_open(i):
            end = parser.fence_end(i)
            atoms.append(Unit("\n".join(parser.lines[i:end]), "code", unit.section))
            i = end
            continue
        j = i + 1
        while (
            j < len(parser.lines)
            and parser.lines[j].strip()
            and not parser.is_fence_open(j)
            and not (LIST_ITEM.match(parser.lines[j]) and not parser.lines[j][:1].isspace())
        ):
            j += 1
        text = "\n".join(parser.lines[i:j]).strip("\n")
        if text.strip():
            atoms.append(Unit(text, "prose", unit.section))
        i = j
    if len(atoms) > 1:
        return atoms
    if atoms and atoms[0].kind == "code":
        return _split_code(atoms[0], budget)
    return [Unit(piece, "prose", unit.section) for piece in _hard_split(unit.text, budget)]


def _split(unit: Unit, budget: int) -> list[Unit]:
    if unit.kind == "code":
        return _split_code(unit, budget)
    if unit.kind == "table":
        return _split_table(unit, budget)
    return _split_prose(unit, budget)


def _joined_size(units: Sequence[Unit]) -> int:
    return sum(len(u.text) for u in units) + 2 * max(len(units) - 1, 0)


def _leads_in(unit: Unit) -> bool:
    return unit.kind == "heading" or unit.text.rstrip().endswith(":")


def _pack(units: list[Unit], budget: int, target: int) -> list[list[Unit]]:
    """Greedy packing up to `target`, stretching to `budget` to keep an intro with its block."""
    chunks: list[list[Unit]] = []
    current: list[Unit] = []
    queue = deque(units)
    while queue:
        unit = queue.popleft()
        size = _joined_size(current)
        if len(unit.text) > budget and unit.kind == "group":
            queue.extendleft(reversed(unit.parts))
            continue
        if len(unit.text) > budget:
            # Whatever leads into the oversized block starts a chunk with its first piece.
            lead: list[Unit] = []
            if size <= target // 3:
                lead, current = current, []
            while current and _leads_in(current[-1]):
                if _joined_size([*lead, current[-1]]) > budget // 3:
                    break
                lead.insert(0, current.pop())
            if current:
                chunks.append(current)
            current = lead
            room = budget - (_joined_size(lead) + 2 if lead else 0)
            queue.extendleft(reversed(_split(unit, room)))
            continue
        grown = size + 2 + len(unit.text) if current else len(unit.text)
        glue = current and (_leads_in(current[-1]) or size < target // 3)
        if current and grown > target and not (glue and grown <= budget):
            carried: list[Unit] = []
            while current and current[-1].kind == "heading":
                carried.insert(0, current.pop())
            if carried and _joined_size([*carried, unit]) > budget:
                current += carried  # rare: the headings stay behind
                carried = []
            if current:
                chunks.append(current)
            current = carried
        current.append(unit)
    if any(u.kind != "heading" for u in current):
        tail = _joined_size(current)
        if chunks and tail < target // 4 and _joined_size(chunks[-1]) + 2 + tail <= budget:
            chunks[-1].extend(current)  # a short remainder reads better with what precedes it
        else:
            chunks.append(current)
    return chunks


def _common_prefix(paths: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    prefix = paths[0]
    for path in paths[1:]:
        n = 0
        while n < min(len(prefix), len(path)) and prefix[n] == path[n]:
            n += 1
        prefix = prefix[:n]
    return prefix


def breadcrumb(path: Sequence[str]) -> str:
    """The heading path as one short line."""
    crumbs = [c if len(c) <= MAX_CRUMB_CHARS else c[: MAX_CRUMB_CHARS - 1] + "…" for c in path]
    return BREADCRUMB_SEPARATOR.join(crumbs)


def _groups(sections: Sequence[SectionText], sizes: list[int], min_chars: int) -> list[list[int]]:
    """Runs of sections where tiny leading ones are merged into what follows beneath them."""
    groups: list[list[int]] = []
    i = 0
    while i < len(sections):
        group = [i]
        total = sizes[i]
        first = sections[i].path
        while total < min_chars and i + 1 < len(sections):
            base = _common_prefix([first, sections[i + 1].path])
            if len(base) < max(1, len(first) - 1):
                break
            i += 1
            group.append(i)
            total += sizes[i]
        groups.append(group)
        i += 1
    return groups


def draft_chunks(
    sections: Sequence[SectionText], *, target_chars: int, max_chars: int
) -> list[ChunkDraft]:
    """Chunk texts (breadcrumb line, blank line, body) in reading order; none crosses a group."""
    section_units: list[list[Unit]] = []
    for n, section in enumerate(sections):
        parser = BlockParser(split_lines(section.markdown))
        blocks = parser.parse(top=False)
        if blocks and blocks[0].kind == "heading":
            blocks = blocks[1:]
        section_units.append(_UnitBuilder(parser, n, target_chars).units(blocks))
    sizes = [sum(len(u.text) for u in units) for units in section_units]
    drafts: list[ChunkDraft] = []
    for whole_group in _groups(sections, sizes, target_chars // 4):
        # An empty section whose title already heads a later member's breadcrumb adds nothing.
        group = [
            n
            for n in whole_group
            if sizes[n]
            or not any(
                sections[m].path[: len(sections[n].path)] == sections[n].path
                for m in whole_group
                if m > n
            )
        ]
        paths = [sections[n].path for n in group]
        base = _common_prefix(paths)
        units: list[Unit] = []
        for n in group:
            if len(group) > 1 and sections[n].path != base and sections[n].level > 0:
                heading = "#" * sections[n].level + " " + sections[n].title
                units.append(Unit(heading, "heading", n))
            units += section_units[n]
        longest = max(len(breadcrumb(p)) for p in paths)
        budget = max_chars - longest - 2
        for chunk in _pack(units, budget, min(target_chars, budget)):
            owners = sorted({u.section for u in chunk})
            path = _common_prefix([sections[n].path for n in owners])
            body = "\n\n".join(u.text for u in chunk).strip("\n")
            if body.strip():
                drafts.append(ChunkDraft(owners[0], path, breadcrumb(path) + "\n\n" + body))
    return drafts
