"""Docusaurus docs parsing, sectioning, chunking and rewrite splitting."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from server.ingest.markdown.document import (
    BookError,
    Chapter,
    Chunk,
    chunk_chapter,
    load_book,
    parse_chapter,
    sha256,
    split_sections_for_rewrite,
)
from server.ingest.markdown.syntax import FENCE_CLOSE, FENCE_OPEN, github_slug, parse_blocks
from tests.conftest import CORPORA

SAMPLE = """\
---
id: kinematics
title: "Forward Kinematics"
sidebar_position: 3
slug: fk-basics
description: 'Joints, links and frames'
---

import Tabs from '@theme/Tabs';
import TabItem from '@theme/TabItem';
export const meta = {level: 2};

# Forward Kinematics

Kinematics maps joint angles to poses.

## Setup {#setup-env}

Install the tools first.

```bash
# this is a shell comment, not a heading
pip install kinpy
```

### Installing `kinpy` on **Linux**

Run the installer.

## Setup

A second setup heading gets a numbered anchor.
"""


def fences_balanced(text: str) -> bool:
    """True when every fence opened in `text` is closed again."""
    fence = ""
    for line in text.split("\n"):
        if not fence:
            opened = FENCE_OPEN.match(line)
            if opened and not (opened["fence"][0] == "`" and "`" in opened["info"]):
                fence = opened["fence"]
        else:
            closed = FENCE_CLOSE.match(line)
            if closed and closed["fence"][0] == fence[0] and len(closed["fence"]) >= len(fence):
                fence = ""
    return not fence


def chapter_of(body: str, path: str = "part/doc.mdx") -> Chapter:
    return parse_chapter(body, path)


def chunk_texts(body: str, **sizes: int) -> list[str]:
    return [c.text for c in chunk_chapter(chapter_of(body), **sizes)]


# --- chapter metadata -------------------------------------------------------------------------


def test_front_matter_id_title_slug_and_body() -> None:
    chapter = parse_chapter(SAMPLE, "02-robots/05-kinematics.mdx")
    assert chapter.id == "robots/kinematics"
    assert chapter.doc_id == "robots/kinematics"
    assert chapter.title == "Forward Kinematics"
    assert chapter.url == "/docs/robots/fk-basics"
    assert chapter.source_path == "02-robots/05-kinematics.mdx"
    assert not chapter.markdown.startswith("---")
    assert "import Tabs" not in chapter.markdown
    assert "export const" not in chapter.markdown
    assert chapter.markdown.startswith("# Forward Kinematics\n")
    assert chapter.content_hash == sha256(chapter.markdown)


def test_id_and_url_without_front_matter() -> None:
    chapter = parse_chapter("# Intro\n\nHello.\n", "01-module-one/02-first-steps.md")
    assert chapter.id == "module-one/first-steps"
    assert chapter.url == "/docs/module-one/first-steps"
    assert chapter.title == "Intro"


def test_url_rules_follow_docusaurus() -> None:
    absolute = parse_chapter("---\nslug: /custom/place\n---\nText\n", "03-a/x.md")
    assert absolute.url == "/docs/custom/place"
    index = parse_chapter("# Module\n", "04-module-four/README.md")
    assert index.url == "/docs/module-four/"
    same_name = parse_chapter("# Guide\n", "guide/Guide.md")
    assert same_name.url == "/docs/guide/"
    dated = parse_chapter("Text\n", "2024-01-05-notes.md", base_url="/book/")
    assert dated.url == "/book/2024-01-05-notes"
    root = parse_chapter("Text\n", "index.mdx", base_url="/")
    assert root.url == "/"


def test_title_falls_back_to_file_name() -> None:
    chapter = parse_chapter("Only a paragraph.\n", "07-getting_started-fast.md")
    assert chapter.title == "Getting started fast"
    assert [s.id for s in chapter.sections] == ["getting_started-fast#"]


def test_rules_right_after_front_matter_are_not_front_matter() -> None:
    chapter = parse_chapter("---\ntitle: X\n---\n---\n\n## A\n\ntext\n\n---\n\n## B\n", "a.md")
    assert [s.id for s in chapter.sections] == ["a#", "a#a", "a#b"]
    assert chapter.markdown.startswith("---\n\n## A")


def test_crlf_and_bom_are_normalised() -> None:
    chapter = parse_chapter("\ufeff---\r\ntitle: T\r\n---\r\n# H\r\n\r\nText\r\n", "a.md")
    assert chapter.title == "T"
    assert chapter.markdown == "# H\n\nText\n"


# --- headings and sections --------------------------------------------------------------------


def test_sections_paths_levels_and_anchors() -> None:
    chapter = parse_chapter(SAMPLE, "02-robots/05-kinematics.mdx")
    got = [(s.id, s.level, s.heading_path, s.title) for s in chapter.sections]
    assert got == [
        (
            "robots/kinematics#forward-kinematics",
            1,
            ["Forward Kinematics"],
            "Forward Kinematics",
        ),
        ("robots/kinematics#setup-env", 2, ["Forward Kinematics", "Setup"], "Setup"),
        (
            "robots/kinematics#installing-kinpy-on-linux",
            3,
            ["Forward Kinematics", "Setup", "Installing kinpy on Linux"],
            "Installing kinpy on Linux",
        ),
        ("robots/kinematics#setup", 2, ["Forward Kinematics", "Setup"], "Setup"),
    ]
    assert [s.position for s in chapter.sections] == [0, 1, 2, 3]
    assert "".join(s.markdown for s in chapter.sections) == chapter.markdown
    assert chapter.sections[1].markdown.startswith("## Setup {#setup-env}\n")


def test_headings_inside_code_fences_are_not_headings() -> None:
    body = (
        "# Title\n\n"
        "````markdown\n```python\n# not a heading\n```\n## still code\n````\n\n"
        "~~~\n# also code\n~~~\n\n"
        "## Real\n\ntext\n"
    )
    chapter = chapter_of(body)
    assert [s.title for s in chapter.sections] == ["Title", "Real"]


def test_duplicate_and_punctuated_headings_slug_like_github() -> None:
    body = (
        "# Title\n\n## Step 1: Install ROS 2!\n\n## Step 1: Install ROS 2!\n\n"
        "## Why `rclpy_node`? 🤖\n\n## C++ & Python — [Links](http://x.y) *too*\n\n"
        "## Step 1: Install ROS 2!\n"
    )
    anchors = [s.id.partition("#")[2] for s in chapter_of(body).sections]
    assert anchors == [
        "title",
        "step-1-install-ros-2",
        "step-1-install-ros-2-1",
        "why-rclpy_node-",
        "c--python--links-too",
        "step-1-install-ros-2-2",
    ]


@pytest.mark.parametrize(
    ("text", "slug"),
    [
        ("heading with a - dash", "heading-with-a---dash"),
        (
            "exchange.bind_headers(exchange, routing [, bindCallback])",
            "exchangebind_headersexchange-routing--bindcallback",
        ),
        ("Привет non-latin 你好", "привет-non-latin-你好"),
        ("😄 unicode emoji", "-unicode-emoji"),
        ("en–dash", "endash"),
    ],
)
def test_github_slug_rules(text: str, slug: str) -> None:
    assert github_slug(text) == slug


def test_headings_inside_containers_count_for_anchors_but_do_not_split() -> None:
    body = "# T\n\n:::tip\n\n## Example\n\nInside.\n\n:::\n\n## Example\n\nOutside.\n"
    chapter = chapter_of(body)
    assert [s.id.partition("#")[2] for s in chapter.sections] == ["t", "example-1"]


def test_preamble_before_first_heading_is_a_section() -> None:
    chapter = chapter_of("Some intro text.\n\n## First\n\nBody.\n")
    first = chapter.sections[0]
    assert first.id.endswith("#")
    assert first.level == 0
    assert first.heading_path == ["Doc"]


# --- chunk text cleaning ----------------------------------------------------------------------


def test_admonitions_lose_markers_but_keep_title_and_text() -> None:
    body = (
        "# T\n\n"
        ":::note Keep In Mind\nLegacy title syntax body.\n:::\n\n"
        ":::info[Bracket Title]\nDirective body.\n:::\n\n"
        "```\n:::\n```\n\n"
        ":::warning\nUntitled warning body.\n:::\n"
    )
    text = "\n".join(chunk_texts(body))
    assert ":::" not in text.replace("```\n:::\n```", "")
    assert "**Keep In Mind**" in text
    assert "**Bracket Title**" in text
    for inner in ("Legacy title syntax body.", "Directive body.", "Untitled warning body."):
        assert inner in text
    assert "```\n:::\n```" in text  # a ::: inside code is code, not a closing marker
    assert "warning" not in text.lower().replace("untitled warning body", "")


def test_an_admonitions_close_ends_a_code_fence_inside_it() -> None:
    # remark-directive, which parses Docusaurus's admonitions, closes the container at its `:::`
    # even inside a fence (the fence ends with it); the next fence then runs to the next one.
    # A real book has this (book-b's ROS 2 services lesson): its headings after it are code.
    body = (
        "# T\n\n## Before\n\n"
        ":::info[Output]\n```\n:::\nlog line\n```\n\n"
        "## Inside the code\n\n```\n\n## After\n\nText.\n"
    )
    _, blocks = parse_blocks(body)
    kinds = [(b.kind, b.start) for b in blocks if b.kind != "blank"]
    assert kinds == [
        ("heading", 0),
        ("heading", 2),
        ("admonition", 4),
        ("paragraph", 7),
        ("code", 8),
        ("heading", 14),
        ("paragraph", 16),
    ]
    admonition = next(b for b in blocks if b.kind == "admonition")
    assert [(c.kind, c.start, c.end) for c in admonition.children] == [("code", 5, 6)]


def test_tabs_tabitems_and_comments_are_unwrapped() -> None:
    body = (
        "# T\n\n"
        '<Tabs groupId="lang">\n'
        '<TabItem value="py" label="Python" default>\n\nPython way.\n\n</TabItem>\n'
        '<TabItem\n  value="cpp"\n  label="C++">\n\nC++ way.\n\n</TabItem>\n'
        "</Tabs>\n\n"
        '<Figure src="/img/a.png" />\n\n'
        "{/* an MDX comment */}\n\n"
        "<!-- an HTML comment\nover two lines -->\n\n"
        'Visible <Highlight color="red">inline</Highlight> text.\n\n'
        '```xml\n<!-- kept: code is code -->\n<robot name="r"/>\n```\n'
    )
    text = "\n".join(chunk_texts(body))
    for gone in ("<Tabs", "</TabItem>", "<Figure", "MDX comment", "HTML comment", "<Highlight"):
        assert gone not in text
    for kept in ("**Python**", "Python way.", "**C++**", "C++ way.", "Visible inline text."):
        assert kept in text
    assert '<!-- kept: code is code -->\n<robot name="r"/>' in text


def test_tags_in_code_spans_and_comments_do_not_confuse_jsx_matching() -> None:
    body = (
        "# T\n\n<Tabs>\n\n## Inside\n\nUse `<Tabs>` here. <!-- <Tabs> -->\n\n</Tabs>\n\n"
        "## After\n\nx\n"
    )
    assert [s.title for s in chapter_of(body).sections] == ["T", "After"]


def test_chapter_markdown_keeps_jsx_and_admonitions_for_rewriting() -> None:
    body = '# T\n\n<Tabs>\n<TabItem value="a">\n\nA\n\n</TabItem>\n</Tabs>\n\n:::tip\nx\n:::\n'
    assert chapter_of(body).markdown == body


def test_mermaid_is_kept_and_long_mermaid_is_shortened() -> None:
    short = "```mermaid\ngraph TD\n  A[Camera] --> B[Detector]\n```"
    text = "\n".join(chunk_texts("# T\n\n" + short + "\n"))
    assert short in text
    edges = "".join(f"  N{i}[Node label {i}] --> N{i + 1}[Node label {i + 1}]\n" for i in range(80))
    chunks = chunk_texts("# T\n\n```mermaid\ngraph LR\n" + edges + "```\n")
    assert len(chunks) == 1
    assert "Node label 0" in chunks[0]
    assert "%% …" in chunks[0]
    assert fences_balanced(chunks[0])


# --- chunk structure --------------------------------------------------------------------------

LONG_PARAGRAPH = "Robots sense, plan and act in loops that never stop. " * 12


def structured_book() -> str:
    parts = ["# Big Chapter\n\nOpening words.\n"]
    for n in range(4):
        parts.append(f"## Part {n}\n\n{LONG_PARAGRAPH}\n\n{LONG_PARAGRAPH}\n")
        code = "".join(f"value_{n}_{i} = compute({i})  # step {i}\n" for i in range(120))
        parts.append(f'### Code {n}\n\nThe listing:\n\n```python title="part{n}.py"\n{code}```\n')
        rows = "".join(f"| row {i} | value {i * n} | note about row {i} |\n" for i in range(90))
        parts.append(f"### Table {n}\n\n| Name | Value | Note |\n|---|---|---|\n{rows}")
        items = "".join(f"- item {i}: {LONG_PARAGRAPH[:90]}\n" for i in range(30))
        parts.append(f"\n### List {n}\n\n{items}\n:::tip Remember\n{LONG_PARAGRAPH}\n:::\n")
    return "\n".join(parts)


def test_chunks_respect_size_bounds_and_keep_fences_balanced() -> None:
    chapter = chapter_of(structured_book())
    chunks = chunk_chapter(chapter, target_chars=800, max_chars=1300)
    assert len(chunks) > 20
    for chunk in chunks:
        assert 0 < len(chunk.text) <= 1300
        assert chunk.text.split("\n\n", 1)[1].strip()
        assert fences_balanced(chunk.text)
    tables = [c.text for c in chunks if "| row " in c.text]
    assert len(tables) > 4
    assert all("| Name | Value | Note |\n|---|---|---|" in t for t in tables)  # header repeated
    assert all('```python title="part' in c.text for c in chunks if "value_" in c.text)


def test_small_blocks_stay_whole_and_chunks_stay_in_their_section() -> None:
    code = "```python\n" + "".join(f"x{i} = {i}\n" for i in range(60)) + "```"
    table = "| a | b |\n|---|---|\n" + "".join(f"| {i} | {i * i} |\n" for i in range(40))
    body = f"# T\n\n## One\n\n{LONG_PARAGRAPH}\n\n{code}\n\n## Two\n\n{LONG_PARAGRAPH}\n\n{table}"
    chunks = chunk_chapter(chapter_of(body))
    assert any(code in c.text for c in chunks)
    assert any(table.rstrip("\n") in c.text for c in chunks)
    for chunk in chunks:
        anchor = chunk.section_id.partition("#")[2]
        if "x1 = 1" in chunk.text:
            assert anchor == "one"
        if "| 2 | 4 |" in chunk.text:
            assert anchor == "two"
        assert not ("x1 = 1" in chunk.text and "| 2 | 4 |" in chunk.text)


def test_breadcrumb_prefix_and_chunk_fields() -> None:
    chapter = parse_chapter(SAMPLE, "02-robots/05-kinematics.mdx")
    chunks = chunk_chapter(chapter)
    levels = {s.id: s.level for s in chapter.sections}
    for n, chunk in enumerate(chunks):
        assert chunk.position == n
        assert chunk.chapter_id == chapter.id
        assert chunk.title == chapter.title
        assert chunk.text.split("\n", 1)[0] == " › ".join(chunk.heading_path)
        assert chunk.content_hash == sha256(chunk.text)
        anchor = chunk.section_id.partition("#")[2]
        # Docusaurus gives an h1 no id: a passage under the title links to the page itself.
        linked = f"{chapter.url}#{anchor}" if levels[chunk.section_id] > 1 else chapter.url
        assert chunk.url == linked
    assert {c.section_id for c in chunks} <= {s.id for s in chapter.sections}


def test_tiny_parent_merges_with_child_and_no_heading_only_chunks() -> None:
    body = (
        "# Title\n\n## Setup\n\nBefore you begin:\n\n### Installing\n\n"
        + LONG_PARAGRAPH
        + "\n\n## Empty Heading\n\n## Next\n\n"
        + LONG_PARAGRAPH
        + "\n"
    )
    chunks = chunk_chapter(chapter_of(body))
    first = chunks[0]
    assert first.section_id.endswith("#setup")
    assert first.heading_path == ["Title", "Setup"]
    assert "Before you begin:\n\n### Installing\n\nRobots sense" in first.text
    for chunk in chunks:
        body_text = chunk.text.split("\n\n", 1)[1]
        assert not re.fullmatch(r"(#+ .*\n*)+", body_text)


def test_oversized_code_and_prose_are_split_at_line_boundaries() -> None:
    code_lines = [f"call_{i}(argument_{i})" for i in range(300)]
    body = (
        "# T\n\nRun this:\n\n```js\n" + "\n".join(code_lines) + "\n```\n\n" + "word " * 900 + "\n"
    )
    chunks = chunk_chapter(chapter_of(body), target_chars=600, max_chars=1000)
    assert all(len(c.text) <= 1000 for c in chunks)
    seen = [line for c in chunks for line in c.text.split("\n") if line.startswith("call_")]
    assert seen == code_lines  # every line once, in order, never cut mid-line
    assert "Run this:\n\n```js\ncall_0" in chunks[0].text  # the intro stays with the code
    assert sum(c.text.count("word") for c in chunks) == 900


def test_chunk_ids_are_deterministic_uuids() -> None:
    chapter = parse_chapter(structured_book(), "a/b.md")
    first = chunk_chapter(chapter)
    again = chunk_chapter(parse_chapter(structured_book(), "a/b.md"))
    assert [c.id for c in first] == [c.id for c in again]
    assert len({c.id for c in first}) == len(first)
    assert all(uuid.UUID(c.id).version == 5 for c in first)
    edited = chunk_chapter(parse_chapter(structured_book().replace("Opening", "Closing"), "a/b.md"))
    assert edited[0].id != first[0].id
    assert edited[1].id == first[1].id


def test_chunk_is_a_serialisable_struct() -> None:
    chunk = chunk_chapter(chapter_of("# T\n\nText here.\n"))[0]
    assert isinstance(chunk, Chunk)
    with pytest.raises(AttributeError):
        chunk.text = "x"  # type: ignore[misc]


# --- split_sections_for_rewrite ---------------------------------------------------------------

REWRITE_INPUTS = [
    SAMPLE,
    structured_book(),
    "no trailing newline\n\n## H\n\ntext",
    "# A\r\n\r\ntext\r\n\r\n## B\r\n\r\nmore\r\n",
    "",
    "\n\n",
    "---\ntitle: x\n---\n\n## A\n\n---\n\n## B\n",
]


@pytest.mark.parametrize("text", REWRITE_INPUTS)
@pytest.mark.parametrize("max_chars", [1, 200, 6000])
def test_rewrite_pieces_concatenate_to_input(text: str, max_chars: int) -> None:
    assert "".join(split_sections_for_rewrite(text, max_chars)) == text


def test_rewrite_cuts_at_headings_unless_a_section_is_too_big() -> None:
    text = structured_book()
    limit = 3000
    pieces = split_sections_for_rewrite(text, limit)
    assert len(pieces) > 5
    section_spans: list[tuple[int, int]] = []
    offset = 0
    for section in chapter_of(text).sections:
        section_spans.append((offset, offset + len(section.markdown)))
        offset += len(section.markdown)
    offset = 0
    for piece in pieces:
        if offset not in {start for start, _ in section_spans}:
            start, end = next(span for span in section_spans if span[0] < offset < span[1])
            assert end - start > limit  # only an oversized section is cut between its blocks
        if len(piece) > limit:
            blocks = [b for b in parse_blocks(piece)[1] if b.kind != "blank"]
            assert len(blocks) == 1  # only one block that cannot be cut stands over the limit
        assert fences_balanced(piece)
        offset += len(piece)


def test_rewrite_never_cuts_inside_blocks() -> None:
    body = (
        "# T\n\n```python\n" + "# comment line\n" * 40 + "```\n\n"
        ":::note\n\n## heading in admonition\n\n" + "x\n" * 40 + ":::\n\n"
        '<Tabs>\n<TabItem value="a">\n\n## heading in tab\n\n'
        + "y\n"
        * 40
        + "</TabItem>\n</Tabs>\n\n"
        "## After\n\nend\n"
    )
    pieces = split_sections_for_rewrite(body, 50)
    assert "".join(pieces) == body
    assert any(p.startswith("```python") and p.rstrip().endswith("```") for p in pieces)
    assert any(p.startswith(":::note") and p.rstrip().endswith(":::") for p in pieces)
    assert any(p.startswith("<Tabs>") and p.rstrip().endswith("</Tabs>") for p in pieces)
    assert pieces[-1] == "## After\n\nend\n"


def test_rewrite_keeps_sections_whole_when_they_fit() -> None:
    body = "# A\n\none\n\n## B\n\ntwo\n\n## C\n\nthree\n"
    assert split_sections_for_rewrite(body, 6000) == [body]
    assert split_sections_for_rewrite(body, 15) == [
        "# A\n\none\n\n",
        "## B\n\ntwo\n\n",
        "## C\n\nthree\n",
    ]


# --- load_book --------------------------------------------------------------------------------


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_load_book_orders_by_categories_positions_and_names(tmp_path: Path) -> None:
    write(tmp_path / "intro.md", "---\nsidebar_position: 1\n---\n# Intro\n")
    write(tmp_path / "zz-appendix.md", "# Appendix\n")
    write(tmp_path / "10-late.md", "---\nsidebar_position: 9\n---\n# Late\n")
    write(tmp_path / "basics" / "_category_.json", json.dumps({"label": "Basics", "position": 2}))
    write(tmp_path / "basics" / "02-second.md", "# Second\n")
    write(tmp_path / "basics" / "01-first.md", "# First\n")
    write(tmp_path / "basics" / "README.md", "# Basics overview\n")
    write(
        tmp_path / "03-advanced" / "_category_.json",
        json.dumps({"position": 3, "link": {"type": "doc", "id": "advanced/overview"}}),
    )
    write(tmp_path / "03-advanced" / "lesson.md", "---\nsidebar_position: 1\n---\n# Lesson\n")
    write(tmp_path / "03-advanced" / "overview.md", "---\nsidebar_position: 5\n---\n# Overview\n")
    write(tmp_path / "03-advanced" / "deep" / "x.md", "# Deep\n")
    write(
        tmp_path / "generated" / "_category_.json",
        json.dumps({"position": 4, "link": {"type": "generated-index"}}),
    )
    write(tmp_path / "generated" / "index.md", "---\nsidebar_position: 2\n---\n# Index doc\n")
    write(tmp_path / "generated" / "a.md", "---\nsidebar_position: 1\n---\n# A\n")
    write(tmp_path / "_partial.mdx", "# Partial, never a page\n")
    write(tmp_path / "_drafts" / "draft.md", "# Draft\n")
    write(tmp_path / "empty" / "_category_.json", json.dumps({"position": 0}))
    write(tmp_path / "basics" / "diagram.png", "not markdown")

    chapters = load_book(tmp_path)
    assert [c.title for c in chapters] == [
        "Intro",
        "Basics overview",
        "First",
        "Second",
        "Overview",
        "Lesson",
        "Deep",
        "A",
        "Index doc",
        "Late",
        "Appendix",
    ]
    assert [c.position for c in chapters] == list(range(len(chapters)))
    urls = {c.source_path: c.url for c in chapters}
    assert urls["basics/README.md"] == "/docs/basics/"
    assert urls["basics/01-first.md"] == "/docs/basics/first"
    assert urls["03-advanced/deep/x.md"] == "/docs/advanced/deep/x"
    assert urls["generated/index.md"] == "/docs/generated/"


def test_load_book_rejects_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "bad.md").write_bytes(b"# Bad\n\n\xff\xfe not utf-8\n")
    with pytest.raises(BookError, match=r"bad\.md"):
        load_book(tmp_path)
    with pytest.raises(BookError, match="not a folder"):
        load_book(tmp_path / "missing")


def test_load_book_rejects_duplicate_ids_and_skips_drafts(tmp_path: Path) -> None:
    write(tmp_path / "a.md", "---\ndraft: true\n---\n# Not published\n")
    write(tmp_path / "b.md", "# Published\n")
    assert [c.title for c in load_book(tmp_path)] == ["Published"]
    write(tmp_path / "c.md", "---\nid: b\n---\n# Clash\n")
    with pytest.raises(BookError, match="both have the id 'b'"):
        load_book(tmp_path)


def test_load_book_rejects_broken_category_file(tmp_path: Path) -> None:
    write(tmp_path / "sub" / "doc.md", "# Doc\n")
    write(tmp_path / "sub" / "_category_.json", "{not json")
    with pytest.raises(BookError, match=r"_category_\.json"):
        load_book(tmp_path)


def test_odd_markup_is_tolerated() -> None:
    body = (
        '# T\n\n:::note never closed\n\ntext\n\n<Unclosed prop="x">\n\nmore\n\n'
        "</Stray>\n\n```python\nunterminated = True\n"
    )
    chapter = chapter_of(body)
    chunks = chunk_chapter(chapter)
    text = "\n".join(c.text for c in chunks)
    for kept in ("text", "more", "unterminated = True"):
        assert kept in text
    assert all(fences_balanced(c.text) for c in chunks)


# --- the real books ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not CORPORA.is_dir(), reason="shared corpora not present")
@pytest.mark.parametrize("book", ["book-a", "book-b"])
def test_real_books_parse_and_chunk_cleanly(book: str) -> None:
    root = CORPORA / book
    doc_files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix in (".md", ".mdx") and not any(part.startswith("_") for part in p.parts)
    )
    chapters = load_book(root)
    assert sorted(c.source_path for c in chapters) == doc_files
    assert len({c.id for c in chapters}) == len(chapters)
    assert len({c.url for c in chapters}) == len(chapters)
    chunk_ids: set[str] = set()
    for chapter in chapters:
        assert chapter.title
        assert chapter.sections
        assert "".join(s.markdown for s in chapter.sections) == chapter.markdown
        assert len({s.id for s in chapter.sections}) == len(chapter.sections)
        assert "".join(split_sections_for_rewrite(chapter.markdown)) == chapter.markdown
        chunks = chunk_chapter(chapter)
        assert chunks
        for chunk in chunks:
            assert chunk.text.split("\n\n", 1)[1].strip()
            assert len(chunk.text) <= 2000
            assert fences_balanced(chunk.text), chunk.id
            assert chunk.id not in chunk_ids
            chunk_ids.add(chunk.id)
