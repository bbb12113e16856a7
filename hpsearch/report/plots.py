"""Static figures (PNG, matplotlib with the Agg backend): what report.md shows and what prints well."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from hpsearch.report.axes import Axis
from hpsearch.report.curves import panels, series

DPI = 110
FLAG_COLORS = {"divergent": "#d62728", "under-trained": "#ff7f0e", "best configuration": "#111111",
               "other": "#1f77b4"}
LATER = ("#a6cbe3", "#08306b")  # the slice view's colours: first to last finished trial


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; also keeps PNG output identical everywhere
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    return path


def class_histogram(counts: dict[str, Any], path: Path) -> Path:
    """Share of each class in each split (shares, not counts: the splits differ in size)."""
    plt = _plt()
    classes = list(counts.get("classes") or range(len(counts["train"])))
    splits = [s for s in ("train", "val", "test") if counts.get(s)]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(classes) + 2), 3.4))
    width = 0.8 / len(splits)
    for i, split in enumerate(splits):
        total = sum(counts[split]) or 1
        xs = [k + (i - (len(splits) - 1) / 2) * width for k in range(len(classes))]
        ax.bar(xs, [c / total for c in counts[split]], width, label=f"{split} (n={sum(counts[split])})")
    ax.set_xticks(range(len(classes)), [str(c) for c in classes], rotation=45 if len(classes) > 12 else 0)
    ax.set_ylabel("share of split")
    ax.set_xlabel("class")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("class distribution per split")
    return _save(fig, path)


def parallel_coordinates(axes: Sequence[Axis], color: Sequence[float], crange: tuple[float, float],
                         color_label: str, path: Path, title: str, maximize: bool) -> Path:
    """One line per trial across normalized axes; colour = validation metric, best drawn on top."""
    plt = _plt()
    from matplotlib import cm, colormaps
    from matplotlib.colors import Normalize

    fig, ax = plt.subplots(figsize=(max(6.0, 1.7 * len(axes)), 4.2))
    lo, hi = crange
    norm = Normalize(lo, hi if hi > lo else lo + 1e-9)
    # Bright = good in both directions, so the eye goes to the best trials.
    cmap = colormaps["viridis" if maximize else "viridis_r"]
    from matplotlib.collections import LineCollection

    columns = [a.normalized() for a in axes]
    # Best last, so it is drawn on top; one collection draws 50,000 lines in seconds, plot() would not.
    order = sorted(range(len(color)), key=lambda i: color[i] if maximize else -color[i])
    segments = [list(zip(range(len(axes)), [col[i] for col in columns], strict=True)) for i in order]
    lw = 1.2 if len(order) < 500 else 0.5
    ax.add_collection(LineCollection(segments, colors=[cmap(norm(color[i])) for i in order], alpha=0.7, linewidths=lw))
    for x, a in enumerate(axes):
        ax.axvline(x, color="#444", lw=0.8)
        span = (a.high - a.low) or 1.0
        for pos, text in a.ticks:
            y = (pos - a.low) / span
            ax.text(x + 0.03, y, text, fontsize=7, va="center", ha="left", color="#333")
    ax.set_xticks(range(len(axes)), [a.label for a in axes], fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(-0.1, len(axes) - 0.6)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    sm = cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, pad=0.01, fraction=0.03).set_label(color_label)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def importance_bars(by_method: dict[str, dict[str, float]], params: Sequence[str], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(params) * max(1, len(by_method)) / 2 + 1.6))
    height = 0.8 / max(1, len(by_method))
    for i, (method, imp) in enumerate(by_method.items()):
        ys = [k + (i - (len(by_method) - 1) / 2) * height for k in range(len(params))]
        ax.barh(ys, [imp.get(p, 0.0) for p in params], height, label=method)
    ax.set_yticks(range(len(params)), list(params))
    ax.invert_yaxis()
    ax.set_xlabel("importance (normalized per method)")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("hyperparameter importance")
    return _save(fig, path)


def learning_curves(trials: Sequence[FrozenTrial], flags: dict[int, str], metric: str, path: Path) -> Path:
    """Training loss, the validation metric and the other validation curve per epoch; flagged runs
    coloured, others faint."""
    plt = _plt()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    shown_panels = panels(trials, metric)
    fig, axes = plt.subplots(1, len(shown_panels), figsize=(5.5 * len(shown_panels), 3.8))
    shown: set[str] = set()
    # Faint lines first so flagged runs stay visible on top.
    for t in sorted(trials, key=lambda t: t.number in flags):
        kind = flags.get(t.number, "other")
        style = {"color": FLAG_COLORS[kind], "alpha": 0.25 if kind == "other" else 0.9,
                 "lw": 0.9 if kind == "other" else 1.6}
        for ax, (key, _) in zip(axes, shown_panels, strict=True):
            points = series(t, key, metric)
            if points:
                ax.plot(*zip(*points, strict=True), **style)
        shown.add(kind)
    for ax, (key, title) in zip(axes, shown_panels, strict=True):
        lines = ax.get_lines()
        if key.endswith("loss") and lines and all(v > 0 for line in lines for v in line.get_ydata()):
            ax.set_yscale("log")  # losses span decades; a linear axis hides everything after epoch 1
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=title, xlabel="epoch", ylabel=key)
    handles = [Line2D([], [], color=FLAG_COLORS[k], lw=2, label=k) for k in FLAG_COLORS if k in shown]
    axes[1].legend(handles=handles, frameon=False, fontsize=8)
    return _save(fig, path)


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str) -> Path:
    """Rows = true class, colour = row share (recall), numbers = counts."""
    plt = _plt()
    k = len(matrix)
    rows = [sum(r) or 1 for r in matrix]
    shares = [[c / rows[i] for c in r] for i, r in enumerate(matrix)]
    size = min(10.0, 2.5 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=7,
                        color="white" if shares[i][j] > 0.5 else "black")
    labels = list(classes) if len(classes) == k else [str(i) for i in range(k)]
    ax.set_xticks(range(k), labels, rotation=45 if k > 10 else 0, fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("share of true class")
    return _save(fig, path)


# ---------------------------------------------------------------- history, slice, contour (report.views)


def history(h: Any, metric: str, maximize: bool, path: Path) -> Path:
    """Each complete trial in the order it finished; the line: the best configuration so far."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    xs = range(1, len(h.values) + 1)
    ax.scatter(xs, h.values, s=10 if len(xs) < 2000 else 3, color=FLAG_COLORS["other"], alpha=0.6,
               label="a complete trial")
    line = "best configuration so far (mean of its seeds)" if h.seeds else "best so far"
    ax.step(xs, h.best, where="post", color="#d62728", lw=1.6, label=line)
    ax.set(xlabel="trials completed (in the order they finished)", ylabel=metric,
           title=f"optimization history ({'higher' if maximize else 'lower'} is better)")
    ax.legend(frameon=False, fontsize=8)
    return _save(fig, path)


