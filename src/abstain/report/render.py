"""Render report sections as Markdown and as one self-contained HTML file.

A section is a stage's list of blocks (``abstain.stages`` docstring): headings, Markdown
text, tables (with the paper's numbers beside ours where the block gives them) and images.
Markdown links images where they lie (beside the report, under ``DIR/<stage>/``); HTML
embeds them as base64 ``data:`` URIs so the file can be mailed or opened anywhere. Nothing
here computes a metric: the numbers come from the blocks as given.
"""
from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
        ".svg": "image/svg+xml", ".webp": "image/webp"}
PAPER_SUFFIX = " (paper)"


@dataclass
class Section:
    """One report section: a stage's blocks (image paths relative to ``base``)."""

    name: str
    title: str
    base: Path                          # the stage directory (images are relative to it)
    link: str                           # ``base`` relative to the report's directory
    blocks: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # warnings shown under the title
    root: Path | None = None            # the run directory: only files inside it are shown

    def image(self, path: Any) -> tuple[Path | None, str]:
        """The image file of a block, or None and why not: it must be a regular file of a
        known image type inside the run directory once symbolic links are resolved (a
        report must not carry a file from elsewhere to its reader)."""
        p = self.base / str(path)
        root = (self.root or self.base).resolve()
        try:
            real = p.resolve(strict=True)
        except (OSError, RuntimeError):
            return None, "is missing"
        if real != root and root not in real.parents:
            return None, "lies outside the run directory; not shown"
        if not real.is_file() or real.suffix.lower() not in MIME:
            return None, "is not an image file; not shown"
        return real, ""


def fmt_cell(v: Any) -> str:
    """A table cell as text: floats to 4 significant digits, None as an en dash."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.4g}"
    if isinstance(v, np.generic):      # numpy scalars
        return fmt_cell(v.item())
    return str(v)


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


def merge_paper(block: dict) -> tuple[list[str], list[list[str]], list[bool]]:
    """Columns and rows of a table block as text, with a ``<col> (paper)`` column right after
    each column for which the paper gives a value (and which is not just our labels again).
    Returns (columns, rows, is_paper_column)."""
    cols = [str(c) for c in block.get("columns", [])]
    rows = [list(r) for r in block.get("rows", [])]
    paper = block.get("paper")
    if paper is not None and (len(paper) != len(rows) or any(len(p) != len(r) for p, r in zip(paper, rows))):
        raise ValueError(f"table {block.get('caption', '')!r}: 'paper' has another shape than 'rows'")
    with_paper = []
    for j in range(len(cols)):
        if paper is None:
            with_paper.append(False)
            continue
        vals = [p[j] for p in paper]
        same = all(fmt_cell(p[j]) == fmt_cell(r[j]) for p, r in zip(paper, rows))
        with_paper.append(any(not _empty(v) for v in vals) and not same)
    out_cols: list[str] = []
    is_paper: list[bool] = []
    for j, c in enumerate(cols):
        out_cols.append(c)
        is_paper.append(False)
        if with_paper[j]:
            out_cols.append(c + PAPER_SUFFIX)
            is_paper.append(True)
    out_rows = []
    for i, r in enumerate(rows):
        cells = []
        for j, v in enumerate(r):
            cells.append(fmt_cell(v))
            if with_paper[j]:
                pv = paper[i][j]
                cells.append("–" if _empty(pv) else fmt_cell(pv))
        out_rows.append(cells)
    return out_cols, out_rows, is_paper


# ----------------------------------------------------------------------------- Markdown


def _md_cell(s: str) -> str:
    return s.replace("\n", " ").replace("|", "\\|")


def md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(c) for c in columns) + " |",
             "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(title: str, intro: Sequence[str], sections: Sequence[Section],
                    appendix: Sequence[Section] = ()) -> str:
    """The whole report as Markdown (images linked relative to the report's directory)."""
    out = [f"# {title}", ""]
    for para in intro:
        out += [para, ""]
    if sections:
        out += ["## Contents", ""]
        out += [f"- [{s.title}](#{_anchor(s.name)})" for s in [*sections, *appendix]]
        out.append("")
    for s in [*sections, *appendix]:
        out += [f'<a id="{_anchor(s.name)}"></a>', "", f"## {s.title}", ""]
        for n in s.notes:
            out += [f"> **Note:** {n}", ""]
        for b in s.blocks:
            kind = b.get("kind")
            if kind == "heading":
                out += [f"### {b.get('text', '')}", ""]
            elif kind == "text":
                out += [str(b.get("text", "")), ""]
            elif kind == "table":
                try:
                    cols, rows, _ = merge_paper(b)
                except ValueError as e:
                    out += [f"> **Note:** {e}", ""]
                    continue
                if b.get("caption"):
                    out += [f"**{b['caption']}**", ""]
                out += [md_table(cols, rows), ""]
            elif kind == "image":
                rel = f"{s.link}/{b.get('path', '')}" if s.link else str(b.get("path", ""))
                real, why = s.image(b.get("path", ""))
                if real is None:
                    out += [f"> **Note:** image `{rel}` {why}", ""]
                    continue
                cap = str(b.get("caption", ""))
                alt = cap.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
                out += [f"![{alt}]({rel})", "", f"*{cap}*" if cap else "", ""]
            else:
                out += [f"> **Note:** unknown block kind {kind!r}", ""]
    return "\n".join(out).rstrip() + "\n"


def _anchor(name: str) -> str:
    return "stage-" + re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1b1f23;line-height:1.5}
