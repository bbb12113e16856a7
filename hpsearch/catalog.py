"""Checks for spec validation across the torch-side registries (imports torch).

`name_checks()` maps a training key to a check of one fixed value or one choice: registry names
(model, optimizer, ...) and the shape of numbers, so `lr: 1e-3` (text to YAML) or `dropout: 1.5`
fail at create-study with the field's path instead of in the first trial on a GPU node.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from hpsearch.registry import unknown_name_message

Check = Callable[[object], str | None]


def _fixed(kind: str, names: tuple[str, ...] | list[str]) -> Check:
    def check(name: object) -> str | None:
        return None if name in names else unknown_name_message(kind, name, names)

    return check


def _is_num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _number(key: str, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = True,
            integer: bool = False) -> Check:
    """A number in [low, high) by default; text that looks like a number gets the YAML hint."""
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    what = "an integer" if integer else "a number"
    bounds = f" >= {low:g}" if high == math.inf and not low_open else (
        f" > {low:g}" if high == math.inf else f" in {lo}{low:g}, {high:g}{hi}")

    def check(value: object) -> str | None:
        ok = _is_num(value) and (not integer or float(value).is_integer())  # type: ignore[arg-type]
        if ok:
            v = float(value)  # type: ignore[arg-type]
            ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        if ok:
            return None
        hint = ""
        if isinstance(value, str) and "e" in value.lower() and "." not in value:
            # PyYAML follows YAML 1.1: 1e-3 is a string, 1.0e-3 a float.
            hint = f" (YAML reads {value} as text; write it with a dot, e.g. 1.0e-3)"
        return f"must be {what}{bounds}, but got {key}={value!r}{hint}"

    return check


def _int_list(key: str, allow_empty: bool, allow_none: bool) -> Check:
    def check(value: object) -> str | None:
        if value is None and allow_none:
            return None
        if (isinstance(value, list) and (value or allow_empty)
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
            return None
        return f"must be a list of positive integers, but got {key}={value!r}"

    return check


def _bool(key: str) -> Check:
    return lambda v: None if isinstance(v, bool) else f"must be true or false, but got {key}={v!r}"


def _augment(value: object) -> str | None:
    from hpsearch.data import AUGMENTATIONS

    if isinstance(value, bool) or value in AUGMENTATIONS:
        return None
    return f"must be true, false or one of {', '.join(AUGMENTATIONS)}, but got augment={value!r}"


def _betas(value: object) -> str | None:
    if isinstance(value, list) and len(value) == 2 and all(_is_num(b) and 0 <= b < 1 for b in value):
        return None
    return f"must be two numbers in [0, 1), but got betas={value!r}"


def _path_or_none(value: object) -> str | None:
    return None if value is None or isinstance(value, str) else f"must be a file path, but got weights={value!r}"


def _value_checks() -> dict[str, Check]:
    checks: dict[str, Check] = {
        "lr": _number("lr", 0, low_open=True), "eps": _number("eps", 0, low_open=True),
        "gamma": _number("gamma", 0, low_open=True), "alpha": _number("alpha", 0, 1, high_open=False),
        "momentum": _number("momentum", 0, 1), "dropout": _number("dropout", 0, 1),
        "weight_decay": _number("weight_decay", 0), "grad_clip": _number("grad_clip", 0),
        "betas": _betas, "batch_norm": _bool("batch_norm"), "augment": _augment, "weights": _path_or_none,
        "widths": _int_list("widths", allow_empty=True, allow_none=True),
        "filters": _int_list("filters", allow_empty=False, allow_none=False),
        "fc_sizes": _int_list("fc_sizes", allow_empty=True, allow_none=True),
    }
    for key in ("epochs", "batch_size", "hidden_size", "step_size", "kernel_size"):
        checks[key] = _number(key, 1, integer=True)
    for key in ("hidden_layers", "patience", "input_size"):
        checks[key] = _number(key, 0, integer=True)
    for key in ("filters1", "filters2", "filters3"):
        number = _number(key, 1, integer=True)
        checks[key] = lambda v, number=number: None if v is None else number(v)
    return checks


def name_checks() -> dict[str, Check]:
    """key -> check of one fixed value or choice; "dataset" checks the dataset's name."""
    from hpsearch import data, models, optim

    return {
        **_value_checks(),
        "model": models.MODELS.check,
        "optimizer": optim.OPTIMIZERS.check,
        "loss": optim.LOSSES.check,
        "schedule": optim.SCHEDULES.check,
        "activation": _fixed("activation", list(models.ACTIVATIONS)),
        "init": _fixed("init", models.INITS),
        "mode": _fixed("mode", models.MODES),
        "stem": _fixed("stem", models.STEMS),
        "dataset": data.DATASETS.check,
    }


def dataset_problems(dataset: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field path, message) for dataset: keys its built-in loader does not read."""
    from hpsearch import data

    return [(f"dataset.{key}", msg) for key, msg in data.option_problems(dataset)]
