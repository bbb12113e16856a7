"""Learning curves and what is wrong with them: divergent runs and under-trained runs.

Definitions (the report prints them next to the lists):

- divergent: the worker marked the trial divergent (its loss went NaN/inf and it failed), or a
  value of its curve is NaN/inf, or its last epoch's training loss is not below its first
  epoch's (training made no progress at all). Needs two epochs for the last rule.
- under-trained: a complete, non-divergent trial whose validation metric still improved clearly
  over its last `window` epochs (fewer when the run is shorter): by at least `min_gain` in absolute
  terms for a maximized metric (0.01 = one accuracy point), or by at least `min_gain` relative to
  the earlier value for a minimized one (losses have no fixed scale). Such a run would likely
  have gained from more epochs, so its rank understates the configuration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpsearch import schema
from hpsearch.report.export import state_name, trial_name

CURVE_KEYS = ("train_loss", "val_loss", "train_acc", "val_acc")
DEFAULT_WINDOW = 3
DEFAULT_MIN_GAIN = 0.01


@dataclass(frozen=True)
class Flag:
    number: int
    name: str
    state: str
    reason: str


def curve(trial: FrozenTrial) -> list[dict[str, Any]]:
    """The per-epoch records of a trial, ordered by epoch (empty for objectives that keep none)."""
    raw = trial.user_attrs.get(schema.CURVE) or []
    return sorted((r for r in raw if isinstance(r, dict) and "epoch" in r), key=lambda r: r["epoch"])


def metric_series(trial: FrozenTrial, metric: str) -> list[tuple[int, float]]:
    """(epoch, validation metric): from the curve, else from the values reported to Optuna."""
    records = curve(trial)
    if records and any(metric in r for r in records):
        return [(int(r["epoch"]), float(r[metric])) for r in records if r.get(metric) is not None]
    return sorted((int(step), float(v)) for step, v in trial.intermediate_values.items())


def panels(trials: Sequence[FrozenTrial], metric: str) -> list[tuple[str, str]]:
    """(curve key, title) of the learning-curve panels: training loss, the validation metric, and the
    other validation curve beside it (val_loss next to val_acc, val_acc next to val_loss): accuracy
    can hold still while the loss climbs (over-confidence), which only the pair shows."""
    other = "val_acc" if metric == "val_loss" else "val_loss"
    out = [("train_loss", "training loss"), (metric, f"validation {metric}")]
    if any(series(t, other, metric) for t in trials):
        out.append((other, f"validation {other}"))
    return out


def series(trial: FrozenTrial, key: str, metric: str) -> list[tuple[int, float]]:
    """(epoch, finite value) of one curve of a trial; the metric falls back to the reported values."""
    if key == metric:
        points = metric_series(trial, metric)
    else:
        points = [(int(r["epoch"]), r[key]) for r in curve(trial)
                  if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return [(e, float(v)) for e, v in points if math.isfinite(v)]


def _not_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v)


# ---------------------------------------------------------------- divergent


def divergence_reason(trial: FrozenTrial) -> str | None:
    if trial.user_attrs.get(schema.DIVERGENT):
        why = trial.user_attrs.get(schema.FAIL_REASON)
        return "marked divergent by the worker" + (f" ({why})" if why else "")
    records = curve(trial)
    for r in records:
        for key in CURVE_KEYS:
            if _not_finite(r.get(key)):
                return f"{key} is {r[key]} at epoch {r['epoch']}"
    if not records:
        bad = [step for step, v in sorted(trial.intermediate_values.items()) if _not_finite(v)]
        return f"reported value is not finite at step {bad[0]}" if bad else None
    losses = [(r["epoch"], r["train_loss"]) for r in records if isinstance(r.get("train_loss"), (int, float))]
    if len(losses) >= 2 and losses[-1][1] >= losses[0][1]:
        (e0, l0), (e1, l1) = losses[0], losses[-1]
        return f"train_loss did not decrease: {l0:.4g} at epoch {e0} -> {l1:.4g} at epoch {e1}"
    return None


def divergent_runs(trials: Sequence[FrozenTrial]) -> list[Flag]:
    flags = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.WAITING:
            continue
        reason = divergence_reason(t)
        if reason is not None:
            flags.append(Flag(t.number, trial_name(t), state_name(t), reason))
    return flags


# ---------------------------------------------------------------- under-trained


def late_gain(series: Sequence[float], maximize: bool, window: int) -> tuple[float, int] | None:
    """(improvement over the last w epochs, w) with w = min(window, len - 1); None below 2 epochs."""
    if len(series) < 2:
        return None
    w = min(window, len(series) - 1)
    before, last = series[-1 - w], series[-1]
    if maximize:
        return last - before, w
    return ((before - last) / abs(before) if before else 0.0), w


def under_trained_runs(trials: Sequence[FrozenTrial], metric: str, maximize: bool,
                       window: int = DEFAULT_WINDOW, min_gain: float = DEFAULT_MIN_GAIN) -> list[Flag]:
    if window < 1:
        raise ValueError(f"window must be >= 1, but got {window=}")
    flags = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != TrialState.COMPLETE or divergence_reason(t) is not None:
            continue
        series = metric_series(t, metric)
        values = [v for _, v in series]
        gain = late_gain(values, maximize, window)
        if gain is None or gain[0] < min_gain:
            continue
        g, w = gain
        what = f"+{g:.4f}" if maximize else f"-{100 * g:.1f}%"
        reason = (f"{metric} {what} over the last {w} epoch{'s' if w > 1 else ''} "
                  f"({values[-1 - w]:.4f} -> {values[-1]:.4f} at epoch {series[-1][0]})")
        flags.append(Flag(t.number, trial_name(t), state_name(t), reason))
    return flags
