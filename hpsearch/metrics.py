"""What a study optimizes and bounds: the metrics, their default directions, and the constraints.

A spec names one metric (`metric: val_acc`) or several (`metrics: [val_acc, n_params]`, one
direction each), and may bound any reported metric (`constraints: {n_params: {max: 100000}}`).
The built-in trainer reports the metrics of BUILTIN on every trial; a user objective's metrics
are its own names (the values it returns, in the spec's order, or trial attributes it sets).

Each metric's value lives in a trial user attribute (Metric.key; a user objective's under its own
name), so every reader finds every objective the same way, also where only the first objective is
read from Optuna's table (the bulk reads of `best` and `list`).

A constraint's value is what Optuna's Trial.set_constraint takes: how far the metric is past its
bound, relative to the bound (<= 0: met), so that bounds of different scales (a parameter count,
an accuracy) weigh alike where a sampler adds violations up (NSGA-II's constrained domination).

Imports nothing heavy: create-study, `best` and `list` read it without torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hpsearch import schema


@dataclass(frozen=True)
class Metric:
    key: str  # the trial user attribute holding its value
    direction: str  # the sensible default
    per_epoch: bool  # measured every epoch: what a pruner compares and the best epoch is chosen by
    what: str
    high: float = math.inf  # its range is [0, high]


BUILTIN: dict[str, Metric] = {
    "val_acc": Metric(schema.VAL_ACC, "maximize", True, "validation accuracy at the best epoch", 1.0),
    "val_loss": Metric(schema.VAL_LOSS, "minimize", True, "validation loss at the best epoch"),
    "n_params": Metric(schema.N_PARAMETERS, "minimize", False, "trainable parameters of the model"),
    "train_time_s": Metric(schema.TRAIN_TIME_S, "minimize", False, "seconds of training, first epoch to test"),
    "latency_ms": Metric(schema.LATENCY_MS, "minimize", False,
                         "inference time of one batch (batch_size examples) on the trial's device, ms"),
    "flops": Metric(schema.FLOPS, "minimize", False, "FLOPs of one example's forward pass"),
}
DIRECTIONS = ("maximize", "minimize")
BOUNDS = ("min", "max")


def key_of(metric: str) -> str:
    """The trial user attribute holding the metric's value (a user objective's metric: its name)."""
    m = BUILTIN.get(metric)
    return m.key if m is not None else metric


def default_direction(metric: str) -> str | None:
    """The built-in metric's direction, else one read off a conventional name; None: no sensible guess."""
    if metric in BUILTIN:
        return BUILTIN[metric].direction
    name = metric.lower()
    if name.endswith(("acc", "accuracy", "auc", "f1", "precision", "recall", "score", "reward")):
        return "maximize"
    if name.endswith(("loss", "error", "err", "time", "time_s", "latency", "latency_ms", "flops", "params",
                      "size", "cost", "mse", "mae", "rmse")):
        return "minimize"
    return None


def bounds_of(metric: str) -> tuple[float, float] | None:
    """The range a metric cannot leave (None: unknown, e.g. a user objective's own value)."""
    if metric in BUILTIN:
        return 0.0, BUILTIN[metric].high
    name = metric.lower()
    if name.endswith(("acc", "accuracy")):
        return 0.0, 1.0
    if name.endswith("loss"):
        return 0.0, math.inf
    return None


def epoch_metric(metrics: list[str]) -> str:
    """The per-epoch metric that picks a trial's best epoch: the first objective measured every
    epoch, else the validation loss (a study of size and latency alone still keeps its best weights)."""
    return next((m for m in metrics if m in BUILTIN and BUILTIN[m].per_epoch), schema.VAL_LOSS)


# ---------------------------------------------------------------- constraints


def constraint_values(constraints: Mapping[str, Mapping[str, float]],
                      value_of: Callable[[str], float | None]) -> dict[str, float | None]:
    """Each bound as Optuna's constraint value, relative to the bound (<= 0: met), keyed METRIC.min
    / METRIC.max; None where the metric has no value (a pruned trial's accuracy)."""
    out: dict[str, float | None] = {}
    for metric, bounds in constraints.items():
        value = value_of(metric)
        for side in BOUNDS:
            if side not in bounds:
                continue
            bound = float(bounds[side])
            if value is None:
                out[f"{metric}.{side}"] = None
                continue
            past = value - bound if side == "max" else bound - value
            out[f"{metric}.{side}"] = past / (abs(bound) or 1.0)
    return out


def violations(constraints: Mapping[str, Mapping[str, float]], values: Mapping[str, float | None],
               fmt: Callable[[str, float], str] | None = None) -> list[str]:
    """The bounds a set of metric values breaks, as text: "n_params 120,394 > 100,000"."""
    show = fmt or format_value
    out = []
    for metric, bounds in constraints.items():
        value = values.get(metric)
        if value is None:
            continue
        if "max" in bounds and value > bounds["max"]:
            out.append(f"{metric} {show(metric, value)} > {show(metric, float(bounds['max']))}")
        if "min" in bounds and value < bounds["min"]:
            out.append(f"{metric} {show(metric, value)} < {show(metric, float(bounds['min']))}")
    return out


def describe_constraints(constraints: Mapping[str, Mapping[str, float]]) -> str:
    """"n_params <= 100,000, val_acc >= 0.9": the spec's constraints as a reader states them."""
    parts = []
    for metric, bounds in constraints.items():
        if "min" in bounds:
            parts.append(f"{metric} >= {format_value(metric, float(bounds['min']))}")
        if "max" in bounds:
            parts.append(f"{metric} <= {format_value(metric, float(bounds['max']))}")
    return ", ".join(parts)


def format_value(metric: str, value: float, digits: int = 4) -> str:
    """An accuracy or loss with `digits` decimals (as every table shows them); a count, time or cost
    readably: 120,394 parameters, 1.23 ms."""
    bounds = bounds_of(metric)
    if (bounds is not None and bounds[1] == 1.0) or metric.lower().endswith("loss"):
        return f"{value:.{digits}f}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
