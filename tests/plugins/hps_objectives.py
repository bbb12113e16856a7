"""User objectives for tests: `objective: hps_objectives:NAME` in a spec."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import optuna


def quadratic(trial: optuna.Trial, spec: dict[str, Any]) -> float:
    """A torch-free objective with per-step reports; records whether torch got imported."""
    x = float(trial.params.get("x", 0.0))
    trial.set_user_attr("torch_imported", "torch" in sys.modules)
    steps = int(spec["train"].get("steps", 3))
    value = 0.0
    for step in range(1, steps + 1):
        value = (x - 0.3) ** 2 + 1.0 / step
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


def sleepy(trial: optuna.Trial, spec: dict[str, Any]) -> float:
    """Sleeps in small steps (for fault and scale tests); honours the worker's stop flag."""
    from hpsearch import Preempted, should_stop

    seconds = float(os.environ.get("HPS_SLEEP", spec["train"].get("sleep", 1.0)))
    steps = int(spec["train"].get("steps", 2))
    for step in range(1, steps + 1):
        end = time.monotonic() + seconds / steps
        while time.monotonic() < end:
            if should_stop():
                raise Preempted(f"stop requested at step {step}")
            time.sleep(0.05)
        trial.report(float(step), step)
    return float(trial.params.get("x", 0.0))


def broken(trial: optuna.Trial, spec: dict[str, Any]) -> float:
    """A user plugin with a bug."""
    raise ZeroDivisionError("user plugin bug: division by zero")


def nan_value(trial: optuna.Trial, spec: dict[str, Any]) -> float:
    return math.nan


def last_word(trial: optuna.Trial, spec: dict[str, Any]) -> float:
    """Reports, then says so and lingers before returning: a test stops the worker in that window
    (after its last report, before it records the result) to play a worker presumed dead."""
    for step in range(1, 3):
        trial.report(float(step), step)
    print(f"last word of trial {trial.number}", flush=True)
    time.sleep(float(os.environ.get("HPS_LAST_WORD", "0")))
    return float(trial.params.get("x", 0.0))


def suicidal(trial: optuna.Trial, spec: dict[str, Any]) -> float:
    """Kills the worker that runs it (an out-of-memory kill, a segfault) when x < 0.5."""
    import signal

    x = float(trial.params.get("x", 0.0))
    if x < 0.5:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


# What `returns` gives back for its `result` parameter: every kind of result that is not a number.
RESULTS: dict[str, Any] = {"ok": 0.25, "nan": math.nan, "inf": math.inf, "-inf": -math.inf, "abc": "abc",
                           "none": None, "tuple": (0.1, 0.2)}


def returns(trial: optuna.Trial, spec: dict[str, Any]) -> Any:
    """Reports, then returns what its `result` parameter names; "pruned" is pruned after two reports."""
    for step in (1, 2):
        trial.report(0.5, step)
    if trial.params["result"] == "pruned":
        raise optuna.TrialPruned()  # bare, as optuna's examples do
    return RESULTS[trial.params["result"]]
