"""Docusaurus MDX syntax at block level: a line-indexed block tree, front matter and heading ids."""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

BlockKind = Literal[
    "blank",
    "heading",
    "code",
    "math",
    "admonition",
    "jsx",
    "comment",
    "esm",
    "table",
    "list",
    "quote",
    "hr",
    "paragraph",
    "frontmatter",
    "marker",
]

FENCE_OPEN = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
FENCE_CLOSE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*$")
HEADING = re.compile(r"^ {0,3}(?P<hashes>#{1,6})(?:[ \t]+(?P<text>.*?))?(?:[ \t]+#+)?[ \t]*$")
ADMONITION_OPEN = re.compile(r"^[ \t]*(?P<colons>:{3,})(?P<kind>[A-Za-z][\w-]*)(?P<rest>.*)$")
ADMONITION_CLOSE = re.compile(r"^[ \t]*:{3,}[ \t]*$")
HR = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
LIST_ITEM = re.compile(r"^(?P<indent>[ \t]*)(?:[-*+]|\d{1,9}[.)])(?:[ \t]+\S|[ \t]*$)")
TABLE_DELIMITER = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
ESM = re.compile(
    r"^(?:import[ \t]*(?:['\"{*]|[\w$]+[ \t]*,|[\w$]+[ \t]+from[ \t])"
    r"|export[ \t]+(?:const|let|var|function|async|class|default|\{|\*))"
)
TAG_START = re.compile(r"^ {0,3}<(?P<close>/)?(?P<name>[A-Za-z][\w.:-]*)")
JSX_TOKEN = re.compile(r"<(?P<close>/)?(?P<name>[A-Za-z][\w.:-]*)(?=[\s>/]|$)")
INLINE_OPAQUE = re.compile(r"(`+).+?\1|<!--.*?-->")  # code spans and comments hold no markup
MAX_TAG_LINES = 40  # an opening JSX tag longer than this is not looked for
CUSTOM_ID = re.compile(r"[ \t]*\{#(?P<id>[^}]+)\}[ \t]*$")

# Lowercase tag names that Docusaurus authors use as block wrappers; other lowercase `<word>`
# at a line start is more likely prose (e.g. a placeholder) than markup.
HTML_BLOCK_TAGS = frozenset(
    re.findall(
        r"\w+",
        "details summary div span p br hr img a b i u em strong kbd sup sub center figure "
        "figcaption iframe video audio source picture section aside table thead tbody tr td th "
        "ul ol li dl dt dd pre code small mark abbr",
    )
)


def split_lines(text: str) -> list[str]:
    """Split into lines that keep their endings, so joining them gives back the exact text."""
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)


def is_component_name(name: str) -> bool:
    """True for a JSX component (`Tabs`, `Foo.Bar`) or a known HTML tag, not for `<DISTRO>`."""
    if name.lower() in HTML_BLOCK_TAGS and name.islower():
        return True
    return name[0].isupper() and (any(c.islower() for c in name) or "." in name)


@dataclass(frozen=True, slots=True)
class Block:
    """A run of lines [start, end); containers also hold the blocks of their inner lines."""

    kind: BlockKind
    start: int
    end: int
    inner_start: int = 0
    inner_end: int = 0
    children: tuple[Block, ...] = ()


def _blank_out(match: re.Match[str]) -> str:
    return " " * len(match.group(0))


def _tag_end(text: str, pos: int) -> tuple[int, bool] | None:
    """Index just past the `>` of the tag opening at `pos`, and whether it self-closes."""
    quote = ""
    depth = 0
    i = pos + 1
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth = max(0, depth - 1)
        elif c == ">" and depth == 0:
            return i + 1, text[:i].rstrip().endswith("/")
        i += 1
    return None


