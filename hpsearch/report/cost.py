"""What the search cost: trials by state, epochs trained and saved by pruning, time, GPU-hours.

- wall time: first trial start -> last trial finish (-> now while trials run): the span the
  search actually occupied workers, not the study's age.
- compute time: the sum of trials' own durations (`duration_s`, else start -> finish, or for a
  trial the reaper failed, start -> its last heartbeat: a dead worker's silence is no work); GPU-hours
  is the part of it spent on CUDA devices (running trials count up to now).
- epochs saved by pruning: for each pruned trial, its configured epochs minus the epoch it was
  pruned at; the share is relative to what the pruned trials would have trained unpruned.
- trials per hour: finished (complete, pruned, failed) trials over the wall time.
- divergent trials: the learning-curve section's definition (report_curves.divergence_reason),
  so the cost table and the "Divergent (N)" list count the same trials.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpsearch import schema
from hpsearch.queue.retries import stale_silence
from hpsearch.report.curves import divergence_reason
from hpsearch.report.export import state_name

ORDER = ("complete", "pruned", "fail", "running", "waiting")


@dataclass
class Cost:
    by_state: dict[str, int] = field(default_factory=dict)
    repeats: int = 0  # trials queued by `hpsearch repeat`
    retries: int = 0
    divergent: int = 0
    epochs_trained: int = 0
    epochs_saved: int = 0
    epochs_pruned_budget: int = 0  # what the pruned trials would have trained unpruned
    wall_s: float = 0.0
    compute_s: float = 0.0
    gpu_hours: float = 0.0
    trials_per_hour: float = 0.0
    still_running: bool = False

    @property
    def saved_share(self) -> float | None:
        return self.epochs_saved / self.epochs_pruned_budget if self.epochs_pruned_budget else None


def _configured_epochs(t: FrozenTrial, default: int | None) -> int | None:
    epochs = (t.user_attrs.get(schema.CONFIG) or {}).get("epochs", default)
    return int(epochs) if isinstance(epochs, (int, float)) else None


def last_alive(trial: Any) -> float:
    """When a finished trial last worked: its end, or for one the reaper failed (a dead worker's),
    its last heartbeat, so the silence before the reaper noticed is not counted as work."""
    end = float(trial.datetime_complete.timestamp())
    if trial.state == TrialState.FAIL:
        silence = stale_silence(str(trial.user_attrs.get(schema.FAIL_REASON) or ""))
        if silence is not None:
            start = trial.datetime_start.timestamp() if trial.datetime_start else end
            return max(start, end - silence)
    return end


def _duration(t: FrozenTrial, now: float) -> float:
    if isinstance(t.user_attrs.get(schema.DURATION_S), (int, float)):
        return float(t.user_attrs[schema.DURATION_S])
    if t.datetime_start is None:
        return 0.0
    end = last_alive(t) if t.datetime_complete else now
    return max(0.0, end - t.datetime_start.timestamp())


def cost(trials: Sequence[FrozenTrial], default_epochs: int | None = None, now: float | None = None) -> Cost:
    now = time.time() if now is None else now
    c = Cost()
    states = Counter(state_name(t) for t in trials)
    c.by_state = {s: states.get(s, 0) for s in ORDER} | {s: n for s, n in states.items() if s not in ORDER}
    c.still_running = bool(states.get("running") or states.get("waiting"))
    for t in trials:
        attrs = t.user_attrs
        c.repeats += bool(attrs.get(schema.IS_REPEAT))
        c.retries += schema.RETRY_OF in attrs and t.state != TrialState.WAITING
        c.divergent += t.state != TrialState.WAITING and divergence_reason(t) is not None
        c.epochs_trained += int(attrs.get(schema.EPOCHS_TRAINED) or len(attrs.get(schema.CURVE) or []))
        _add_pruning(c, t, default_epochs)
        if t.state == TrialState.WAITING:
            continue
        seconds = _duration(t, now)
        c.compute_s += seconds
        if str(attrs.get(schema.DEVICE) or "").startswith("cuda"):
            c.gpu_hours += seconds / 3600
    starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start]
    ends = [t.datetime_complete.timestamp() for t in trials if t.datetime_complete]
    if starts:
        last = now if states.get("running") else max(ends, default=now)
        c.wall_s = max(0.0, last - min(starts))
    finished = sum(states.get(s, 0) for s in ("complete", "pruned", "fail"))
    c.trials_per_hour = finished / (c.wall_s / 3600) if c.wall_s > 0 else 0.0
    return c


def _add_pruning(c: Cost, t: FrozenTrial, default_epochs: int | None) -> None:
    if t.state != TrialState.PRUNED:
        return
    at: Any = t.user_attrs.get(schema.PRUNED_AT_EPOCH) or max(t.intermediate_values, default=None)
    planned = _configured_epochs(t, default_epochs)
    if at is None or planned is None:
        return
    c.epochs_saved += max(0, planned - int(at))
    c.epochs_pruned_budget += planned
