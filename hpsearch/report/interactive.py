"""Interactive figures (plotly): brushing axes, hovering trials. Embedded in report.html and also
written one per file next to the PNGs. plotly.js is written once beside them, never fetched
from a CDN, so a report opens offline and from an archive."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from hpsearch.report.axes import Axis
from hpsearch.report.curves import curve, panels, series
from hpsearch.report.export import trial_name
from hpsearch.report.plots import FLAG_COLORS, LATER

CONFIG = {"displaylogo": False, "responsive": True}


def write(fig: Any, path: Path) -> tuple[Path, str]:
    """The figure as a standalone HTML file and as a div for embedding (plotly.js loaded separately)."""
    fig.update_layout(template="plotly_white")
    if fig.layout.margin.t is None:
        fig.update_layout(margin={"l": 60, "r": 40, "t": 60, "b": 50})
    fig.write_html(path, include_plotlyjs="directory", config=CONFIG)
    # "fig-" keeps figure ids apart from section anchors (plotly draws into whatever element has the id).
    div = fig.to_html(full_html=False, include_plotlyjs=False, config=CONFIG, div_id=f"fig-{path.stem}")
    return path, div


def class_histogram(counts: dict[str, Any]) -> Any:
    import plotly.graph_objects as go

    classes = [str(c) for c in (counts.get("classes") or range(len(counts["train"])))]
    fig = go.Figure()
    for split in ("train", "val", "test"):
        if counts.get(split):
            total = sum(counts[split]) or 1
            fig.add_bar(name=f"{split} (n={total})", x=classes, y=[c / total for c in counts[split]],
                        customdata=counts[split], hovertemplate="class %{x}: %{customdata} (%{y:.1%})")
    fig.update_layout(barmode="group", title="class distribution per split", yaxis_title="share of split",
                      xaxis_title="class", xaxis_type="category", height=380)
    return fig


def parallel_coordinates(axes: Sequence[Axis], color: Sequence[float], crange: tuple[float, float],
                         color_label: str, title: str, maximize: bool) -> Any:
    import plotly.graph_objects as go

    dims = [{"label": a.label, "values": a.positions, "range": [a.low, a.high],
             "tickvals": [p for p, _ in a.ticks], "ticktext": [t for _, t in a.ticks]} for a in axes]
    line = {"color": list(color), "cmin": crange[0], "cmax": crange[1], "colorscale": "Viridis",
            "reversescale": not maximize, "showscale": True,
            "colorbar": {"title": {"text": color_label}}}
    fig = go.Figure(go.Parcoords(dimensions=dims, line=line))
    # Parcoords puts axis names above the plot: leave them room below the title.
    fig.update_layout(title={"text": title, "y": 0.98, "yanchor": "top"}, height=470)
    fig.update_layout(margin={"t": 110})
    return fig


def importance_bars(by_method: dict[str, dict[str, float]], params: Sequence[str]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for method, imp in by_method.items():
        fig.add_bar(name=method, y=list(params), x=[imp.get(p, 0.0) for p in params], orientation="h")
    fig.update_layout(barmode="group", title="hyperparameter importance", xaxis_title="importance (normalized)",
                      yaxis={"autorange": "reversed"}, height=180 + 40 * len(params) * max(1, len(by_method)) // 2)
    return fig


def learning_curves(trials: Sequence[FrozenTrial], flags: dict[int, str], metric: str) -> Any:
    from plotly.subplots import make_subplots

    shown_panels = panels(trials, metric)
    fig = make_subplots(rows=1, cols=len(shown_panels), subplot_titles=[title for _, title in shown_panels])
    legend_done: set[str] = set()
    for t in sorted(trials, key=lambda t: t.number in flags):
        kind = flags.get(t.number, "other")
        style = {"color": FLAG_COLORS[kind], "width": 1 if kind == "other" else 2}
        opacity = 0.35 if kind == "other" else 0.95
        label = f"#{t.number} {trial_name(t)}"
        for col, (key, _) in enumerate(shown_panels, 1):
            points = series(t, key, metric)
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            fig.add_scatter(x=list(xs), y=list(ys), mode="lines", line=style, opacity=opacity, name=kind,
                            legendgroup=kind, showlegend=kind not in legend_done, hovertext=label,
                            hoverinfo="text+x+y", row=1, col=col)
            legend_done.add(kind)
    epochs = max((len(t.intermediate_values) or len(curve(t)) for t in trials), default=0)
    # Whole epochs only: plotly's automatic ticks would label 1.5 (or repeat "2" with an integer format).
    fig.update_xaxes(title_text="epoch", dtick=1 if epochs <= 20 else None, tickformat="d")
    fig.update_layout(height=420, title="learning curves")
    return fig


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> Any:
    import plotly.graph_objects as go

    rows = [sum(r) or 1 for r in matrix]
    labels = [str(c) for c in classes] if len(classes) == len(matrix) else [str(i) for i in range(len(matrix))]
    shares = [[c / rows[i] for c in r] for i, r in enumerate(matrix)]
    fig = go.Figure(go.Heatmap(z=shares, x=labels, y=labels, colorscale="Blues", zmin=0, zmax=1,
                               text=[[str(c) for c in r] for r in matrix], texttemplate="%{text}",
                               hovertemplate="true %{y}, predicted %{x}: %{text} (%{z:.1%} of true)",
                               colorbar={"title": {"text": "share of true"}}))
    fig.update_layout(title=title, xaxis_title="predicted class", yaxis_title="true class",
                      yaxis_autorange="reversed", xaxis_type="category", yaxis_type="category",
                      height=max(380, 40 * len(labels) + 160), width=max(460, 40 * len(labels) + 220))
    return fig


# ---------------------------------------------------------------- history, slice, contour (report.views)


def _scatter(n: int) -> Any:
    import plotly.graph_objects as go

    return go.Scattergl if n > 5000 else go.Scatter  # WebGL only where SVG would crawl


def history(h: Any, metric: str, maximize: bool) -> Any:
    import plotly.graph_objects as go

    xs = list(range(1, len(h.values) + 1))
    fig = go.Figure()
    fig.add_trace(_scatter(len(xs))(x=xs, y=h.values, mode="markers", name="a complete trial",
                                    marker={"size": 5, "color": FLAG_COLORS["other"], "opacity": 0.6},
                                    customdata=h.numbers, hovertemplate="trial #%{customdata}: %{y}<extra></extra>"))
    line = "best configuration so far (mean of its seeds)" if h.seeds else "best so far"
    fig.add_scatter(x=xs, y=h.best, mode="lines", line={"shape": "hv", "color": "#d62728"}, name=line)
    fig.update_layout(title=f"optimization history ({'higher' if maximize else 'lower'} is better)", height=420,
                      xaxis_title="trials completed (in the order they finished)", yaxis_title=metric)
    return fig


def slices(panels: Sequence[Any], metric: str, maximize: bool) -> Any:
    from plotly.subplots import make_subplots

    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = make_subplots(rows=rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.04, vertical_spacing=0.18)
    for i, s in enumerate(panels):
        row, col = i // cols + 1, i % cols + 1
        fig.add_trace(_scatter(len(s.values))(
            x=s.axis.positions, y=s.values, mode="markers", showlegend=False, name=s.axis.label,
            marker={"size": 5, "color": s.order, "colorscale": list(LATER), "cmin": 1,
                    "showscale": i == 0, "colorbar": {"title": {"text": "finishing order"}}},
            hovertemplate=f"{s.axis.label}: %{{x}}<br>{metric}: %{{y}}<extra></extra>"), row=row, col=col)
        fig.update_xaxes(title_text=s.axis.label, tickvals=[p for p, _ in s.axis.ticks],
                         ticktext=[t for _, t in s.axis.ticks], row=row, col=col)
    fig.update_yaxes(title_text=metric, col=1)
    fig.update_layout(title=f"slice: {metric} against each parameter ({'higher' if maximize else 'lower'} is better)",
                      height=340 * rows)
    return fig


def contours(panels: Sequence[Any], metric: str, maximize: bool) -> Any:
    from plotly.subplots import make_subplots

    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = make_subplots(rows=rows, cols=cols, horizontal_spacing=0.09, vertical_spacing=0.2)
    for i, c in enumerate(panels):
        row, col = i // cols + 1, i % cols + 1
        fig.add_heatmap(x=c.x_labels, y=c.y_labels, z=c.mean, customdata=c.count, coloraxis="coloraxis",
                        hovertemplate=f"{c.x} %{{x}}, {c.y} %{{y}}: mean {metric} %{{z}} over %{{customdata}} "
                                      "trial(s)<extra></extra>", row=row, col=col)
        fig.update_xaxes(title_text=c.x, type="category", row=row, col=col)
        fig.update_yaxes(title_text=c.y, type="category", row=row, col=col)
    fig.update_layout(title="contour: pairs of parameters (bright = better)", height=360 * rows,
                      coloraxis={"colorscale": "Viridis", "reversescale": not maximize,
                                 "colorbar": {"title": {"text": f"mean {metric}"}}})
    return fig


def pareto_front(points: Sequence[Any], metrics: list[str], maximize: list[bool],
                 constraints: dict[str, dict[str, float]] | None = None) -> Any:
    """The PNG's panels with each configuration's name and means on hover."""
    from plotly.subplots import make_subplots

    from hpsearch.report.plots import PARETO_STYLE

    pairs = [(i, j) for i in range(len(metrics)) for j in range(i + 1, len(metrics))][:6]
    fig = make_subplots(rows=1, cols=len(pairs))
    symbols = {"o": "circle", "x": "x"}
    for col, (i, j) in enumerate(pairs, 1):
        for kind, (marker, color, size) in PARETO_STYLE.items():
            chosen = [p for p in points if p.kind == kind]
            if not chosen:
                continue
            text = [p.name + "<br>" + "<br>".join(f"{m}: {v:.6g}" for m, v in zip(metrics, p.values, strict=True))
                    for p in chosen]
            fig.add_scatter(x=[p.values[i] for p in chosen], y=[p.values[j] for p in chosen], mode="markers",
                            name=f"{kind} ({len(chosen)})", legendgroup=kind, showlegend=col == 1, text=text,
                            hoverinfo="text", marker={"symbol": symbols[marker], "color": color,
                                                      "size": max(6, size // 3)}, row=1, col=col)
        if len(metrics) == 2:
            front = sorted((p.values for p in points if p.kind == "Pareto-optimal"), key=lambda v: v[0])
            fig.add_scatter(x=[v[0] for v in front], y=[v[1] for v in front], mode="lines", showlegend=False,
                            line={"color": "#111111", "width": 1}, hoverinfo="skip", row=1, col=col)
        for bound in (constraints or {}).get(metrics[i], {}).values():
            fig.add_vline(x=bound, line_dash="dash", line_color="#999999", row=1, col=col)
        for bound in (constraints or {}).get(metrics[j], {}).values():
            fig.add_hline(y=bound, line_dash="dash", line_color="#999999", row=1, col=col)
        fig.update_xaxes(title_text=f"{metrics[i]} ({'higher' if maximize[i] else 'lower'} is better)", row=1, col=col)
        fig.update_yaxes(title_text=f"{metrics[j]} ({'higher' if maximize[j] else 'lower'} is better)", row=1, col=col)
    fig.update_layout(title="Pareto front over configurations (means over seeds)", height=470)
    return fig
