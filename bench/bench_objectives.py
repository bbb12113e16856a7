"""Torch-free objectives for scale benchmarks and tests: they run the same claim/report/tell path."""

from __future__ import annotations

import math
import time
from typing import Any

import optuna


def sleep(trial: optuna.Trial, spec: dict[str, Any]) -> float:
    """Sleeps `train.sleep` seconds in `train.steps` reported steps (a stand-in for training)."""
    seconds = float(spec["train"].get("sleep", 5.0))
    steps = int(spec["train"].get("steps", 5))
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        trial.report(float(step), step)
    return _value(trial)


def instant(trial: optuna.Trial, spec: dict[str, Any]) -> float:
    """No work at all: a trial's wall time is then pure coordination (claim, suggest, reports, tell)."""
    for step in range(1, int(spec["train"].get("steps", 5)) + 1):
        trial.report(_value(trial) + 1.0 / step, step)
    return _value(trial)


def _value(trial: optuna.Trial) -> float:
    # A smooth function with one optimum, so TPE's search quality can be compared.
    x = [float(v) for k, v in sorted(trial.params.items()) if isinstance(v, (int, float))]
    return sum((xi - 0.3 * (i + 1)) ** 2 for i, xi in enumerate(x)) + 0.1 * math.sin(5 * sum(x))
