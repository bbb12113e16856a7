"""`hpsearch report`: the questions every search is asked, answered from the storage in one go.

One snapshot of the trials is taken and every section reads it, so the numbers agree with each
other even while workers keep running (the report then says it is a snapshot). Sections:
dataset and baselines, best configurations with t-intervals, parallel coordinates (+ --where
views), importance and correlations, learning curves with divergent/under-trained runs, the best
configuration's confusion matrix, and the cost. The snapshot is snapshot.py; data lives in stats/curves/importance/cost,
figures in plots (PNG) and interactive (HTML), layout in render.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from hpsearch.report import best as report_best
from hpsearch.report import sections
from hpsearch.report.render import Document, render_html, render_markdown
from hpsearch.report.snapshot import ReportOptions, Snapshot, take_snapshot

if TYPE_CHECKING:
    pass


def build(snap: Snapshot) -> Document:
    parts = [sections.dataset, report_best.section, sections.parallel, sections.views, sections.importance,
             sections.curves, sections.confusion, sections.cost]
    return Document(title=f"Search report: {snap.name}", meta=sections.meta(snap), sections=[p(snap) for p in parts])


def write_report(study: optuna.Study, out: str | Path, opts: ReportOptions | None = None) -> tuple[Path, Path, Snapshot]:
    """Write DIR/report.md, DIR/report.html and DIR/figures/*; returns (md, html, snapshot)."""
    out = Path(out)
    snap = take_snapshot(study, out, opts or ReportOptions())
    out.mkdir(parents=True, exist_ok=True)
    doc = build(snap)
    md, page = out / "report.md", out / "report.html"
    md.write_text(render_markdown(doc))
    js = snap.figures / "plotly.min.js"
    page.write_text(render_html(doc, f"figures/{js.name}" if js.exists() else None))
    return md, page, snap


def summary_line(md: Path, page: Path, snap: Snapshot) -> str:
    c = snap.frame["state"].value_counts().to_dict() if len(snap.frame) else {}
    running = c.get("running", 0) + c.get("waiting", 0)
    tail = f"; snapshot of a running study ({c.get('running', 0)} running, {c.get('waiting', 0)} waiting)" \
        if running else ""
    when = datetime.fromtimestamp(snap.taken, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"wrote {md} and {page} ({len(snap.trials)} trials, {len(snap.configs)} configurations, {when}){tail}"