def _grid(n: int, cols: int, width: float, height: float) -> tuple[Any, list[Any]]:
    plt = _plt()
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [a for row in axes for a in row]
    fig.subplots_adjust(wspace=0.4, hspace=0.45)  # each panel's own tick labels and axis names
    for extra in flat[n:]:
        extra.set_visible(False)
    return fig, flat[:n]


def slices(panels: Sequence[Any], metric: str, maximize: bool, path: Path) -> Path:
    """The metric against each parameter; colour: the finishing order (later = darker)."""
    from matplotlib.colors import LinearSegmentedColormap

    later = LinearSegmentedColormap.from_list("later", LATER)
    fig, axes = _grid(len(panels), 4, 3.4, 3.0)
    for ax, s in zip(axes, panels, strict=True):
        points = ax.scatter(s.axis.positions, s.values, c=s.order, cmap=later, vmin=1,
                            s=12 if len(s.values) < 2000 else 3, edgecolors="none")
        ax.set_xticks([p for p, _ in s.axis.ticks], [t for _, t in s.axis.ticks], fontsize=7,
                      rotation=30 if len(s.axis.ticks) > 4 else 0)
        ax.set_xlabel(s.axis.label, fontsize=9)
    axes[0].set_ylabel(metric)
    fig.colorbar(points, ax=axes, fraction=0.02, pad=0.01).set_label("finishing order")
    fig.suptitle(f"slice: {metric} against each parameter ({'higher' if maximize else 'lower'} is better)", fontsize=10)
    return _save(fig, path)


