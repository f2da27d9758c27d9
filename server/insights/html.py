"""The insights report as one self-contained HTML file: inline CSS and inline SVG charts, no
scripts, fonts, images or styles from anywhere, so an author can open it from disk, offline.
Every piece of text from the data is escaped."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from urllib.parse import urljoin

from protocol.api import InsightsReport, SourceRef, TopicGroup

MAX_CHART_ROWS = 15
LABEL_CHARS = 70

_CSS = """
:root{--fg:#1c1e21;--muted:#5b626d;--line:#d5dae1;--soft:#f2f4f7;--accent:#2e6bd1;--gap:#c2410c;--down:#b42318;--up:#15803d}
*{box-sizing:border-box}body{margin:0;color:var(--fg);font:15px/1.5 system-ui,"Segoe UI",Roboto,sans-serif;background:#fff}
main{max-width:1100px;margin:0 auto;padding:24px}h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:32px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
.muted{color:var(--muted)}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{flex:1 1 100px;border:1px solid var(--line);border-radius:10px;padding:10px 14px}.card b{display:block;font-size:24px}
table{border-collapse:collapse;width:100%;font-size:14px}th,td{border-bottom:1px solid var(--line);padding:6px 8px;text-align:left;vertical-align:top}
th{background:var(--soft)}td.n{text-align:right;font-variant-numeric:tabular-nums}
details{border:1px solid var(--line);border-radius:8px;padding:8px 12px;margin:8px 0}summary{cursor:pointer;font-weight:600}
.answer{white-space:pre-wrap;background:var(--soft);padding:8px 10px;border-radius:6px;font-size:14px}
.comment{border-left:3px solid var(--down);padding-left:8px;margin:6px 0}
svg{max-width:100%;height:auto;font:12px system-ui,sans-serif}svg .label{fill:var(--fg)}svg .value{fill:var(--muted)}
svg .bar{fill:#c7d7f4}svg .bar-gap{fill:var(--gap)}svg .bar-down{fill:var(--down)}svg .axis{stroke:var(--line)}svg .threshold{stroke:var(--gap);stroke-width:2;stroke-dasharray:4 3}
ul.examples{margin:4px 0 0;padding-left:18px;color:var(--muted)}.key span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px;border-radius:2px}
"""


def render_html(report: InsightsReport, *, book_url: str | None = None) -> str:
    """The report as a standalone HTML document; `book_url` makes book references links."""
    t = report.totals
    share = f"{t.unanswerable / t.questions:.0%}" if t.questions else "—"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Where the book falls short</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<h1>Where the book falls short</h1>",
        f'<p class="muted">Questions asked from {_date(report.since)} to {_date(report.until)}.'
        f" Similar questions are grouped; a group's questions are shown only when at least"
        f" {report.settings.min_readers} different readers asked in it, and never who asked."
        f" A question is <em>unanswerable</em> when no passage of the book came closer than"
        f" {report.settings.unanswerable_similarity:.2f} (cosine similarity).</p>",
        '<div class="cards">',
        _card("questions", t.questions),
        _card("readers", t.readers),
        _card(f"unanswerable ({share})", t.unanswerable),
        _card("answer says not covered", t.not_covered),
        _card("rated down", t.rated_down),
        _card("rated up", t.rated_up),
        _card("topics", t.groups),
        _card(f"topics hidden (fewer than {report.settings.min_readers} readers)", t.hidden_groups),
        "</div>",
        "<h2>Topics where readers hit a gap</h2>",
    ]
    if report.gaps:
        parts.append(_gap_chart(report.gaps[:MAX_CHART_ROWS]))
        parts.append(_topic_table(report.gaps, book_url))
    else:
        parts.append('<p class="muted">None in this period.</p>')
    parts.append("<h2>Questions per chapter</h2>")
    parts.append(
        '<p class="muted">Questions the book could answer, by the chapter of their best source.'
        f" Highlights: passages readers selected to ask about.</p>{_chapter_chart(report)}"
    )
    parts.append(_chapter_table(report, book_url))
    parts.append("<h2>How close the book came</h2>")
    parts.append(_histogram(report))
    parts.append("<h2>Answers rated down</h2>")
    if report.rated_down:
        for r in report.rated_down:
            comment = f'<p class="comment">{escape(r.comment)}</p>' if r.comment else ""
            sources = "".join(f"<li>{_place(s, book_url)}</li>" for s in r.sources)
            sim = f"{r.best_similarity:.2f}" if r.best_similarity is not None else "—"
            parts.append(
                f"<details><summary>{escape(r.question)}</summary>{comment}"
                f'<p class="muted">Topic {r.group} · best similarity {sim}</p>'
                f'<div class="answer">{escape(r.answer)}</div>'
                f"<p>Sources:</p><ol>{sources}</ol></details>"
            )
    else:
        parts.append('<p class="muted">None shown in this period.</p>')
    parts.append("<h2>Passages most often highlighted</h2>")
    if report.highlights:
        rows = "".join(
            f"<tr><td>{escape(h.chapter or '—')}</td><td>{escape(h.text)}</td>"
            f'<td class="n">{h.highlights}</td><td class="n">{h.readers}</td></tr>'
            for h in report.highlights
        )
        parts.append(
            "<table><tr><th>chapter</th><th>passage</th><th>highlights</th><th>readers</th></tr>"
            f"{rows}</table>"
        )
    else:
        parts.append('<p class="muted">None shown in this period.</p>')
    parts.append("<h2>All topics</h2>")
    parts.append(_topic_table(report.topics, book_url))
    parts.append(
        f'<p class="muted">Generated {escape(report.generated_at)} by textbook-chat insights;'
        f" questions grouped at similarity {report.settings.group_similarity:.2f}.</p>"
    )
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _card(label: str, value: int) -> str:
    return f'<div class="card"><b>{value}</b><span class="muted">{escape(label)}</span></div>'


def _date(stamp: str) -> str:
    return escape(stamp[:10])


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _place(ref: SourceRef | None, book_url: str | None) -> str:
    if ref is None:
        return "—"
    where = escape(" › ".join(p for p in (ref.title, ref.section) if p))
    if ref.url and book_url:
        href = urljoin(book_url.rstrip("/") + "/", ref.url.lstrip("/"))
        if href.startswith(("https://", "http://")):
            return f'<a href="{escape(href)}">{where}</a>'
    return f"{where} <code>{escape(ref.url)}</code>" if ref.url else where


def _bars(
    title: str,
    rows: Sequence[tuple[str, list[tuple[float, str]], str]],
    *,
    label_width: int = 400,
    bar_width: int = 480,
    note_width: int = 200,
) -> str:
    """A horizontal bar chart: each row a label, stacked segments (value, css class), a note."""
    height = 26
    top = 8
    total = max((sum(v for v, _ in segs) for _, segs, _ in rows), default=0) or 1
    scale = bar_width / total
    out = [
        f'<svg role="img" aria-label="{escape(title)}" viewBox="0 0 {label_width + bar_width + note_width}'
        f' {top + height * len(rows) + 8}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line class="axis" x1="{label_width}" y1="0" x2="{label_width}"'
        f' y2="{top + height * len(rows)}"/>',
    ]
    for n, (label, segments, note) in enumerate(rows):
        y = top + n * height
        out.append(
            f'<text class="label" x="{label_width - 8}" y="{y + 16}" text-anchor="end">'
            f"{escape(_short(label, 62))}<title>{escape(label)}</title></text>"
        )
        x = float(label_width)
        for value, css in segments:
            w = value * scale
            if w > 0:
                out.append(
                    f'<rect class="{css}" x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{height - 8}"/>'
                )
            x += w
        out.append(f'<text class="value" x="{x + 6:.1f}" y="{y + 16}">{escape(note)}</text>')
    out.append("</svg>")
    return "".join(out)


def _gap_chart(gaps: Sequence[TopicGroup]) -> str:
    rows = [
        (
            g.label,
            [(float(g.failing), "bar-gap"), (float(g.questions - g.failing), "bar")],
            f"{g.gap_readers} of {g.readers} readers",
        )
        for g in gaps
    ]
    key = (
        '<p class="muted key"><span style="background:#c2410c"></span>questions the book could not'
        ' answer or readers rated down<span style="background:#c7d7f4"></span>the others</p>'
    )
    return key + _bars("Topics where readers hit a gap", rows)


def _chapter_chart(report: InsightsReport) -> str:
    rows = [
        (
            c.title,
            [(float(c.questions - c.rated_down), "bar"), (float(c.rated_down), "bar-down")],
            f"{c.questions} questions · {c.highlights} highlights",
        )
        for c in report.chapters
    ]
    if not rows:
        return '<p class="muted">No chapters.</p>'
    key = (
        '<p class="muted key"><span style="background:#c7d7f4"></span>questions'
        '<span style="background:#b42318"></span>of them rated down</p>'
    )
    return key + _bars("Questions per chapter", rows)


def _histogram(report: InsightsReport) -> str:
    bins = report.similarity
    if not bins:
        return ""
    w, h, left, bottom = 640, 200, 40, 30
    most = max((b.questions for b in bins), default=0) or 1
    bw = w / len(bins)
    threshold = report.settings.unanswerable_similarity
    out = [
        f'<svg role="img" aria-label="Questions by best similarity to the book" viewBox="0 0'
        f' {w + left + 20} {h + bottom + 20}" xmlns="http://www.w3.org/2000/svg">',
        "<title>Questions by best similarity to the book</title>",
        f'<line class="axis" x1="{left}" y1="{h + 10}" x2="{left + w}" y2="{h + 10}"/>',
    ]
    for n, b in enumerate(bins):
        bh = b.questions / most * h
        css = "bar-gap" if b.high <= threshold + 1e-9 else "bar"
        x = left + n * bw
        out.append(
            f'<rect class="{css}" x="{x + 1:.1f}" y="{h + 10 - bh:.1f}" width="{bw - 2:.1f}"'
            f' height="{bh:.1f}"><title>{b.low:.2f}–{b.high:.2f}: {b.questions}</title></rect>'
        )
        if n % 4 == 0:
            out.append(f'<text class="value" x="{x:.1f}" y="{h + 26}">{b.low:.1f}</text>')
    tx = left + threshold * w
    out.append(f'<line class="threshold" x1="{tx:.1f}" y1="0" x2="{tx:.1f}" y2="{h + 10}"/>')
    out.append(
        f'<text class="value" x="{tx + 4:.1f}" y="12">threshold {threshold:.2f}</text></svg>'
    )
    return (
        '<p class="muted">Each question by the cosine similarity of the closest passage of the'
        " book; left of the dashed line the book had nothing close.</p>" + "".join(out)
    )


def _topic_table(groups: Sequence[TopicGroup], book_url: str | None) -> str:
    if not groups:
        return '<p class="muted">None shown in this period.</p>'
    rows = []
    for g in groups:
        examples = "".join(f"<li>{escape(e)}</li>" for e in g.examples)
        sim = f"{g.mean_similarity:.2f}" if g.mean_similarity is not None else "—"
        rows.append(
            f'<tr><td class="n">{g.id}</td><td>{escape(g.label)}'
            f"{f'<ul class=examples>{examples}</ul>' if examples else ''}</td>"
            f'<td class="n">{g.readers}</td><td class="n">{g.questions}</td>'
            f'<td class="n">{g.unanswerable}</td><td class="n">{g.not_covered}</td>'
            f'<td class="n">{g.rated_down}</td><td class="n">{sim}</td>'
            f"<td>{_place(g.nearest, book_url)}</td></tr>"
        )
    return (
        "<table><tr><th>#</th><th>topic (most typical question, then others)</th><th>readers</th>"
        "<th>questions</th><th>unanswerable</th><th>not covered</th><th>rated down</th>"
        f"<th>mean similarity</th><th>closest passage</th></tr>{''.join(rows)}</table>"
    )


def _chapter_table(report: InsightsReport, book_url: str | None) -> str:
    rows = []
    for c in report.chapters:
        sections = ", ".join(
            f"{escape(s.section or c.title)} ({s.questions})" for s in c.sections[:6]
        )
        title = _place(SourceRef(chapter=c.chapter, title=c.title, url=c.url), book_url)
        rows.append(
            f'<tr><td>{title}</td><td class="n">{c.questions}</td><td class="n">{c.readers}</td>'
            f'<td class="n">{c.rated_up}</td><td class="n">{c.rated_down}</td>'
            f'<td class="n">{c.highlights}</td><td>{sections or "—"}</td></tr>'
        )
    return (
        "<table><tr><th>chapter</th><th>questions</th><th>readers</th><th>rated up</th>"
        f"<th>rated down</th><th>highlights</th><th>sections most asked about</th></tr>{''.join(rows)}</table>"
    )
