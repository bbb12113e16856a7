"""Claiming waiting trials: one at a time, or a group of fusion partners. Exactly once across all workers.

Every backend claims with a compare-and-set WAITING -> RUNNING (hpsearch.storage.protocol: claim,
claim_matching), so a trial is never claimed twice whatever the number of workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.queue import plan as plan_mod
from hpsearch.queue import study as study_mod
from hpsearch.schema import WORKER
from hpsearch.storage import backends, bulk, optuna_internals

GROUP_WINDOW = 512  # waiting trials (oldest first) searched for a claimed trial's fusion partners


def claim(study: optuna.Study) -> optuna.Trial | None:
    """Take one waiting trial (exactly once across all workers) or return None."""
    optuna_internals.forget_trials_cache(study)
    trial_id = backends.of(study).claim(study)
    return None if trial_id is None else optuna.Trial(study, trial_id)


def fair_share(study: optuna.Study, k: int, here: Iterable[str]) -> int:
    """How many trials a worker that just claimed one may fuse: k while plenty waits, else its share.

    Near a study's end the trials left (waiting, not yet issued, and the one just claimed) are
    divided among the live workers: this machine's workers of the study (`here`, idle ones too:
    they are waiting for exactly these trials) and the other machines' workers that hold a running
    trial. Two workers on an 8-point grid each train four; a group is k while k per worker waits.
    """
    local = set(here)
    waiting, running = study_mod.active_counts(study)
    if waiting + 1 >= k * (len(local) + running):  # more than enough even if every running trial were a worker's
        return k
    left = waiting + 1 + plan_mod.unissued(study)
    workers = local | {str(t.user_attrs[WORKER]) for t in bulk.trials(study, keys=(WORKER,), states=(TrialState.RUNNING,))
                       if t.user_attrs.get(WORKER)}
    return max(1, min(k, math.ceil(left / max(1, len(workers)))))


def claim_group(study: optuna.Study, first: optuna.Trial, k: int,
                key: Callable[[FrozenTrial], str | None]) -> list[optuna.Trial]:
    """After claim(): `first` and up to k-1 more waiting trials with the same fusion key.

    `key` sees a waiting trial's fixed parameters (system attr fixed_params) and says what shapes
    its computation; None means "never fused" (a sampled ticket, whose parameters the sampler has
    not chosen yet, or a model the fused trainer does not run). Each partner is taken with the
    same compare-and-set as claim(), so a trial is never claimed twice; fewer partners (or none)
    when other workers got there first.
    """
    first_id = optuna_internals.trial_id(first)
    want = key(optuna_internals.storage_of(study).get_trial(first_id)) if k > 1 else None
    if want is None:
        return [first]
    ids = backends.of(study).claim_matching(study, first_id, lambda frozen: key(frozen) == want, k - 1, GROUP_WINDOW)
    return [first] + [optuna.Trial(study, trial_id) for trial_id in ids]
