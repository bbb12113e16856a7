"""The first wave under a median or percentile pruner: what the report says about it.

Optuna's median and percentile pruners compare a trial's value at an epoch with the *finished*
trials' values there. Every trial that starts before any trial finishes (workers x fused group
size of them at once, 16 for 2 CPU workers fusing 8) therefore runs to its end unpruned, however
bad it is, and its per-epoch values are the medians the trials after it are pruned against. That
is no bias in the ranking (each of those trials is trained fully), but it is compute the user
expected the pruner to save, and a wave full of chance-level runs sets lax medians. The report
says how large the first wave was, and how to keep it small (README "Pruning's first wave").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import TrialState

from hpsearch import schema

MEDIAN_LIKE = ("median", "percentile")
DEFAULT_STARTUP = 5  # hpsearch.search.samplers' default n_startup_trials for both


@dataclass(frozen=True)
class FirstWave:
    trials: int  # trials started before the first trial finished
    workers: int  # distinct workers among them
    fused: int  # largest fused group among them (1: none fused)
    startup: int  # the pruner's n_startup_trials
    pruner: str

    @property
    def exceeds_startup(self) -> bool:
        return self.trials > self.startup


def first_wave(trials: Sequence[Any], spec: Any) -> FirstWave | None:
    """The trials no median/percentile pruner could judge, or None when that pruner is not in use."""
    if spec is None or spec.pruner.get("name") not in MEDIAN_LIKE:
        return None
    ordinary = [t for t in trials if t.datetime_start is not None and not t.user_attrs.get(schema.IS_REPEAT)]
    ends = [t.datetime_complete for t in ordinary
            if t.datetime_complete is not None and t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if not ends:
        return None
    first_end = min(ends)
    wave = [t for t in ordinary if t.datetime_start < first_end]
    return FirstWave(
        trials=len(wave), workers=len({t.user_attrs.get(schema.WORKER) for t in wave} - {None}) or 1,
        fused=max((int(t.user_attrs.get(schema.FUSED) or 1) for t in wave), default=1),
        startup=int(spec.pruner.get("n_startup_trials", DEFAULT_STARTUP)), pruner=str(spec.pruner["name"]))


def note(wave: FirstWave | None) -> str | None:
    """The report's paragraph, when the first wave was larger than the pruner's startup."""
    if wave is None or not wave.exceeds_startup:
        return None
    how = f"{wave.workers} worker(s)" + (f" training fused groups of up to {wave.fused}" if wave.fused > 1 else "")
    return (f"Pruning's first wave: {wave.trials} trials ({how}) started before any trial finished. The "
            f"{wave.pruner} pruner compares a trial only with finished ones, so none of these could be pruned "
            f"(its n_startup_trials = {wave.startup} asked for {wave.startup} unpruned trials, not "
            f"{wave.trials}), and their per-epoch values set the medians later trials were pruned against; a "
            "first wave with chance-level runs prunes laxly. To keep it small: fuse fewer trials under a pruner "
            "(`fuse: 1`, or HPSEARCH_FUSE=1), or start one worker first and the others once a few trials have "
            "finished; set n_startup_trials to at least workers x fused group size so the spec says what happens.")
