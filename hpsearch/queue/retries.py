"""Which failures run again, how often, and the waiting trial that runs them again."""

from __future__ import annotations

import os
import re

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import HpsearchError
from hpsearch.schema import (
    BEAT,
    CRASHES,
    FAIL_REASON,
    FAILED_TRIAL,
    FIXED_PARAMS,
    RETRY_EXHAUSTED,
    RETRY_HISTORY,
    RETRY_OF,
    RETRY_REASON,
    SYSTEM_RETRY_HISTORY,
    WORKER,
)

_STALE = re.compile(r"stale: no heartbeat for (\d+(?:\.\d+)?)s")


def stale_reason(age: float, limit: float) -> str:
    """The fail_reason of a trial the reaper failed: how long it had been silent, and the limit."""
    return f"stale: no heartbeat for {age:.0f}s (limit {limit:.0f}s); worker presumed dead"


def stale_silence(reason: str) -> float | None:
    """How long a reaped trial had been silent, read back from its stale_reason (None: not reaped)."""
    match = _STALE.match(reason)
    return float(match.group(1)) if match else None


def retryable(reason: str) -> bool:
    """A failure of the worker, not of the trial: the trial runs again with the same parameters."""
    return reason.startswith(("stale:", "preempted", "worker interrupted"))


def max_retries() -> int:
    raw = os.environ.get("HPSEARCH_MAX_RETRIES", "3")
    try:
        value = int(raw)
    except ValueError:
        raise HpsearchError(f"HPSEARCH_MAX_RETRIES must be an integer >= 0, but got {raw!r}") from None
    if value < 0:
        raise HpsearchError(f"HPSEARCH_MAX_RETRIES must be an integer >= 0, but got {raw!r}")
    return value


def retry_template(trial: FrozenTrial, reason: str) -> FrozenTrial | None:
    """The same parameters queued again, linked to the original trial (its checkpoint travels along).

    The link is written both ways Optuna's own tooling reads it (system attrs `failed_trial` and
    `retry_history`, as RetryHeartbeatStaleTrialCallback writes them) and as hpsearch's user attrs.
    None when the trial has crashed its worker more than HPSEARCH_MAX_RETRIES times: a trial that
    kills every worker that runs it (out of memory, a segfault) must not cycle forever; hand-backs
    (preemption, SIGTERM) never count.
    """
    crashes = int(trial.user_attrs.get(CRASHES, 0)) + (0 if reason.startswith("preempted") else 1)
    if crashes > max_retries():
        return None
    history = list(trial.user_attrs.get(RETRY_HISTORY, [])) + [trial.number]
    user_attrs = {k: v for k, v in trial.user_attrs.items() if not k.startswith(BEAT)}
    for key in (FAIL_REASON, WORKER, RETRY_EXHAUSTED):
        user_attrs.pop(key, None)
    user_attrs.update({RETRY_OF: history[0], RETRY_HISTORY: history, RETRY_REASON: reason, CRASHES: crashes})
    fixed = dict(trial.system_attrs.get(FIXED_PARAMS, {}))
    fixed.update(trial.params)
    return optuna.trial.create_trial(
        state=TrialState.WAITING,
        system_attrs={FIXED_PARAMS: fixed, FAILED_TRIAL: history[0], SYSTEM_RETRY_HISTORY: history},
        user_attrs=user_attrs,
    )
