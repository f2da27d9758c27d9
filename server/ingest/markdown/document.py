"""A Docusaurus docs folder as ordered chapters, heading sections and retrieval chunks."""

from __future__ import annotations

import hashlib
import posixpath
import re
import uuid
from pathlib import Path
from typing import Any

import msgspec

from server.ingest.markdown.chunks import SectionText, draft_chunks
from server.ingest.markdown.frontmatter import front_matter_text, parse_front_matter
from server.ingest.markdown.order import (
    BookError,
    DocPlace,
    doc_files,
    is_category_index,
    reading_order,
    sidebar_number,
    strip_number_prefix,
)
from server.ingest.markdown.syntax import (
    Block,
    BlockParser,
    Slugger,
    heading_parts,
    inline_text,
    parse_blocks,
    split_lines,
    walk,
)

__all__ = [
    "BookError",
    "Chapter",
    "Chunk",
    "Section",
    "chunk_chapter",
    "load_book",
    "parse_chapter",
    "sha256",
    "split_sections_for_rewrite",
]

CHUNK_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "textbook-chat/chunk")


class Section(msgspec.Struct, frozen=True, kw_only=True):
    """The markdown from one heading up to the next heading outside any container."""

    id: str
    title: str
    heading_path: list[str]
    level: int
    position: int
    markdown: str


class Chapter(msgspec.Struct, frozen=True, kw_only=True):
    """One doc page; `markdown` is its body without front matter or MDX imports/exports."""

    id: str
    doc_id: str  # Docusaurus's own id (number prefixes stripped): what the site's pages know
    title: str
    url: str
    source_path: str
    position: int
    content_hash: str
    markdown: str
    sections: list[Section]


class Chunk(msgspec.Struct, frozen=True, kw_only=True):
    """A retrieval passage: a breadcrumb line, then cleaned markdown from one place."""

    id: str
    chapter_id: str
    section_id: str
    title: str
    section_title: str
    heading_path: list[str]
    url: str
    position: int
    text: str
    content_hash: str


def sha256(text: str) -> str:
    """Hex sha256 of UTF-8 text."""
    return hashlib.sha256(text.encode()).hexdigest()


def _split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    lines = split_lines(text)
    if lines and lines[0].rstrip() == "---":
        for n in range(1, len(lines)):
            if lines[n].rstrip() == "---":
                meta = parse_front_matter("".join(lines[1:n]))
                return meta, "".join(lines[n + 1 :])
    return {}, text


def _without_esm(body: str) -> str:
    """The body with top-level import/export statements (and the blank lines after) removed."""
    parser, blocks = parse_blocks(body, front_matter=False)
    kept: list[str] = []
    skip_blank = False
    for block in blocks:
        if block.kind == "esm" or (skip_blank and block.kind == "blank"):
            skip_blank = block.kind == "esm"
            continue
        skip_blank = False
        kept.extend(parser.raw[block.start : block.end])
    text = "".join(kept).lstrip("\n")
    return text if text.endswith("\n") or not text else text + "\n"


def _unprefixed(path: str, strip: bool) -> str:
    """`path` with each segment's number prefix removed, unless `parse_number_prefixes: false`."""
    return "/".join(strip_number_prefix(p)[0] if strip else p for p in path.split("/") if p)


def _route(
    doc_id: str, source_path: str, slug: str | None, base_url: str, strip: bool = True
) -> str:
    """Permalink as Docusaurus computes it from the directory, the doc id and any slug."""
    directory = posixpath.dirname(source_path)
    stripped = _unprefixed(directory, strip)
    dir_slug = "/" + stripped + "/" if stripped else "/"
    stem = posixpath.splitext(posixpath.basename(source_path))[0]
    if slug and slug.startswith("/"):
        route = slug
    elif not slug and is_category_index(stem, directory):
        route = dir_slug
    else:
        base = slug or posixpath.basename(doc_id)
        route = posixpath.normpath(posixpath.join(dir_slug, base))
        if base.endswith("/") and not route.endswith("/"):
            route += "/"
    return base_url.rstrip("/") + route


def _humanise(stem: str) -> str:
    words = re.sub(r"[-_]+", " ", strip_number_prefix(stem)[0]).strip()
    return words[:1].upper() + words[1:] if words else stem


def _sections(
    parser: BlockParser, blocks: list[Block], chapter_id: str, title: str
) -> list[Section]:
    slugger = Slugger()
    anchors: dict[int, str] = {}
    for block in walk(blocks):
        if block.kind == "heading":
            _, text, custom = heading_parts(parser.lines[block.start])
            anchors[block.start] = custom or slugger.slug(inline_text(text))
    starts = [b for b in blocks if b.kind == "heading"]
    title_line = (
        starts[0].start if starts and heading_parts(parser.lines[starts[0].start])[0] == 1 else -1
    )
    bounds: list[tuple[int, Block | None]] = []
    first = starts[0].start if starts else len(parser.lines)
    if "".join(parser.raw[:first]).strip():
        bounds.append((0, None))
    bounds += [(b.start, b) for b in starts]
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    for n, (start, heading) in enumerate(bounds):
        end = bounds[n + 1][0] if n + 1 < len(bounds) else len(parser.lines)
        if heading is None:
            level, text, anchor = 0, title, ""
        else:
            level, raw_text, _ = heading_parts(parser.lines[start])
            text, anchor = inline_text(raw_text).strip(), anchors[start]
            while stack and stack[-1][0] >= level:
                stack.pop()
            if start != title_line:
                stack.append((level, text))
        sections.append(
            Section(
                id=f"{chapter_id}#{anchor}",
                title=text,
                heading_path=[title, *(t for _, t in stack)],
                level=level,
                position=len(sections),
                markdown="".join(parser.raw[start:end]),
            )
        )
    return sections


