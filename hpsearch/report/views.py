"""The data of the views users know from Optuna's visualization: optimization history, slice and
contour, shared by the PNG (plots) and HTML (interactive) versions.

Two choices differ from Optuna's plots, for the same reasons as the rest of the report:
- History runs in the order trials finished (parallel workers finish out of number order), and
  its "best so far" line is the best configuration's mean over its complete seeds, as `best`
  ranks them, not the best single trial: with seeds, that one is a lucky draw.
- Contour cells are the mean of the trials that fell in them, on the parameters' own values (a
  grid) or on 10 bins of their range, instead of an interpolated surface: a cell without a trial
  stays empty rather than showing a value nobody measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

from optuna.trial import FrozenTrial, TrialState

from hpsearch import schema
from hpsearch.report.axes import INACTIVE, Axis, param_axis

MAX_SLICES = 8  # parameters drawn in the slice view (the spec's first ones)
MAX_CONTOUR_PARAMS = 4  # the contour view pairs the first 4 varying parameters: at most 6 panels
MAX_CELLS = 12  # a parameter with more distinct values than this is binned
BINS = 10


@dataclass
class History:
    numbers: list[int]  # trial numbers, in the order they finished
    values: list[float]
    best: list[float]  # the best configuration mean so far, after each of them
    seeds: bool  # some configuration has more than one complete seed (the line is then a mean)


@dataclass
class Slice:
    axis: Axis  # the parameter's axis (positions per trial, log10 on a log axis, ticks)
    values: list[float]
    order: list[int]  # each point's place in the finishing order (its colour)


@dataclass
class Cells:
    x: str
    y: str
    x_labels: list[str]
    y_labels: list[str]
    mean: list[list[float | None]]  # [row = y bin][column = x bin]; None: no trial there
    count: list[list[int]]


def finished(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Complete trials with a value, in the order they finished."""
    # Not PRUNED: Optuna stores a pruned trial's last intermediate value as its value.
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    return sorted(done, key=lambda t: (t.datetime_complete is None, t.datetime_complete or 0, t.number))


def _config(t: FrozenTrial) -> str:
    cid = t.user_attrs.get(schema.CONFIG_ID)
    return str(cid) if cid else repr(sorted(t.params.items()))  # a plain Optuna study: its parameters


def history(trials: Sequence[FrozenTrial], maximize: bool) -> History:
    done = finished(trials)
    sums: dict[str, tuple[float, int]] = {}
    best: list[float] = []
    leader: str | None = None
    sign = 1.0 if maximize else -1.0
    for t in done:
        key = _config(t)
        s, n = sums.get(key, (0.0, 0))
        sums[key] = (s + float(t.value), n + 1)  # type: ignore[arg-type]
        mean = sums[key][0] / sums[key][1]
        if leader is None or (key != leader and sign * mean > sign * best[-1]):
            leader = key
        elif key == leader:  # the leader's mean moved (down, maybe): look at every configuration again
            leader = max(sums, key=lambda k: sign * sums[k][0] / sums[k][1])
        best.append(sums[leader][0] / sums[leader][1])
    return History([t.number for t in done], [float(t.value) for t in done], best,  # type: ignore[arg-type]
                   any(n > 1 for _, n in sums.values()))


def slices(trials: Sequence[FrozenTrial], params: Sequence[str]) -> list[Slice]:
    done = finished(trials)
    out = []
    for p in [p for p in params if any(p in t.params for t in done)][:MAX_SLICES]:
        out.append(Slice(param_axis(p, done), [float(t.value) for t in done], list(range(1, len(done) + 1))))  # type: ignore[arg-type]
    return out


def contours(trials: Sequence[FrozenTrial], params: Sequence[str]) -> list[Cells]:
    done = finished(trials)
    axes = [param_axis(p, done) for p in params if any(p in t.params for t in done)]
    varying = [(a, _bins(a)) for a in axes if len(set(a.positions)) > 1][:MAX_CONTOUR_PARAMS]
    values = [float(t.value) for t in done]  # type: ignore[arg-type]
    out = []
    for (ax, (xb, xl)), (ay, (yb, yl)) in combinations(varying, 2):
        sums = [[0.0] * len(xl) for _ in yl]
        count = [[0] * len(xl) for _ in yl]
        for i, v in enumerate(values):
            r, c = yb(ay.positions[i]), xb(ax.positions[i])
            sums[r][c] += v
            count[r][c] += 1
        mean = [[sums[r][c] / count[r][c] if count[r][c] else None for c in range(len(xl))] for r in range(len(yl))]
        out.append(Cells(ax.label, ay.label, xl, yl, mean, count))
    return out


def _bins(axis: Axis) -> tuple[Callable[[float], int], list[str]]:
    """(position -> bin index, bin labels): each distinct value its own cell, or BINS equal bins of
    the axis (after a cell of its own for an inactive conditional parameter)."""
    ticks = dict(axis.ticks)
    inactive = [p for p, text in axis.ticks if text == INACTIVE]
    log = axis.kind == "log"

    def label(pos: float) -> str:
        if pos in ticks:
            return ticks[pos]
        return f"{10 ** pos:.3g}" if log else f"{pos:.3g}"

    distinct = sorted(set(axis.positions))
    if len(distinct) <= MAX_CELLS:
        index = {p: i for i, p in enumerate(distinct)}
        return index.__getitem__, [label(p) for p in distinct]
    active = [p for p in distinct if p not in inactive]
    lo, hi = active[0], active[-1]
    width = (hi - lo) / BINS
    first = 1 if inactive else 0

    def which(pos: float) -> int:
        if pos in inactive:
            return 0
        return first + min(BINS - 1, int((pos - lo) / width))

    return which, [INACTIVE] * first + [label(lo + (k + 0.5) * width) for k in range(BINS)]
