"""A study's objectives and constraints as `best`, `report` and `export` rank by them.

Goals holds what the spec optimizes (each metric and its direction) and bounds (constraints);
it reads each objective of a trial and which bounds the trial breaks. pareto_ranks sorts points
(configurations' means over seeds) into Pareto fronts: front 1 is the non-dominated set, front 2
what is non-dominated once front 1 is removed, and so on (Deb et al.'s non-dominated sorting).

A point dominates another when it is at least as good in every objective and better in one. A
bulk read of the storage holds only the first objective as Optuna's value; every objective is also
a trial attribute (hpsearch.metrics), which is where the others are read from then.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpsearch.metrics import key_of


@dataclass(frozen=True)
class Goals:
    metrics: tuple[str, ...] = ("value",)
    maximize: tuple[bool, ...] = (True,)
    constraints: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: Any, maximize: bool = True) -> Goals:
        """The spec's goals; without a spec (a plain Optuna study) one objective named `value`."""
        if spec is None:
            return cls(("value",), (maximize,))
        return cls(tuple(spec.metrics), tuple(d == "maximize" for d in spec.directions),
                   {m: dict(b) for m, b in spec.constraints.items()})

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1

    def keys(self) -> list[str]:
        """Trial attributes a bulk read must fetch: the objectives after the first, the bounded metrics."""
        return list(dict.fromkeys(key_of(m) for m in (*self.metrics[1:], *self.constraints)))

    def values(self, trial: Any) -> list[float] | None:
        """Each objective's value of a finished trial, None unless every one is a finite number."""
        told = list(getattr(trial, "values", None) or [])
        if not told:
            return None
        if len(told) < len(self.metrics):
            told = told[:1] + [_number(trial.user_attrs.get(key_of(m))) for m in self.metrics[1:]]
        out = told[:len(self.metrics)]
        return [float(v) for v in out] if all(_finite(v) for v in out) else None

    def value_of(self, trial: Any, metric: str) -> float | None:
        if metric in self.metrics:
            values = self.values(trial)
            return None if values is None else values[self.metrics.index(metric)]
        return _number(trial.user_attrs.get(key_of(metric)))

    def broken(self, trial: Any) -> list[tuple[str, str, float, float]]:
        """(metric, "max" or "min", value, bound) of each bound the trial breaks."""
        out = []
        for metric, bounds in self.constraints.items():
            value = self.value_of(trial, metric)
            if value is None:
                continue
            if "max" in bounds and value > bounds["max"]:
                out.append((metric, "max", value, float(bounds["max"])))
            if "min" in bounds and value < bounds["min"]:
                out.append((metric, "min", value, float(bounds["min"])))
        return out


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """`a` is at least as good as `b` in every objective and better in one."""
    better = False
    for x, y, up in zip(a, b, maximize, strict=True):
        if (x < y) if up else (x > y):
            return False
        better = better or x != y
    return better


def pareto_ranks(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """The front (1, 2, ...) of each point: fast non-dominated sorting, O(objectives x points²)
    comparisons as one numpy array."""
    import numpy as np

    if not points:
        return []
    signed = np.asarray(points, dtype=float) * np.where(np.asarray(maximize), -1.0, 1.0)  # all minimized
    le = (signed[:, None, :] <= signed[None, :, :]).all(axis=2)
    lt = (signed[:, None, :] < signed[None, :, :]).any(axis=2)
    dominated_by = (le & lt).T  # [j, i]: i dominates j
    count = dominated_by.sum(axis=1)
    ranks = np.zeros(len(points), dtype=int)
    front, rank = np.flatnonzero(count == 0), 1
    while front.size:
        ranks[front] = rank
        count = count - dominated_by[:, front].sum(axis=1)
        count[ranks > 0] = -1
        front, rank = np.flatnonzero(count == 0), rank + 1
    return ranks.tolist()


def first_objective(trial: Any) -> Any:
    """The trial valued by its first objective alone: what the report's history, slice, contour,
    importance and learning-curve views read with several objectives (as Optuna's own plots take
    `target=lambda t: t.values[0]`). A trial of one objective is returned as it is."""
    if not trial.values or len(trial.values) == 1:
        return trial
    from optuna.trial import FrozenTrial

    from hpsearch.storage.optuna_internals import trial_id

    return FrozenTrial(number=trial.number, state=trial.state, value=None, values=[trial.values[0]],
                       datetime_start=trial.datetime_start, datetime_complete=trial.datetime_complete,
                       params=trial.params, distributions=trial.distributions, user_attrs=trial.user_attrs,
                       system_attrs=trial.system_attrs, intermediate_values=trial.intermediate_values,
                       trial_id=trial_id(trial))


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(float(v))
