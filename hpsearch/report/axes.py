"""Axes of the parallel-coordinates plot, shared by the PNG (matplotlib) and HTML (plotly) versions.

Each parameter becomes one axis: log-scaled when its distribution is log (`log: true` in the
spec) or when it is a grid of positive numbers spanning two decades or more (lr in
[0.1, 0.01, 0.001] is read in decades whatever the spec calls it); numeric otherwise; text
choices are evenly spaced in the spec's order. An inactive conditional parameter sits just below
its axis at a tick labelled "inactive".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial

from hpsearch import schema

LOG_SPAN = 100.0  # max/min of a positive numeric grid from which its axis is logarithmic
INACTIVE = "inactive"


@dataclass
class Axis:
    label: str
    kind: str  # "log" | "linear" | "categorical"
    positions: list[float]  # per trial, in axis coordinates (log10 for a log axis)
    ticks: list[tuple[float, str]]
    low: float
    high: float

    def subset(self, index: Sequence[int]) -> Axis:
        """The same axis (scale, ticks, range) for some of the trials: filtered views stay comparable."""
        return Axis(self.label, self.kind, [self.positions[i] for i in index], self.ticks, self.low, self.high)

    def normalized(self) -> list[float]:
        span = self.high - self.low
        return [(p - self.low) / span if span else 0.5 for p in self.positions]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_log(name: str, trials: Sequence[FrozenTrial]) -> bool:
    for t in trials:
        dist = t.distributions.get(name)
        if isinstance(dist, (FloatDistribution, IntDistribution)):
            return dist.log
    values = [t.params[name] for t in trials if name in t.params]
    if values and all(_is_number(v) and v > 0 for v in values):
        return max(values) / min(values) >= LOG_SPAN
    return False


def _choices(name: str, trials: Sequence[FrozenTrial]) -> list[Any]:
    for t in trials:
        dist = t.distributions.get(name)
        if isinstance(dist, CategoricalDistribution):
            return list(dist.choices)
    seen: list[Any] = []
    for t in trials:
        if name in t.params and t.params[name] not in seen:
            seen.append(t.params[name])
    return seen


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _numeric_ticks(values: list[float], log: bool) -> list[tuple[float, str]]:
    distinct = sorted(set(values))
    if len(distinct) <= 8:  # a grid: tick exactly its values
        return [(math.log10(v) if log else v, _fmt(v)) for v in distinct]
    lo, hi = distinct[0], distinct[-1]
    if log:
        exps = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        return [(float(e), f"1e{e}") for e in exps]
    return [(v, _fmt(v)) for v in nice_ticks(lo, hi)]


def param_axis(name: str, trials: Sequence[FrozenTrial]) -> Axis:
    raw = [t.params.get(name) for t in trials]
    present = [v for v in raw if v is not None]
    if present and all(_is_number(v) for v in present):
        log = is_log(name, trials) and all(v > 0 for v in present)
        pos = [math.log10(v) if log else float(v) for v in present]
        ticks = _numeric_ticks([float(v) for v in present], log)
        low, high = min(pos + [t for t, _ in ticks]), max(pos + [t for t, _ in ticks])
        missing = low - 0.1 * ((high - low) or 1.0)
        it = iter(pos)
        positions = [next(it) if v is not None else missing for v in raw]
        kind = "log" if log else "linear"
    else:
        choices = [c for c in _choices(name, trials) if any(repr(c) == repr(v) for v in present)]
        index = {repr(c): float(i) for i, c in enumerate(choices)}
        ticks = [(float(i), str(c)) for i, c in enumerate(choices)]
        low, high = 0.0, float(max(len(choices) - 1, 1))
        missing = -1.0
        positions = [index[repr(v)] if v is not None else missing for v in raw]
        kind = "categorical"
    if any(v is None for v in raw):
        ticks = [(missing, INACTIVE), *ticks]
        low = missing
    return Axis(f"{name} (log)" if kind == "log" else name, kind, positions, ticks, low, high)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 x 10^k) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    mag = 10 ** math.floor(math.log10((hi - lo) / max(1, n - 1)))
    step = next(m * mag for m in (1, 2, 5, 10, 20) if (hi - lo) / (m * mag) <= n)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def metric_axis(label: str, values: list[float]) -> Axis:
    lo, hi = min(values), max(values)
    ticks = [(v, f"{v:g}") for v in nice_ticks(lo, hi)]
    return Axis(label, "linear", list(values), ticks, lo, hi if hi > lo else lo + 1e-9)


def parallel_axes(trials: Sequence[FrozenTrial], params: Sequence[str], metric: str) -> list[Axis]:
    """One axis per parameter, then the validation metric, then test accuracy when recorded."""
    axes = [param_axis(p, trials) for p in params if any(p in t.params for t in trials)]
    axes.append(metric_axis(metric, [float(t.value) for t in trials]))  # type: ignore[arg-type]
    tests = [t.user_attrs.get(schema.TEST_ACC) for t in trials]
    if metric != schema.TEST_ACC and all(_is_number(v) for v in tests):
        axes.append(metric_axis(schema.TEST_ACC, [float(v) for v in tests]))  # type: ignore[arg-type]
    return axes
