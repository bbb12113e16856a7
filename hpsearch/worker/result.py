"""A trial's result: a finite number, or the trial fails saying what it got instead.

Optuna stores NaN as a FAIL without a reason and +-inf as COMPLETE (so -inf would be the best
value of a minimised metric). hpsearch tells the storage finite numbers only. A non-finite number
is what a diverged loss gives, so it ends the trial as the built-in trainer's non-finite loss
does (failed, marked divergent); anything else (a string, None, a tuple where one value is
expected) is a bug in the objective: failed with what it returned.
"""

from __future__ import annotations

import math
from typing import Any

from hpsearch.storage.backend import mask


class BadResult(Exception):  # noqa: N818 - named for what the trial records: its result was bad
    """The objective's result is not a finite number; its message is the trial's fail_reason."""

    def __init__(self, message: str, divergent: bool) -> None:
        super().__init__(message)
        self.divergent = divergent


def checked(value: Any, metric: str) -> float:
    """`value` as a float, or BadResult: only a finite number is a result."""
    if value is None or isinstance(value, (str, bytes, bool, tuple, list, dict, set)) or not hasattr(
            value, "__float__"):
        raise BadResult(_message(metric, value), divergent=False)
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError, OverflowError):  # e.g. a tensor of several values
        raise BadResult(_message(metric, value), divergent=False) from None
    if not math.isfinite(number):
        raise BadResult(f"the objective's result must be a finite number, but got {metric}={number} "
                        "(diverged?)", divergent=True)
    return number


def _message(metric: str, value: Any) -> str:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    kind = type(value).__name__
    if isinstance(value, (tuple, list)):
        kind += ": one value is expected"
    return mask(f"the objective's result must be a finite number, but got {metric}={shown} ({kind})")