class BlockParser:
    """Parses lines into a block tree; code fences are opaque everywhere."""

    def __init__(self, lines: list[str]) -> None:
        self.raw = lines
        self.lines = [line.rstrip("\r\n") for line in lines]
        self._closing: dict[tuple[int, int], int] | None = None

    def fence_end(self, i: int) -> int:
        """Line index after the fence opened at `i` (end of document when it never closes)."""
        m = FENCE_OPEN.match(self.lines[i])
        assert m is not None
        fence = m.group("fence")
        for j in range(i + 1, len(self.lines)):
            c = FENCE_CLOSE.match(self.lines[j])
            if c and c.group("fence")[0] == fence[0] and len(c.group("fence")) >= len(fence):
                return j + 1
        return len(self.lines)

    def is_fence_open(self, i: int) -> bool:
        """True if line i opens a code fence (a backtick fence's info may not hold a backtick)."""
        m = FENCE_OPEN.match(self.lines[i])
        return m is not None and not (m.group("fence")[0] == "`" and "`" in m.group("info"))

    def _scan_until(self, i: int, end: int, pattern: str) -> int:
        """Index after the line containing `pattern` at or after line i (or `end`)."""
        for j in range(i, end):
            if pattern in self.lines[j]:
                return j + 1
        return end

    def _closers(self) -> dict[tuple[int, int], int]:
        """Closing line of each admonition and JSX element, keyed by (line, column) of its opener.

        One pass with a stack per kind of opener keeps odd markup (many unclosed openers) linear.
        """
        if self._closing is not None:
            return self._closing
        closing: dict[tuple[int, int], int] = {}
        stacks: dict[str, list[tuple[int, int]]] = {}
        j = 0
        while j < len(self.lines):
            if self.is_fence_open(j):
                fence_end = self.fence_end(j)
                # As in remark-directive (Docusaurus's admonitions): an open admonition's `:::`
                # closes it even inside a code fence, and the fence ends with it.
                close = next(
                    (k for k in range(j + 1, fence_end) if ADMONITION_CLOSE.match(self.lines[k])),
                    None,
                )
                if close is not None and stacks.get(":::"):
                    closing[stacks[":::"].pop()] = close
                    j = close + 1
                else:
                    j = fence_end
                continue
            line = self.lines[j]
            if ADMONITION_OPEN.match(line):
                stacks.setdefault(":::", []).append((j, 0))
            elif ADMONITION_CLOSE.match(line) and stacks.get(":::"):
                closing[stacks[":::"].pop()] = j
            for token in JSX_TOKEN.finditer(INLINE_OPAQUE.sub(_blank_out, line)):
                name = token.group("name")
                if not is_component_name(name):
                    continue
                if token.group("close"):
                    if stacks.get(name):
                        closing[stacks[name].pop()] = j
                    continue
                window = "\n".join(self.lines[j : j + MAX_TAG_LINES])
                opened = _tag_end(window, token.start())
                if opened is not None and not opened[1]:
                    stacks.setdefault(name, []).append((j, token.start()))
            j += 1
        self._closing = closing
        return closing

    def _jsx_extent(self, i: int, end: int) -> tuple[int, int, int] | None:
        """(inner_start, inner_end, block_end) of the JSX element opening at line i.

        A self-closing element, or one closed on its opening tag's last line, has no inner lines.
        """
        column = self.lines[i].index("<")
        window = "\n".join(self.lines[i : min(end, i + MAX_TAG_LINES)])
        opened = _tag_end(window, column)
        if opened is None:
            return None
        stop, self_closing = opened
        open_last = i + window.count("\n", 0, stop)
        close = self._closers().get((i, column))
        if self_closing or close == open_last:
            return open_last + 1, open_last + 1, open_last + 1
        if close is None or close >= end:
            return None
        return open_last + 1, close, close + 1

    def _starts_block(self, i: int) -> bool:
        """True if line i cannot continue a paragraph."""
        line = self.lines[i]
        tag = TAG_START.match(line)
        return bool(
            not line.strip()
            or HEADING.match(line)
            or self.is_fence_open(i)
            or ADMONITION_OPEN.match(line)
            or ADMONITION_CLOSE.match(line)
            or HR.match(line)
            or line.lstrip().startswith(("<!--", "{/*", ">"))
            or (tag and is_component_name(tag.group("name")))
        )

    def parse(
        self, start: int = 0, end: int | None = None, top: bool = True, front_matter: bool = False
    ) -> list[Block]:
        """Blocks covering lines [start, end) in order, with no gaps."""
        end = len(self.lines) if end is None else end
        blocks: list[Block] = []
        i = start
        while i < end:
            block = self._block_at(i, end, front_matter and i == 0, top)
            blocks.append(block)
            i = block.end
        return blocks

    def _block_at(self, i: int, end: int, at_top: bool, top: bool) -> Block:
        line = self.lines[i]
        stripped = line.strip()
        if at_top and stripped == "---":
            close = next((j for j in range(i + 1, end) if self.lines[j].strip() == "---"), None)
            if close is not None:
                return Block("frontmatter", i, close + 1)
        if not stripped:
            j = i
            while j < end and not self.lines[j].strip():
                j += 1
            return Block("blank", i, j)
        if self.is_fence_open(i):
            return Block("code", i, min(self.fence_end(i), end))
        if stripped == "$$":
            close = next((j for j in range(i + 1, end) if self.lines[j].strip() == "$$"), None)
            if close is not None:
                return Block("math", i, close + 1)
        if HEADING.match(line):
            return Block("heading", i, i + 1)
        if stripped.startswith("<!--"):
            return Block("comment", i, self._scan_until(i, end, "-->"))
        if stripped.startswith("{/*"):
            return Block("comment", i, self._scan_until(i, end, "*/}"))
        if ADMONITION_OPEN.match(line):
            close = self._closers().get((i, 0))
            if close is None or close >= end:
                return Block("marker", i, i + 1)
            return Block(
                "admonition", i, close + 1, i + 1, close, tuple(self.parse(i + 1, close, False))
            )
        if ADMONITION_CLOSE.match(line):
            return Block("marker", i, i + 1)
        tag = TAG_START.match(line)
        if tag and is_component_name(tag.group("name")) and not tag.group("close"):
            extent = self._jsx_extent(i, end)
            if extent is not None:
                inner_start, inner_end, block_end = extent
                children = tuple(self.parse(inner_start, inner_end, False))
                return Block("jsx", i, block_end, inner_start, inner_end, children)
            return Block("jsx", i, i + 1)
        if tag and is_component_name(tag.group("name")):
            return Block("jsx", i, i + 1)
        if top and ESM.match(line):
            j = i + 1
            while j < end and self.lines[j].strip():
                j += 1
            return Block("esm", i, j)
        if HR.match(line):
            return Block("hr", i, i + 1)
        if stripped.startswith(">"):
            j = i + 1
            while j < end and (self.lines[j].lstrip().startswith(">") or not self._starts_block(j)):
                j += 1
            return Block("quote", i, j)
        if stripped.startswith("|") or (
            "|" in line and i + 1 < end and TABLE_DELIMITER.match(self.lines[i + 1])
        ):
            j = i + 1
            while j < end and "|" in self.lines[j] and self.lines[j].strip():
                j += 1
            return Block("table", i, j)
        if LIST_ITEM.match(line):
            return Block("list", i, self._list_end(i, end))
        return Block("paragraph", i, self._paragraph_end(i, end))

    def _paragraph_end(self, i: int, end: int) -> int:
        j = i + 1
        while j < end and not self._starts_block(j) and not LIST_ITEM.match(self.lines[j]):
            j += 1
        return j

    def _list_end(self, i: int, end: int) -> int:
        """A list runs on through indented lines, lazy text, and blank gaps before more items."""
        j = i
        while j < end:
            line = self.lines[j]
            if self.is_fence_open(j):
                if not line.startswith((" ", "\t")) and j > i:
                    return j
                j = min(self.fence_end(j), end)
                continue
            if not line.strip():
                k = j
                while k < end and not self.lines[k].strip():
                    k += 1
                if k < end and (
                    self.lines[k].startswith((" ", "\t")) or LIST_ITEM.match(self.lines[k])
                ):
                    j = k
                    continue
                return j
            indented = line.startswith(("  ", "\t"))
            if j > i and not indented and not LIST_ITEM.match(line) and self._starts_block(j):
                return j
            j += 1
        return end


