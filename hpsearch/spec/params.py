"""The `space:` section: each searched parameter (choices or a range) and its `when:` conditions."""

from __future__ import annotations

import math
from typing import Any

from hpsearch.spec.model import Param
from hpsearch.spec.problems import Problems, did_you_mean, is_int, is_num, short

PARAM_KEYS = {"choices", "low", "high", "log", "step", "type", "when"}


def parse_space(space_raw: dict[Any, Any], err: Problems) -> dict[str, Param]:
    """Every valid parameter, in spec order (an invalid one is left out, its problems said)."""
    space = {str(k): parse_param(str(k), v, err) for k, v in space_raw.items()}
    return {k: p for k, p in space.items() if p is not None}


def parse_param(name: str, value: Any, err: Problems) -> Param | None:
    where = f"space.{name}"
    # --- shape: a list is its choices; anything else must be a mapping of known fields -------
    if isinstance(value, list):
        value = {"choices": value}
    if not isinstance(value, dict):
        err(where, f"must be a mapping with choices or low/high (fixed values go under train:), but got {value!r}")
        return None
    ok = _known_fields(value, where, err)
    when = _when(value.get("when"), where, err)
    # --- choices, or a range -------------------------------------------------------------
    if "choices" in value:
        param = _choices(name, value, where, when, err)
        return param if ok else None
    return _range(name, value, where, when, err, ok)


def _known_fields(value: dict[Any, Any], where: str, err: Problems) -> bool:
    ok = True
    for key in value:
        if key not in PARAM_KEYS:
            err(f"{where}.{key}", "unknown field" + did_you_mean(str(key), PARAM_KEYS)
                + f"; known: {', '.join(sorted(PARAM_KEYS))}")
            ok = False
    return ok


def _choices(name: str, value: dict[str, Any], where: str, when: dict[str, list[Any]], err: Problems) -> Param | None:
    choices = value["choices"]
    if not isinstance(choices, list) or not choices:
        err(f"{where}.choices", f"must be a non-empty list, but got choices={choices!r}")
        return None
    if any(not isinstance(c, (str, int, float, bool)) and c is not None for c in choices):
        err(f"{where}.choices", "must hold only strings, numbers, booleans or null")
        return None
    if any(isinstance(c, float) and not math.isfinite(c) for c in choices):
        err(f"{where}.choices", f"must hold finite numbers, but got choices={short(choices)}")
        return None
    same = _first_repeat(choices)
    if same is not None:
        # Python equality, as Optuna's categorical index lookup uses: 1, 1.0 and true are one
        # value, so the grid would store one point several times.
        err(f"{where}.choices", f"must not repeat a value (1, 1.0 and true are equal), but got "
            f"{same[0]!r} and {same[1]!r} in choices={short(choices)}")
        return None
    extra = {"low", "high", "log", "step"} & set(value)
    if extra:
        err(where, f"choices cannot be combined with {', '.join(sorted(extra))}")
        return None
    return Param(name=name, choices=list(choices), when=when)


def _first_repeat(choices: list[Any]) -> tuple[Any, Any] | None:
    """The first pair of choices equal under Python equality (quadratic: choices lists are short)."""
    for i, a in enumerate(choices):
        for b in choices[:i]:
            if a == b:
                return b, a
    return None


def _range(name: str, value: dict[str, Any], where: str, when: dict[str, list[Any]], err: Problems,
           ok: bool) -> Param | None:
    """low/high (log, step, type): the fields' own types first, then how they fit together."""
    fields = _range_fields(value, where, err)
    if fields is None:
        return None
    low, high, log, step, kind = fields
    is_int_ = kind == "int" or (kind is None and is_int(low) and is_int(high) and (step is None or is_int(step)))
    if not (_range_fits(low, high, log, step, is_int_, where, err) and ok):
        return None
    if is_int_:
        return Param(name=name, low=int(low), high=int(high), log=log,
                     step=int(step) if step is not None else None, is_int=True, when=when)
    return Param(name=name, low=float(low), high=float(high), log=log,
                 step=float(step) if step is not None else None, when=when)


def _range_fields(value: dict[str, Any], where: str, err: Problems) -> tuple[Any, Any, bool, Any, Any] | None:
    """(low, high, log, step, type), or None after the first field of the wrong type."""
    low, high = value.get("low"), value.get("high")
    if not is_num(low) or not is_num(high):
        err(where, f"must have numeric low and high (or choices), but got low={low!r}, high={high!r}")
        return None
    log = value.get("log", False)
    if not isinstance(log, bool):
        err(f"{where}.log", f"must be true or false, but got log={log!r}")
        return None
    kind = value.get("type")
    if kind not in (None, "int", "float"):
        err(f"{where}.type", f"must be int or float, but got type={kind!r}")
        return None
    return low, high, log, value.get("step"), kind


def _range_fits(low: Any, high: Any, log: bool, step: Any, is_int_: bool, where: str, err: Problems) -> bool:
    """Every problem of how low, high, log and step fit together (all of them are said)."""
    ok = True
    if low > high:
        err(where, f"must have low <= high, but got low={low}, high={high}")
        ok = False
    if log and low <= 0:
        err(f"{where}.low", f"must be > 0 for a log range, but got low={low}")
        ok = False
    if step is not None:
        if not is_num(step) or step <= 0:
            err(f"{where}.step", f"must be a positive number, but got step={step!r}")
            ok = False
        elif log and not (is_int_ and step == 1):
            err(f"{where}.step", "cannot be combined with log: true (use choices for a log grid)")
            ok = False
    if is_int_ and (not float(low).is_integer() or not float(high).is_integer()):
        err(where, f"must have integer low and high for an int range, but got low={low}, high={high}")
        ok = False
    return ok


# ---------------------------------------------------------------- conditions


def _when(value: Any, where: str, err: Problems) -> dict[str, list[Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        err(f"{where}.when", f"must map a parameter to its value(s), but got when={value!r}")
        return {}
    return {str(k): (list(v) if isinstance(v, list) else [v]) for k, v in value.items()}


def check_conditions(space: dict[str, Param], err: Problems) -> None:
    """Each `when:` names another parameter of space: and values it can take; no cycles."""
    for p in space.values():
        for other, values in p.when.items():
            if other == p.name:
                err(f"space.{p.name}.when", "a parameter cannot depend on itself")
            elif other not in space:
                err(f"space.{p.name}.when.{other}", "conditions must name a parameter of space:"
                    + did_you_mean(other, space) + f"; known: {', '.join(sorted(space)) or 'none'}")
            elif space[other].is_categorical:
                bad = [v for v in values if v not in space[other].choices]
                if bad:
                    err(f"space.{p.name}.when.{other}", f"must be among {space[other].choices}, but got {bad}")
    _check_acyclic(space, err)


def _check_acyclic(space: dict[str, Param], err: Problems) -> None:
    """Cycles would make the order of suggestion undefined."""
    state: dict[str, int] = {}

    def visit(n: str) -> bool:
        if state.get(n) == 1:
            return False
        if state.get(n) == 2 or n not in space:
            return True
        state[n] = 1
        ok = all(visit(o) for o in space[n].when)
        state[n] = 2
        return ok

    for n in space:
        if not visit(n):
            err(f"space.{n}.when", "conditions form a cycle")
            return