def parse_chapter(
    text: str, source_path: str, base_url: str = "/docs", position: int = 0
) -> Chapter:
    """Parse one doc file's text; `source_path` is relative to the docs root, '/'-separated."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    meta, body = _split_front_matter(text)
    markdown = _without_esm(body)
    source_path = source_path.replace("\\", "/").lstrip("/")
    directory = posixpath.dirname(source_path)
    stem = posixpath.splitext(posixpath.basename(source_path))[0]
    front_id = front_matter_text(meta, "id")
    strip = front_matter_text(meta, "parse_number_prefixes").lower() != "false"
    stripped_dir = _unprefixed(directory, strip)
    # Docusaurus's own doc id: what the site's pages (and so the widget) know a chapter by.
    doc_id = posixpath.join(stripped_dir, front_id or _unprefixed(stem, strip))
    chapter_id = doc_id
    parser, blocks = parse_blocks(markdown, front_matter=False)
    h1 = next(
        (
            heading_parts(parser.lines[b.start])[1]
            for b in blocks
            if b.kind == "heading" and heading_parts(parser.lines[b.start])[0] == 1
        ),
        None,
    )
    title = (
        front_matter_text(meta, "title")
        or (inline_text(h1).strip() if h1 else "")
        or _humanise(stem)
    )
    return Chapter(
        id=chapter_id,
        doc_id=doc_id,
        title=title,
        url=_route(doc_id, source_path, front_matter_text(meta, "slug") or None, base_url, strip),
        source_path=source_path,
        position=position,
        content_hash=sha256(markdown),
        markdown=markdown,
        sections=_sections(parser, blocks, chapter_id, title),
    )


def chunk_chapter(
    chapter: Chapter, *, target_chars: int = 1200, max_chars: int = 2000
) -> list[Chunk]:
    """Retrieval chunks of a chapter in reading order, each within `max_chars`."""
    inputs = [
        SectionText(s.markdown, tuple(s.heading_path), s.level, s.title) for s in chapter.sections
    ]
    chunks: list[Chunk] = []
    for n, draft in enumerate(draft_chunks(inputs, target_chars=target_chars, max_chars=max_chars)):
        section = chapter.sections[draft.section]
        # Docusaurus gives h1 headings no id (theme-classic's Heading): link to the page itself.
        anchor = section.id.partition("#")[2] if section.level > 1 else ""
        digest = sha256(draft.text)
        chunks.append(
            Chunk(
                id=str(uuid.uuid5(CHUNK_NAMESPACE, f"{chapter.id}\n{section.id}\n{n}\n{digest}")),
                chapter_id=chapter.id,
                section_id=section.id,
                title=chapter.title,
                section_title=section.title,
                heading_path=list(draft.path),
                url=f"{chapter.url}#{anchor}" if anchor else chapter.url,
                position=n,
                text=draft.text,
                content_hash=digest,
            )
        )
    return chunks


def split_sections_for_rewrite(markdown: str, max_chars: int = 6000) -> list[str]:
    """Pieces of at most `max_chars` that join back to `markdown` exactly.

    Cuts fall before top-level headings; a section too big on its own is cut between its
    top-level blocks instead. Nothing is ever cut inside a code block, admonition, table or
    JSX element, so a piece over `max_chars` is one such block that cannot be cut.
    """
    if not markdown:
        return []
    parser, blocks = parse_blocks(markdown)
    offsets = [0]
    for line in parser.raw:
        offsets.append(offsets[-1] + len(line))
    cuts = [b.start for b in blocks if b.kind == "heading" and b.start > 0]
    sections = list(zip([0, *cuts], [*cuts, len(parser.raw)], strict=True))
    units: list[tuple[int, int]] = []
    for start, end in sections:
        if offsets[end] - offsets[start] <= max_chars:
            units.append((start, end))
            continue
        inner = [b.start for b in blocks if start < b.start < end and b.kind != "blank"]
        units += zip([start, *inner], [*inner, end], strict=True)
    pieces: list[str] = []
    piece_start = 0
    for start, end in units:
        if start > piece_start and offsets[end] - offsets[piece_start] > max_chars:
            pieces.append(markdown[offsets[piece_start] : offsets[start]])
            piece_start = start
    pieces.append(markdown[offsets[piece_start] :])
    return pieces


def load_book(root: Path, base_url: str = "/docs") -> list[Chapter]:
    """Every doc under `root`, in sidebar reading order with `position` counted from 0."""
    if not root.is_dir():
        raise BookError(f"docs folder {root} does not exist or is not a folder")
    chapters: dict[str, Chapter] = {}
    places: dict[str, DocPlace] = {}
    for path in doc_files(root):
        rel = path.relative_to(root).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BookError(f"cannot read doc {path}: {exc}") from exc
        meta = _split_front_matter(text)[0]
        if front_matter_text(meta, "draft") == "true":
            continue  # Docusaurus leaves drafts out of the published site
        chapters[rel] = parse_chapter(text, rel, base_url)
        places[rel] = DocPlace(chapters[rel].doc_id, sidebar_number(meta.get("sidebar_position")))
    seen: dict[str, str] = {}
    for rel, chapter in chapters.items():
        if chapter.id in seen:
            raise BookError(f"docs {seen[chapter.id]} and {rel} both have the id {chapter.id!r}")
        seen[chapter.id] = rel
    order = reading_order(root, places)
    return [msgspec.structs.replace(chapters[rel], position=n) for n, rel in enumerate(order)]
