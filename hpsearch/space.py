"""The search space: spec parameters -> trial.suggest_*, grid enumeration, conditions, config ids.

`suggest(trial, spec.space)` is what both the built-in trainer and a user objective's trial go
through first: every active parameter through Optuna's public suggest_float/suggest_int/
suggest_categorical, in an order where a condition's parameter comes before the ones it gates.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from typing import TYPE_CHECKING, Any

import optuna

if TYPE_CHECKING:
    from hpsearch.spec.model import Param, StudySpec


GRID_LIMIT = 1_000_000


def ordered(space: dict[str, Param]) -> list[Param]:
    """Parameters in an order where every condition's parameter comes first (spec order otherwise)."""
    done: dict[str, Param] = {}

    def visit(p: Param) -> None:
        if p.name in done:
            return
        for other in p.when:
            visit(space[other])
        done[p.name] = p

    for p in space.values():
        visit(p)
    return list(done.values())


def active(p: Param, params: dict[str, Any]) -> bool:
    return all(other in params and params[other] in values for other, values in p.when.items())


def suggest(trial: optuna.trial.BaseTrial, space: dict[str, Param]) -> dict[str, Any]:
    """Suggest every active parameter; inactive conditional ones are simply absent."""
    params: dict[str, Any] = {}
    for p in ordered(space):
        if not active(p, params):
            continue
        params[p.name] = suggest_one(trial, p)
    return params


def suggest_one(trial: optuna.trial.BaseTrial, p: Param) -> Any:
    """One parameter through Optuna's public suggest_categorical/suggest_int/suggest_float."""
    if p.is_categorical:
        return trial.suggest_categorical(p.name, p.choices)  # type: ignore[arg-type]
    if p.is_int:
        return trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)  # type: ignore[arg-type]
    return trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)  # type: ignore[arg-type]


def values(p: Param) -> list[Any]:
    """The finite set of values of a parameter for a grid."""
    if p.is_categorical:
        return list(p.choices or [])
    if p.is_int:
        return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))  # type: ignore[arg-type]
    assert p.step is not None, "grid over a continuous range is rejected by spec validation"
    n = int(round((p.high - p.low) / p.step))  # type: ignore[operator]
    # Round to the step's precision so 0.1 + 0.2 style drift cannot create near-duplicates.
    digits = max(0, -int(f"{p.step:e}".split("e")[1])) + 6
    return [round(p.low + i * p.step, digits) for i in range(n + 1)]  # type: ignore[operator]


def n_values(p: Param) -> int:
    """len(values(p)), by arithmetic: a range of 10^12 integers is counted, not listed."""
    if p.is_categorical:
        return len(p.choices or [])
    if p.is_int:
        return (int(p.high) - int(p.low)) // int(p.step or 1) + 1  # type: ignore[arg-type]
    assert p.step is not None, "grid over a continuous range is rejected by spec validation"
    steps = (p.high - p.low) / p.step  # type: ignore[operator]
    return int(round(steps)) + 1 if math.isfinite(steps) else sys.maxsize


def grid_size(space: dict[str, Param], limit: int = GRID_LIMIT) -> int:
    """How many points grid(space) has, without listing them; any count above `limit` is limit + 1.

    Points are grouped by the values of the parameters that conditions look at (the only values
    that decide whether a later parameter is active), each group with its multiplicity. Every
    group holds at least one point, so the groups never outnumber the points.
    """
    watched = {other for p in space.values() for other in p.when}
    groups: dict[tuple[tuple[str, Any], ...], int] = {(): 1}
    for p in ordered(space):
        nxt: dict[tuple[tuple[str, Any], ...], int] = {}
        n = n_values(p)
        for key, count in groups.items():
            if not active(p, dict(key)):
                nxt[key] = nxt.get(key, 0) + count
            elif p.name in watched:
                if n > limit:
                    return limit + 1
                for v in values(p):
                    k = (*key, (p.name, v))
                    nxt[k] = nxt.get(k, 0) + count
            else:
                nxt[key] = nxt.get(key, 0) + count * n
        groups = nxt
        if sum(groups.values()) > limit:
            return limit + 1
    return sum(groups.values())


def grid(space: dict[str, Param]) -> list[dict[str, Any]]:
    """Every combination of the space, with conditional parameters only where their condition holds."""
    points: list[dict[str, Any]] = [{}]
    for p in ordered(space):
        vals = values(p)
        nxt: list[dict[str, Any]] = []
        for point in points:
            if active(p, point):
                nxt.extend({**point, p.name: v} for v in vals)
            else:
                nxt.append(point)
        points = nxt
        if len(points) > GRID_LIMIT:
            from hpsearch.errors import HpsearchError

            raise HpsearchError(f"space: the grid has more than {GRID_LIMIT:,} points; narrow it or use tpe/random")
    # Same dict twice cannot arise, but be explicit: exactly-once starts with a duplicate-free plan.
    seen: set[str] = set()
    unique = []
    for point in points:
        key = config_id(point)
        if key not in seen:
            seen.add(key)
            unique.append(point)
    return unique


def config_id(params: dict[str, Any]) -> str:
    """Stable id of a configuration (the parameters without the seed): groups repeats together."""
    blob = json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def planned_trials(spec: StudySpec) -> list[tuple[dict[str, Any], int]]:
    """(params, seed) of every trial a grid study runs: each point times each repeat seed."""
    return [(point, spec.seed + r) for point in grid(spec.space) for r in range(spec.repeats)]


# Abbreviations of the usual keys; others get their words' initials (or first two letters).
ABBREVIATIONS = {
    "model": "md", "epochs": "ep", "batch_size": "bs", "optimizer": "opt", "lr": "lr", "momentum": "mom",
    "weight_decay": "wd", "loss": "loss", "schedule": "sch", "dropout": "do", "hidden_layers": "hl",
    "hidden_size": "hs", "widths": "wi", "activation": "ac", "init": "init", "batch_norm": "bn",
    "filters": "f", "filters1": "f1", "filters2": "f2", "filters3": "f3", "fc_sizes": "fc",
    "kernel_size": "ks", "augment": "aug", "mode": "mode", "grad_clip": "gc", "patience": "pat",
}


def _abbreviation(key: str) -> str:
    if key in ABBREVIATIONS:
        return ABBREVIATIONS[key]
    words = [w for w in key.split("_") if w]
    abbr = "".join(w[0] for w in words) if len(words) > 1 else key[:2]
    return abbr + "".join(ch for ch in key if ch.isdigit()) if key[-1:].isdigit() else abbr


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.3g}"
    elif isinstance(value, (list, tuple)):
        text = "-".join(_value_text(v) for v in value)
    else:
        text = str(value)
    # Names end up in file names and W&B run names: keep them to a safe alphabet.
    return "".join(ch if ch.isalnum() or ch in ".-+" or ch == "_" else "-" for ch in text)


def short_name(params: dict[str, Any], limit: int | None = None) -> str:
    """A readable, stable trial name from its configuration, e.g. hl_3_bs_16_ac_tanh.

    Every parameter appears (in spec order), so two configurations never share a name; if two
    keys abbreviate alike, the later one keeps its full name.
    """
    parts, used = [], set()
    for key, value in list(params.items())[:limit]:
        abbr = _abbreviation(key)
        if abbr in used:
            abbr = key
        used.add(abbr)
        parts.append(f"{abbr}_{_value_text(value)}")
    return "_".join(parts)
