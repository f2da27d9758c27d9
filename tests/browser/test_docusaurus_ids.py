"""Chapter ids and source links: what `ingest` derives from a docs folder is what a real Docusaurus
build of it makes (doc ids, permalinks, heading anchors), for both real books and for the rules'
edge cases (number prefixes, `id:`, `slug:`, `parse_number_prefixes`, category index docs)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from server.ingest.markdown.document import Chapter, chunk_chapter, load_book
from tests.browser.docusaurus_site import BASE_URL, DOCS_URL, SiteBuilds, doc_pages
from tests.conftest import CORPORA

pytestmark = pytest.mark.slow


def missing_anchors(out: Path, chapters: list[Chapter]) -> list[str]:
    """Source links (chunk URLs) whose anchor is not an element id on their built page."""
    missing = []
    for chapter in chapters:
        page = out / chapter.url.removeprefix(BASE_URL).strip("/") / "index.html"
        ids = set(re.findall(r'\bid="([^"]+)"', page.read_text(encoding="utf-8")))
        for chunk in chunk_chapter(chapter):
            anchor = urlsplit(chunk.url).fragment
            if anchor and anchor not in ids:
                missing.append(chunk.url)
    return missing


async def assert_ingest_agrees(root: Path, builds: SiteBuilds, locales: tuple[str, ...]) -> int:
    build = await builds.get(root, locales)
    pages = doc_pages(build.out)
    chapters = await asyncio.to_thread(load_book, root, DOCS_URL)
    # Every doc's id and permalink (with the site's base URL) as Docusaurus made them.
    assert {c.id: c.url for c in chapters} == {p.doc_id: p.path for p in pages.values()}
    # The plugin marks each doc's content with the id the widget and the reader send.
    assert all(p.chapter == p.doc_id for p in pages.values())
    # Every section a source can link to has its anchor on the built page.
    assert await asyncio.to_thread(missing_anchors, build.out, chapters) == []
    return len(chapters)


@pytest.mark.parametrize("book", ["book-a", "book-b"])
async def test_real_books_ids_urls_and_anchors_agree_with_docusaurus(
    book: str, site_builds: SiteBuilds
) -> None:
    root = CORPORA / book
    if not root.is_dir():
        pytest.skip("../shared/corpora is not here")
    # book-b is the browser tests' build (English and Urdu); only its English pages count here.
    assert await assert_ingest_agrees(root, site_builds, ("en",) if book == "book-a" else ()) > 15


# The rules' corners; each doc's expected id and URL are in comments, but the build decides.
EDGE_CASES = {
    "intro.md": "# Intro\n\nPlain.\n",  # intro, /intro
    "01-getting-started.md": "# Start\n\n## First steps\n\nText.\n",  # getting-started
    "02_underscored.md": "Text.\n",  # underscored
    "2024-01-05-release-notes.md": "Text.\n",  # a date: kept
    "1.2-upgrading.md": "Text.\n",  # a version: kept
    "03-custom.md": "---\nid: chosen-id\n---\n\nText.\n",  # chosen-id, /chosen-id
    "04-sluggy.md": "---\nslug: friendly-url\n---\n\nText.\n",  # sluggy, /friendly-url
    "05-absolute.md": "---\nslug: /top-level/page\n---\n\nText.\n",  # absolute, /top-level/page
    "06-raw.md": "---\nparse_number_prefixes: false\n---\n\nText.\n",  # 06-raw, /06-raw
    "07-.md": "Text.\n",  # no name after the prefix: kept
    "_partial.md": "Left out.\n",
    "_hidden/secret.md": "Left out.\n",
    "drafted.md": "---\ndraft: true\n---\n\nLeft out of a production build.\n",
    "01-guide/index.md": "# Guide\n\nText.\n",  # guide/index, /guide/
    "01-guide/01-first.md": "# First\n\n## A section\n\n### Deeper\n\nText.\n",  # guide/first
    "01-guide/02-up.md": "---\nslug: ../from-guide\n---\n\nText.\n",  # guide/up, /from-guide
    "01-guide/03-moved.md": "---\nid: picked\nslug: moved/\n---\n\nText.\n",  # guide/picked, /guide/moved/
    "01-guide/02-deeper/README.md": "Text.\n",  # guide/deeper/README, /guide/deeper/
    "01-guide/02-deeper/01-leaf.md": "Text.\n",  # guide/deeper/leaf
    "03-tools/03-tools.md": "Text.\n",  # tools/tools, /tools/ (named as its folder)
    "03-tools/01-hammer.md": "Text.\n",  # tools/hammer
    "05-plain/01-kept.md": "---\nparse_number_prefixes: false\n---\n\nText.\n",  # 05-plain/01-kept
    "05-plain/02-stripped.md": "Text.\n",  # plain/stripped
}


async def test_edge_cases_agree_with_docusaurus(
    site_builds: SiteBuilds, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("books") / "edge-cases"
    for name, text in EDGE_CASES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert await assert_ingest_agrees(root, site_builds, ("en",)) == len(EDGE_CASES) - 3