def parse_blocks(text: str, *, front_matter: bool = True) -> tuple[BlockParser, list[Block]]:
    """Top-level blocks of a whole document; a leading `---` block is front matter if allowed."""
    parser = BlockParser(split_lines(text))
    return parser, parser.parse(top=True, front_matter=front_matter)


def walk(blocks: list[Block] | tuple[Block, ...]) -> list[Block]:
    """Every block in document order, containers before their children."""
    out: list[Block] = []
    for block in blocks:
        out.append(block)
        out.extend(walk(block.children))
    return out


def heading_parts(line: str) -> tuple[int, str, str | None]:
    """(level, markdown text, custom id) of an ATX heading line."""
    m = HEADING.match(line.rstrip("\r\n"))
    assert m is not None
    text = (m.group("text") or "").strip()
    custom = CUSTOM_ID.search(text)
    if custom:
        text = text[: custom.start()].rstrip()
    return len(m.group("hashes")), text, custom.group("id") if custom else None


def inline_text(markdown: str) -> str:
    """Visible text of inline markdown (what Docusaurus slugs), code spans kept verbatim."""
    pieces = re.split(r"(`+)(.+?)\1", markdown)
    out: list[str] = []
    for n, piece in enumerate(pieces):
        if n % 3 == 2:
            out.append(piece.strip() if piece.strip() else piece)
        elif n % 3 == 0:
            text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", piece)
            text = re.sub(r"\[([^\]]*)\](?:\([^)]*\)|\[[^\]]*\])", r"\1", text)
            text = re.sub(r"<(https?://[^>]+)>", r"\1", text)
            text = re.sub(r"</?[A-Za-z][\w.:-]*(?:\s[^<>]*)?/?>", "", text)
            text = re.sub(r"\*+|~~|(?<!\w)_+|_+(?!\w)", "", text)
            text = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text)
            out.append(html.unescape(text))
    return "".join(out)


def github_slug(text: str) -> str:
    """github-slugger's slug: lowercase, drop punctuation/symbols, spaces become dashes."""
    kept = []
    for ch in text.lower():
        category = unicodedata.category(ch)
        if ch in " -" or category[0] in "LM" or category in ("Nd", "Nl", "Pc"):
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


class Slugger:
    """Unique heading anchors within one document, numbered like github-slugger."""

    def __init__(self) -> None:
        self.occurrences: dict[str, int] = {}

    def slug(self, text: str) -> str:
        """The next unique slug for `text`."""
        original = result = github_slug(text)
        while result in self.occurrences:
            self.occurrences[original] += 1
            result = f"{original}-{self.occurrences[original]}"
        self.occurrences[result] = 0
        return result
