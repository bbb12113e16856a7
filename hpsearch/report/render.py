"""A small document model rendered twice: report.md (PNG figures) and report.html (interactive).

Sections are built once from the data; the two renderers only decide presentation, so the
Markdown and HTML reports can never disagree on a number.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff;min-height:100vh}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:20px;margin:36px 0 10px;padding-top:8px;border-top:1px solid #e3e6ea}
h3{font-size:16px;margin:20px 0 8px}.meta{color:#5a6372;margin:2px 0}
nav ol{columns:2;padding-left:20px;color:#3a4b6a}nav a{color:#2456a6;text-decoration:none}
table{border-collapse:collapse;margin:10px 0 14px;font-size:13.5px;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #e3e6ea;padding:5px 10px;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}tr.best td{background:#fff6d6;font-weight:600}
tr.baseline td{color:#5a6372;font-style:italic}td.num{text-align:right;white-space:nowrap}
.note{color:#5a6372;font-size:13.5px}.figure{margin:12px 0 22px}.figure img{max-width:100%;border:1px solid #eee}
.caption{color:#5a6372;font-size:13px;margin-top:4px}.warn{background:#fff4e5;border-left:4px solid #ff9800;padding:8px 12px}
ul.flags li{margin:2px 0}code{background:#f0f2f5;padding:1px 4px;border-radius:3px;font-size:90%}
"""


@dataclass
class Para:
    text: str
    kind: str = "text"  # "text" | "note" | "warn"


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    best: set[int] = field(default_factory=set)  # row indexes to mark as best
    baseline: set[int] = field(default_factory=set)
    numeric: set[int] = field(default_factory=set)  # right-aligned column indexes
    title: str = ""


@dataclass
class Figure:
    png: str  # path relative to the report directory
    caption: str
    html: str | None = None  # standalone interactive file, relative path
    div: str | None = None  # the same figure for embedding in report.html


Block = Para | Bullets | Table | Figure


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self


@dataclass
class Document:
    title: str
    meta: list[str]
    sections: list[Section]


# ---------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> list[str]:
    out = [f"**{t.title}**", ""] if t.title else []
    out.append("| " + " | ".join(_md_cell(h) for h in t.headers) + " |")
    out.append("|" + "|".join("---:" if i in t.numeric else "---" for i in range(len(t.headers))) + "|")
    for i, row in enumerate(t.rows):
        cells = [_md_cell(c) for c in row]
        if i in t.best:
            cells = [f"**{c}**" if c else c for c in cells]
        elif i in t.baseline:
            cells = [f"*{c}*" if c else c for c in cells]
        out.append("| " + " | ".join(cells) + " |")
    return [*out, ""]


def render_markdown(doc: Document) -> str:
    lines = [f"# {doc.title}", ""] + [f"{m}  " for m in doc.meta] + [""]
    lines += ["## Contents", ""] + [f"{i}. [{s.title}](#{s.anchor})" for i, s in enumerate(doc.sections, 1)] + [""]
    for s in doc.sections:
        lines += [f'<a id="{s.anchor}"></a>', "", f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Para):
                lines += [f"> {b.text}" if b.kind == "warn" else (f"*{b.text}*" if b.kind == "note" else b.text), ""]
            elif isinstance(b, Bullets):
                lines += [f"- {item}" for item in b.items] + [""]
            elif isinstance(b, Table):
                lines += _md_table(b)
            else:
                link = f" ([interactive]({b.html}))" if b.html else ""
                lines += [f"![{b.caption}]({b.png})", "", f"*{b.caption}*{link}", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------- html


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in t.headers)
    body = []
    for i, row in enumerate(t.rows):
        cls = "best" if i in t.best else "baseline" if i in t.baseline else ""
        cells = "".join(f'<td class="num">{_e(c)}</td>' if j in t.numeric else f"<td>{_e(c)}</td>"
                        for j, c in enumerate(row))
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    title = f"<h3>{_e(t.title)}</h3>" if t.title else ""
    return f"{title}<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html_block(b: Block) -> str:
    if isinstance(b, Para):
        cls = {"note": ' class="note"', "warn": ' class="warn"'}.get(b.kind, "")
        return f"<p{cls}>{_e(b.text)}</p>"
    if isinstance(b, Bullets):
        return '<ul class="flags">' + "".join(f"<li>{_e(i)}</li>" for i in b.items) + "</ul>"
    if isinstance(b, Table):
        return _html_table(b)
    links = f'<a href="{_e(b.png)}">PNG</a>' + (f' · <a href="{_e(b.html)}">standalone</a>' if b.html else "")
    body = b.div if b.div else f'<img src="{_e(b.png)}" alt="{_e(b.caption)}">'
    return f'<div class="figure">{body}<div class="caption">{_e(b.caption)} ({links})</div></div>'


def render_html(doc: Document, plotly_js: str | None) -> str:
    script = f'<script src="{_e(plotly_js)}"></script>' if plotly_js else ""
    toc = "".join(f'<li><a href="#{s.anchor}">{_e(s.title)}</a></li>' for s in doc.sections)
    sections = "".join(
        f'<section id="{s.anchor}"><h2>{_e(s.title)}</h2>{"".join(_html_block(b) for b in s.blocks)}</section>'
        for s in doc.sections
    )
    meta = "".join(f'<p class="meta">{_e(m)}</p>' for m in doc.meta)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{_e(doc.title)}</title><style>{CSS}</style>{script}</head>'
        f"<body><main><h1>{_e(doc.title)}</h1>{meta}<nav><ol>{toc}</ol></nav>{sections}</main></body></html>\n"
    )
