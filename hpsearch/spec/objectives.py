"""The spec's objectives and constraints: `metric`/`direction`, `metrics`/`directions`, `constraints`.

One objective keeps the form it always had (`metric: val_acc`, `direction: maximize`), and its
stored form and hash stay exactly what they were. Several are a list with one direction each,
`metrics: [val_acc, n_params]` (directions from `directions: [...]`, else each metric's default)
or a mapping `metrics: {val_acc: maximize, n_params: minimize}`. A stored multi-objective spec
holds both forms (`metric` and `direction` name the first objective), which reads back here.
"""

from __future__ import annotations

import re
from typing import Any

from hpsearch import schema
from hpsearch.metrics import BOUNDS, BUILTIN, DIRECTIONS, default_direction, is_number
from hpsearch.spec.problems import Problems, did_you_mean, short

# A user objective's metric becomes a trial attribute of that name: not one hpsearch stores itself.
METRIC_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
TAKEN = schema.trial_keys() - {m.key for m in BUILTIN.values()} - set(schema.METRICS)


def parse(raw: dict[str, Any], builtin: bool, err: Problems) -> tuple[list[str], list[str]]:
    """(metrics, directions), one direction per metric; at least one metric."""
    if raw.get("metrics") is None:
        if raw.get("directions") is not None:
            err("directions", "goes with `metrics:` (several objectives); one objective takes `direction:`")
        return _single(raw, builtin, err)
    metrics, given, mapping = _listed(raw, err)
    named = [_check_name(metric, f"metrics.{metric}" if mapping else f"metrics[{i}]", builtin, err)
             for i, metric in enumerate(metrics)]
    for metric in sorted({m for m in metrics if metrics.count(m) > 1}):
        err("metrics", f"must name each metric once, but {metric!r} is listed {metrics.count(metric)} times")
    directions = _directions(metrics, given, mapping, named, err)
    _check_single_form(raw, metrics, directions, err)
    return metrics, directions


def _single(raw: dict[str, Any], builtin: bool, err: Problems) -> tuple[list[str], list[str]]:
    metric = raw.get("metric", schema.VAL_ACC)
    if not isinstance(metric, str):
        err("metric", f"must be a metric's name, but got metric={short(metric)}")
        metric = schema.VAL_ACC
    elif builtin:  # a user objective's one metric is only a label, as it always was
        _check_name(metric, "metric", builtin, err)
    # Unchanged from the single-objective spec: its stored direction (and hash) must not move.
    default = BUILTIN[metric].direction if metric in BUILTIN else (
        "minimize" if metric.endswith("loss") else "maximize")
    direction = raw.get("direction", default)
    if direction not in DIRECTIONS:
        err("direction", f"must be maximize or minimize, but got {direction=}")
        direction = default
    return [metric], [direction]


def _listed(raw: dict[str, Any], err: Problems) -> tuple[list[str], list[Any] | None, bool]:
    """Names, the directions the spec gives (or None) and whether they came as a mapping: a list
    (+ `directions:`), a mapping of metric: direction, or one name."""
    value = raw["metrics"]
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        if raw.get("directions") is not None:
            err("directions", "must be left out when `metrics:` maps each metric to its direction")
        names = [str(k) for k in value]
        if not names:
            err("metrics", "must name at least one metric, but got an empty mapping")
        return (names, [value[k] for k in value], True) if names else ([schema.VAL_ACC], None, False)
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        err("metrics", f"must be a list of metric names or a mapping of metric: direction, but got "
                       f"metrics={short(value)}")
        return [schema.VAL_ACC], None, False
    directions = raw.get("directions")
    if directions is None:
        return list(value), None, False
    if isinstance(directions, str):
        directions = [directions]
    if not isinstance(directions, list) or len(directions) != len(value):
        err("directions", f"must give one direction per metric ({len(value)} metrics: {', '.join(value)}), "
                          f"but got directions={short(directions)}")
        return list(value), None, False
    return list(value), directions, False


def _directions(metrics: list[str], given: list[Any] | None, mapping: bool, named: list[bool],
                err: Problems) -> list[str]:
    out = []
    for i, metric in enumerate(metrics):
        if given is not None:
            direction = given[i]
            if direction not in DIRECTIONS:
                where = f"metrics.{metric}" if mapping else f"directions[{i}]"
                err(where, f"must be maximize or minimize, but got {short(direction)} for {metric}")
                direction = "maximize"
        else:
            direction = default_direction(metric)
            if direction is None and named[i]:  # a misspelt name is its own problem
                err(f"metrics[{i}]", f"{metric!r} has no default direction; give one: `directions: [...]` or "
                    f"`metrics: {{{metric}: maximize}}`")
            direction = direction or "maximize"
        out.append(direction)
    return out


def _check_single_form(raw: dict[str, Any], metrics: list[str], directions: list[str], err: Problems) -> None:
    """`metric`/`direction` beside `metrics:` may only repeat the first objective (the stored form)."""
    if "metric" in raw and raw["metric"] != metrics[0]:
        err("metric", f"give `metric:` for one objective or `metrics:` for several, not both (metric="
                      f"{short(raw['metric'])} is not the first of metrics, {metrics[0]!r})")
    if "direction" in raw and raw["direction"] != directions[0]:
        err("direction", f"give `direction:` for one objective or directions with `metrics:`, not both "
                         f"(direction={short(raw['direction'])}, but {metrics[0]} is {directions[0]}d)")


def _check_name(metric: str, where: str, builtin: bool, err: Problems) -> bool:
    """Whether the name is one the objective can report (else one line says why)."""
    if builtin:
        if metric not in BUILTIN:
            err(where, f"must be one of {', '.join(BUILTIN)}, but got {metric!r}"
                + (" (the test set is never used for selection)" if metric.startswith("test")
                   else did_you_mean(metric, BUILTIN)))
            return False
        return True
    if not METRIC_NAME_RE.fullmatch(metric):
        err(where, f"must be a name of letters, digits, '_', '.', '-', but got {short(metric)}")
        return False
    if metric in TAKEN:
        err(where, f"must not be {metric!r}: hpsearch stores that trial attribute itself; name the metric "
                   "otherwise")
        return False
    return True


# ---------------------------------------------------------------- constraints


def parse_constraints(value: Any, builtin: bool, metrics: list[str], err: Problems) -> dict[str, dict[str, float]]:
    """`constraints: {n_params: {max: 100000}, val_acc: {min: 0.9}}`: any reported metric, min and/or max."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        err("constraints", f"must be a mapping of metric: {{min: X, max: Y}}, e.g. {{n_params: {{max: 100000}}}}, "
                           f"but got constraints={short(value)}")
        return {}
    out: dict[str, dict[str, float]] = {}
    for metric, bounds in value.items():
        where = f"constraints.{metric}"
        _check_name(str(metric), where, builtin, err)
        if not isinstance(bounds, dict) or not bounds:
            err(where, f"must be a mapping with min and/or max, e.g. {{max: 100000}}, but got {short(bounds)}")
            continue
        good: dict[str, float] = {}
        for side, bound in bounds.items():
            if side not in BOUNDS:
                err(f"{where}.{side}", "unknown bound" + did_you_mean(str(side), BOUNDS) + "; known: min, max")
            elif not is_number(bound):
                err(f"{where}.{side}", f"must be a finite number, but got {side}={short(bound)}")
            else:
                good[side] = bound
        if "min" in good and "max" in good and good["min"] > good["max"]:
            err(where, f"must have min <= max, but got min={good['min']}, max={good['max']}: no value meets both")
        out[str(metric)] = good
    return out
