"""User objectives that misbehave, for the time-limit and out-of-memory tests:
`objective: hps_limits:NAME` in a spec, with a `mode` parameter choosing how it misbehaves."""

from __future__ import annotations

import time
from typing import Any

import optuna

_LEAK: list[bytes] = []


def misbehave(trial: optuna.Trial, spec: dict[str, Any]) -> float:
    mode = trial.params["mode"]
    if mode == "hang":  # ignores should_stop: only the watchdog ends it
        time.sleep(3600)
    if mode == "cooperate":  # long, but stops when asked, as the contract says
        from hpsearch import Preempted, should_stop

        end = time.monotonic() + 3600
        while time.monotonic() < end:
            if should_stop():
                raise Preempted("asked to stop")
            time.sleep(0.05)
    if mode == "leak":  # keeps what it allocates: the next trial in this process has no room
        while True:
            _LEAK.append(b"x" * (64 << 20))
    if mode == "small":  # fits, unless an earlier trial leaked
        blob = b"y" * (256 << 20)
        return float(len(blob) > 0)
    return 1.0