h1{border-bottom:2px solid #ddd;padding-bottom:.3em}h2{border-bottom:1px solid #eee;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:left}
th{background:#f6f8fa}td.num,th.num{text-align:right}
td.paper,th.paper{color:#6a737d;font-style:italic;background:#fbfbfb}
caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0}
figure{margin:1em 0 2em}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.92em}
.note,blockquote{background:#fff8c5;border-left:4px solid #d4a72c;padding:.4em .8em;margin:.5em 0}
code{background:#f6f8fa;padding:.1em .3em;border-radius:3px}
"""


_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*:")


def safe_link(url: str) -> bool:
    """Links allowed in the report: http(s), and relative references (``page.html``,
    ``stage/fig.png``, ``#anchor``). Everything else (``javascript:``, ``data:``, ``file:``,
    ``//other.host``) is not turned into a link: its text stays, as text."""
    u = "".join(ch for ch in str(url) if ch > " ").lower()   # browsers ignore controls and blanks
    if u.startswith("//") or u.startswith("\\"):
        return False
    m = _SCHEME.match(u)
    return m is None or m.group(0) in ("http:", "https:")


def _renderer():
    """CommonMark (markdown-it-py, a maintained renderer) with raw HTML off (``<script>`` is
    shown as text) and the link allow-list of :func:`safe_link`; tables for our own texts."""
    from markdown_it import MarkdownIt  # noqa: PLC0415  heavy: markdown-it, HTML report only

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
    md.validateLink = safe_link
    return md


_MD = None


def _md():
    global _MD
    if _MD is None:
        _MD = _renderer()
    return _MD


def _inline(text: str) -> str:
    """Inline Markdown (code, emphasis, allowed links) as HTML; everything else escaped."""
    return _md().renderInline(str(text))


def markdown_to_html(text: str) -> str:
    """Markdown (CommonMark: paragraphs, headings, lists, quotes, inline marks) as HTML, raw
    HTML escaped, links restricted to http(s) and relative paths."""
    return _md().render(str(text)).strip()


_NUMERIC = re.compile(r"^[-+−]?(\d[\d,]*\.?\d*|\.\d+)(e[-+]?\d+)?\s*(%|±.*)?$|^[–—-]$|^nan$|^-?inf$")


def _cls(paper: bool, text: str | None) -> str:
    names = (["paper"] if paper else []) + (["num"] if text is None or _NUMERIC.match(text.strip()) else [])
    return f' class="{" ".join(names)}"' if names else ""


def html_table(columns: Sequence[str], rows: Sequence[Sequence[str]], is_paper: Sequence[bool],
               caption: str = "") -> str:
    """A table; numeric cells right-aligned, the paper's columns greyed."""
    numeric_col = [all(_NUMERIC.match(r[j].strip()) for r in rows) if rows else False
                   for j in range(len(columns))]
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{_inline(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th{_cls(p, None if n else '')}>{html.escape(col)}</th>"
                                       for p, n, col in zip(is_paper, numeric_col, columns))
               + "</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td{_cls(p, v)}>{html.escape(v)}</td>" for p, v in zip(is_paper, r))
                   + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def data_uri(path: Path) -> str:
    mime = MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(title: str, intro: Sequence[str], sections: Sequence[Section],
                appendix: Sequence[Section] = ()) -> str:
    """The whole report as one HTML page with every image embedded."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>",
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for para in intro:
        out.append(markdown_to_html(para))
    if sections:
        out.append("<h2>Contents</h2><ul>" + "".join(
            f'<li><a href="#{_anchor(s.name)}">{html.escape(s.title)}</a></li>'
            for s in [*sections, *appendix]) + "</ul>")
    for s in [*sections, *appendix]:
        out.append(f'<section id="{_anchor(s.name)}"><h2>{html.escape(s.title)}</h2>')
        for n in s.notes:
            out.append(f'<div class="note"><strong>Note:</strong> {_inline(n)}</div>')
        for b in s.blocks:
            kind = b.get("kind")
            if kind == "heading":
                out.append(f"<h3>{_inline(str(b.get('text', '')))}</h3>")
            elif kind == "text":
                out.append(markdown_to_html(str(b.get("text", ""))))
            elif kind == "table":
                try:
                    cols, rows, is_paper = merge_paper(b)
                except ValueError as e:
                    out.append(f'<div class="note">{html.escape(str(e))}</div>')
                    continue
                out.append(html_table(cols, rows, is_paper, str(b.get("caption", ""))))
            elif kind == "image":
                p, why = s.image(b.get("path", ""))
                cap = str(b.get("caption", ""))
                if p is None:
                    out.append(f'<div class="note">image {html.escape(str(b.get("path", "")))} '
                               f'{html.escape(why)}</div>')
                    continue
                out.append(f'<figure><img src="{data_uri(p)}" alt="{html.escape(cap or p.name)}">'
                           f"<figcaption>{_inline(cap)}</figcaption></figure>")
            else:
                out.append(f'<div class="note">unknown block kind {html.escape(repr(kind))}</div>')
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


__all__ = ["Section", "fmt_cell", "merge_paper", "md_table", "render_markdown", "render_html",
           "markdown_to_html", "safe_link", "data_uri", "PAPER_SUFFIX"]