def contours(panels: Sequence[Any], metric: str, maximize: bool, path: Path) -> Path:
    """Pairs of parameters; a cell: the mean metric of the trials in it (blank: none there)."""
    import numpy as np
    from matplotlib import colormaps

    fig, axes = _grid(len(panels), 3, 4.2, 3.6)
    values = [v for c in panels for row in c.mean for v in row if v is not None]
    lo, hi = min(values), max(values)
    cmap = colormaps["viridis" if maximize else "viridis_r"].with_extremes(bad="#f3f3f3")
    for ax, c in zip(axes, panels, strict=True):
        z = np.ma.masked_invalid(np.array([[np.nan if v is None else v for v in row] for row in c.mean], dtype=float))
        im = ax.imshow(z, origin="lower", aspect="auto", cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
        ax.set_xticks(range(len(c.x_labels)), c.x_labels, fontsize=7, rotation=45 if len(c.x_labels) > 4 else 0)
        ax.set_yticks(range(len(c.y_labels)), c.y_labels, fontsize=7)
        ax.set(xlabel=c.x, ylabel=c.y)
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01).set_label(f"mean {metric} of the trials in the cell")
    fig.suptitle("contour: pairs of parameters (bright = better)", fontsize=10)
    return _save(fig, path)


PARETO_STYLE = {"Pareto-optimal": ("o", "#111111", 36), "dominated": ("o", "#9ecae1", 18),
                "set aside": ("o", "#ff7f0e", 22), "infeasible": ("x", "#999999", 22)}


def pareto_front(points: Sequence[Any], metrics: list[str], maximize: list[bool], path: Path,
                 constraints: dict[str, dict[str, float]] | None = None) -> Path:
    """Configurations' means, one panel per pair of objectives; the front joined when there are two,
    each bound on an objective dashed."""
    plt = _plt()
    pairs = [(i, j) for i in range(len(metrics)) for j in range(i + 1, len(metrics))][:6]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 4.2), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs, strict=True):
        for kind, (marker, color, size) in PARETO_STYLE.items():
            chosen = [p for p in points if p.kind == kind]
            if chosen:
                ax.scatter([p.values[i] for p in chosen], [p.values[j] for p in chosen], marker=marker, c=color,
                           s=size, label=f"{kind} ({len(chosen)})", zorder=3 if kind == "Pareto-optimal" else 2)
        if len(metrics) == 2:
            front = sorted((p.values for p in points if p.kind == "Pareto-optimal"), key=lambda v: v[0])
            ax.plot([v[0] for v in front], [v[1] for v in front], color="#111111", lw=1, zorder=2)
        for axis, k in (("x", i), ("y", j)):
            for bound in (constraints or {}).get(metrics[k], {}).values():
                (ax.axvline if axis == "x" else ax.axhline)(bound, color="#999999", ls="--", lw=1)
        ax.set_xlabel(f"{metrics[i]} ({'higher' if maximize[i] else 'lower'} is better)")
        ax.set_ylabel(f"{metrics[j]} ({'higher' if maximize[j] else 'lower'} is better)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(frameon=False, fontsize=8)
    fig.suptitle("Pareto front over configurations (means over seeds)")
    return _save(fig, path)
