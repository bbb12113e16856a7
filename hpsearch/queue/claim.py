"""Claiming waiting trials: one at a time, or a group of fusion partners. Exactly once across all workers.

Every backend claims with a compare-and-set WAITING -> RUNNING: a database storage with one SQL
statement (hpsearch.storage.claims), the journal file and the gRPC proxy through the storage's
own set_trial_state_values, so a trial is never claimed twice whatever the number of workers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.queue import plan as plan_mod
from hpsearch.queue import study as study_mod
from hpsearch.schema import FIXED_PARAMS, WORKER
from hpsearch.storage import bulk, claims, optuna_internals
from hpsearch.storage.kinds import GRPC, backend_of

GROUP_WINDOW = 512  # waiting trials (oldest first) searched for a claimed trial's fusion partners


def claim(study: optuna.Study) -> optuna.Trial | None:
    """Take one waiting trial (exactly once across all workers) or return None."""
    storage = optuna_internals.storage_of(study)
    rdb = backend_of(study).rdb
    optuna_internals.forget_trials_cache(study)
    if rdb is not None:
        trial_id = claims.claim_next(rdb, optuna_internals.study_id(study))
        if trial_id is not None and rdb is not storage:
            _cache_claimed(storage, study, rdb.get_trial(trial_id))
    else:
        trial_id = _claim_any(study)
    if trial_id is None:
        return None
    return optuna.Trial(study, trial_id)


def _claim_any(study: optuna.Study) -> int | None:
    """Journal file and gRPC proxy: compare-and-set WAITING -> RUNNING through the storage.

    Optuna's own _pop_waiting_trial_id tries the waiting trials in order, so N workers asking at
    once all race for the first one and make O(N) failed attempts each. Behind the proxy, where
    every attempt is a network round trip, each worker starts at a random place among the first
    waiting trials instead; the journal keeps plan order (its log serialises claims anyway).
    """
    storage = optuna_internals.storage_of(study)
    waiting = storage.get_all_trials(optuna_internals.study_id(study), deepcopy=False, states=(TrialState.WAITING,))
    if backend_of(study).kind == GRPC and len(waiting) > 1:
        head = min(len(waiting), 64)
        start = random.randrange(head)
        waiting = waiting[start:head] + waiting[:start] + waiting[head:]
    for frozen in waiting:
        try:
            if storage.set_trial_state_values(optuna_internals.trial_id(frozen), state=TrialState.RUNNING):
                return optuna_internals.trial_id(frozen)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished by someone else since the list was read
    return None


def _cache_claimed(cached: Any, study: optuna.Study, frozen: FrozenTrial) -> None:
    """Tell Optuna's _CachedStorage about the one trial the claim took behind its back.

    Its own sync (_read_trials_from_remote_storage) re-reads every unfinished trial of the study:
    with 64 workers that is ~130 trials and ~3,000 ORM rows per claim, which made coordination
    cost grow with the number of workers. The claimed trial is registered as unfinished, so any
    later sync (TPE's constant liar reads running trials) refreshes it the usual way.
    """
    optuna_internals.cache_claimed(cached, optuna_internals.study_id(study), frozen)


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
    storage = optuna_internals.storage_of(study)
    first_id = optuna_internals.trial_id(first)
    want = key(storage.get_trial(first_id)) if k > 1 else None
    if want is None:
        return [first]
    sid = optuna_internals.study_id(study)
    rdb = backend_of(study).lean
    if rdb is not None:
        ids = claims.claim_matching(rdb, sid, GROUP_WINDOW, lambda fixed: key(_waiting_template(fixed)) == want,
                                    k - 1)
        if rdb is not storage:
            for trial_id in ids:
                _cache_claimed(storage, study, rdb.get_trial(trial_id))
    else:  # journal, SQLite, gRPC proxy: the storage's own compare-and-set, one trial at a time
        ids = []
        waiting = storage.get_all_trials(sid, deepcopy=False, states=(TrialState.WAITING,))
        for frozen in waiting[:GROUP_WINDOW]:
            if len(ids) == k - 1:
                break
            frozen_id = optuna_internals.trial_id(frozen)
            if frozen_id == first_id or key(frozen) != want:
                continue
            try:
                if storage.set_trial_state_values(frozen_id, state=TrialState.RUNNING):
                    ids.append(frozen_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # finished by someone else since the list was read
    return [first] + [optuna.Trial(study, trial_id) for trial_id in ids]


def _waiting_template(fixed_params: dict[str, Any]) -> FrozenTrial:
    """What a fusion key reads of a waiting trial, without loading the whole trial."""
    return optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={FIXED_PARAMS: fixed_params})
