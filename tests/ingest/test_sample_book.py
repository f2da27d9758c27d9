"""Sanity checks on the bundled sample book that need nothing but the files themselves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import server

SAMPLE_BOOK = Path(server.__file__).parent / "sample_book"
DOCS = SAMPLE_BOOK / "docs"

EXPECTED_FILES = {
    "01-what-is-physical-ai.md",
    "02-sensors-and-perception.mdx",
    "03-ros2-basics/_category_.json",
    "03-ros2-basics/01-nodes-and-topics.md",
    "03-ros2-basics/02-services-actions-and-qos.md",
    "04-humanoid-locomotion.md",
    "05-vision-language-action.md",
}
DOC_PATHS = sorted(p for p in EXPECTED_FILES if p.endswith((".md", ".mdx")))

FENCE = re.compile(r"^ {0,3}(?P<marker>`{3,}|~{3,})(?P<info>.*)$")
CUSTOM_ID = re.compile(r"^#{2,6} .*\{#(?P<id>[\w-]+)\}\s*$", re.MULTILINE)
RELATIVE_LINK = re.compile(r"\]\((?P<target>\.{1,2}/[^)#\s]+)(?:#(?P<anchor>[\w-]+))?\)")
WORD = re.compile(r"[A-Za-z0-9][\w'’.-]*")


def split_front_matter(text: str) -> tuple[dict[str, str], str]:
    """Return the flat `key: value` front matter and the body after it."""
    lines = text.split("\n")
    assert lines[0] == "---", "front matter must open on the first line"
    end = lines.index("---", 1)
    fields: dict[str, str] = {}
    for line in lines[1:end]:
        key, sep, value = line.partition(":")
        assert sep, f"front matter line without a colon: {line!r}"
        fields[key.strip()] = value.strip().strip("\"'")
    return fields, "\n".join(lines[end + 1 :])


def strip_code(body: str) -> str:
    """Body with fenced blocks and inline code spans removed, so only prose and markup remain."""
    prose_lines: list[str] = []
    open_marker: str | None = None
    for line in body.split("\n"):
        fence = FENCE.match(line)
        if open_marker is None and fence:
            open_marker = fence["marker"]
        elif open_marker is not None and fence and is_closing(fence, open_marker):
            open_marker = None
        elif open_marker is None:
            prose_lines.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(prose_lines)


def is_closing(fence: re.Match[str], open_marker: str) -> bool:
    """Whether a fence line closes a block opened with `open_marker` (CommonMark rules)."""
    marker = fence["marker"]
    return (
        marker[0] == open_marker[0]
        and len(marker) >= len(open_marker)
        and not fence["info"].strip()
    )


def read_doc(relative: str) -> tuple[dict[str, str], str]:
    """Front matter and body of one doc, addressed relative to the docs folder."""
    return split_front_matter((DOCS / relative).read_text(encoding="utf-8"))


def test_folder_layout_matches_the_description() -> None:
    found = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*") if p.is_file()}
    assert found == EXPECTED_FILES
    assert (SAMPLE_BOOK / "README.md").read_text(encoding="utf-8").strip()


def test_category_file_names_the_folder_and_its_position() -> None:
    category = json.loads((DOCS / "03-ros2-basics" / "_category_.json").read_text("utf-8"))
    assert category["label"] == "ROS 2 Basics"
    assert category["position"] == 3


@pytest.mark.parametrize("relative", DOC_PATHS)
def test_doc_has_complete_front_matter(relative: str) -> None:
    fields, body = read_doc(relative)
    assert fields["title"]
    assert fields["id"]
    assert fields["description"]
    assert int(fields["sidebar_position"]) >= 1
    assert body.strip()


def test_doc_ids_are_unique() -> None:
    ids = [read_doc(relative)[0]["id"] for relative in DOC_PATHS]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("relative", DOC_PATHS)
def test_code_fences_are_balanced_and_name_a_language(relative: str) -> None:
    _, body = read_doc(relative)
    open_marker: str | None = None
    opened = 0
    for number, line in enumerate(body.split("\n"), start=1):
        fence = FENCE.match(line)
        if fence is None:
            continue
        if open_marker is None:
            assert fence["info"].strip(), f"{relative}:{number}: fence without a language"
            open_marker = fence["marker"]
            opened += 1
        elif is_closing(fence, open_marker):
            open_marker = None
    assert open_marker is None, f"{relative}: a code fence is never closed"
    assert opened >= 1


@pytest.mark.parametrize("relative", DOC_PATHS)
def test_chapter_length_is_within_the_brief(relative: str) -> None:
    _, body = read_doc(relative)
    words = len(WORD.findall(body))
    assert 600 <= words <= 1200, f"{relative} has {words} words"


@pytest.mark.parametrize("relative", DOC_PATHS)
def test_relative_links_point_at_existing_docs_and_anchors(relative: str) -> None:
    _, body = read_doc(relative)
    links = list(RELATIVE_LINK.finditer(strip_code(body)))
    assert links, f"{relative} links to no other chapter"
    for link in links:
        target = (DOCS / relative).parent / link["target"]
        assert target.is_file(), f"{relative}: broken link {link['target']}"
        if link["anchor"]:
            anchors = set(CUSTOM_ID.findall(target.read_text(encoding="utf-8")))
            assert link["anchor"] in anchors, f"{relative}: missing anchor #{link['anchor']}"


def test_mdx_chapter_imports_tabs_and_keeps_prose_free_of_braces() -> None:
    _, body = read_doc("02-sensors-and-perception.mdx")
    assert "import Tabs from '@theme/Tabs';" in body
    assert "import TabItem from '@theme/TabItem';" in body
    prose = strip_code(body)
    assert prose.count("<Tabs") == prose.count("</Tabs>") == 1
    assert prose.count("<TabItem") == prose.count("</TabItem>") >= 2
    # A stray brace is a JSX expression in MDX and breaks the Docusaurus build.
    assert "{" not in prose
    assert "}" not in prose


def test_book_exercises_the_docusaurus_features_ingestion_must_handle() -> None:
    texts = [(DOCS / relative).read_text(encoding="utf-8") for relative in DOC_PATHS]
    book = "\n".join(texts)
    assert CUSTOM_ID.search(book)
    assert re.search(r"^:::tip\b", book, re.MULTILINE)
    assert re.search(r"^:::warning \S", book, re.MULTILINE)
    assert "```mermaid" in book
    assert re.search(r'^```python title="[^"]+"$', book, re.MULTILINE)
    assert re.search(r'^```bash title="[^"]+"$', book, re.MULTILINE)
    assert re.search(r'^```yaml title="[^"]+"$', book, re.MULTILINE)
    assert re.search(r"^\|---", book, re.MULTILINE)
    assert re.search(r"\$[^$\n]+\$", book)
    for text in texts:
        headings = re.findall(r"^(#+) ", strip_code(split_front_matter(text)[1]), re.MULTILINE)
        assert headings
        assert {len(h) for h in headings} <= {2, 3}
