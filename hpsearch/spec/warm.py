"""Warm start: a study begins with the best configurations of another, restricted to its own space.

In the spec: `warm_start: {from: STUDY, top: K}` (or `create-study --warm-start STUDY --top K`).
create-study reads STUDY's ranking (hpsearch.ops.warm) and stores the chosen configurations in the
spec itself, `configs: [{params, trial, rank}, ...]`. They are then the first K entries of the
study's plan (hpsearch.queue.plan.plan_item), issued exactly as grid points are: once each, however
many create-study and worker processes race, and part of the spec's hash.

A configuration is restricted to the new space: parameters the new space does not search are
dropped (the new study's fixed settings apply), ones it searches but the configuration lacks are
left to the sampler, and a configuration with a value outside the new space is skipped, not bent
into it (it would be another configuration).
"""

from __future__ import annotations

import math
from typing import Any

from hpsearch.spec.model import Param
from hpsearch.spec.problems import Problems, is_int

KEYS = ("from", "top", "configs")


def fits(value: Any, p: Param) -> bool:
    """Whether `value` is a value of the searched parameter `p`."""
    if p.is_categorical:
        return any(type(value) is type(c) and value == c for c in p.choices or [])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if p.is_int and not float(value).is_integer():
        return False
    assert p.low is not None and p.high is not None
    if not p.low <= value <= p.high:
        return False
    if p.step:
        steps = (value - p.low) / p.step
        return abs(steps - round(steps)) < 1e-9
    return True


def restrict(params: dict[str, Any], space: dict[str, Param]) -> dict[str, Any] | None:
    """The configuration in `space`: its searched parameters only; None when a value lies outside
    (or nothing of it is searched here)."""
    kept = {name: value for name, value in params.items() if name in space}
    if not kept or not all(fits(value, space[name]) for name, value in kept.items()):
        return None
    return {name: kept[name] for name in space if name in kept}  # the space's order


def parse(value: Any, sampler: dict[str, Any], budget: int | None, space: dict[str, Param],
          err: Problems) -> dict[str, Any] | None:
    """The spec's `warm_start`, checked; None when absent."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("from"), str) or not value["from"].strip():
        err("warm_start", f"must be {{from: STUDY, top: K}}, but got warm_start={value!r}")
        return None
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        err("warm_start", f"unknown field {unknown[0]!r}; known: from, top")
    top = value.get("top", 3)
    if not is_int(top) or top < 1:
        err("warm_start.top", f"must be an integer >= 1, but got top={top!r}")
        return None
    if sampler.get("name") == "grid":
        err("warm_start", "a grid study runs every point anyway: warm start is for sampled studies "
                          "(random, tpe, gp, ...)")
    elif budget is not None and top > budget:
        err("warm_start.top", f"must be at most the budget's {budget} configurations, but got top={top}")
    out: dict[str, Any] = {"from": value["from"], "top": int(top)}
    if "configs" in value:  # a stored spec: create-study chose them
        configs = value["configs"]
        if not isinstance(configs, list) or len(configs) > top or not all(_config_ok(c, space) for c in configs):
            err("warm_start.configs", "must be the configurations create-study chose (at most top, each in the space)")
            return None
        out["configs"] = [dict(c) for c in configs]
    return out


def _config_ok(config: Any, space: dict[str, Param]) -> bool:
    return (isinstance(config, dict) and isinstance(config.get("params"), dict)
            and restrict(config["params"], space) == config["params"])


def origin(warm: dict[str, Any], config: dict[str, Any]) -> str:
    """What a warm-started trial records of where its configuration came from."""
    return f"{warm['from']} trial {config.get('trial')} (rank {config.get('rank')})"
