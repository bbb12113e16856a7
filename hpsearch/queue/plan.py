"""Create a study and its plan once; issue the plan in chunks; queue the other seeds of a configuration.

Every trial a study will run exists in the storage as a WAITING trial before a worker takes it:
grid points (x repeat seeds) are all enqueued at create-study, and a random/TPE budget of B trials
is B parameterless "tickets" whose parameters the sampler fills in when a worker claims one.
Workers only ever claim waiting trials, so a grid point runs once and a budget is never
overshot, whatever the number of workers. A study is done when nothing waits and nothing runs.
"""

from __future__ import annotations

import os
import secrets
import time
import warnings
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch import space as space_mod
from hpsearch.errors import HpsearchError
from hpsearch.schema import (
    ARTIFACTS_ATTR,
    CONFIG_ID,
    CREATED_ATTR,
    FIXED_PARAMS,
    HASH_ATTR,
    INSTANCE_ATTR,
    IS_REPEAT,
    ISSUED_ATTR,
    PLAN_INDEX,
    PLANNED_ATTR,
    READY_ATTR,
    REPEAT_OF,
    SEED,
    SPEC_ATTR,
    WARM_START,
)
from hpsearch.spec import warm as warm_mod
from hpsearch.spec.model import StudySpec
from hpsearch.storage import backends, optuna_internals


def create(spec: StudySpec, storage: optuna.storages.BaseStorage, replace: bool = False,
           artifacts: str | None = None) -> tuple[optuna.Study, str]:
    """Create the study and its plan once. Returns (study, message).

    The spec, the first chunk of the plan and the ready flag are written under the study lock (on
    PostgreSQL in one transaction). A creation that was interrupted is finished by the next
    create-study of the same spec (or by the first worker); a study left empty by a creator that
    died at once is adopted.
    """
    spec_hash = spec.hash()
    if replace:
        try:
            optuna.delete_study(study_name=spec.name, storage=storage)
        except KeyError:
            pass
    try:
        storage.create_new_study(_directions(spec), spec.name)
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=spec.name, storage=storage, sampler=optuna.samplers.RandomSampler())
    backends.of(study).prepare()
    attrs = {SPEC_ATTR: spec.to_dict(), HASH_ATTR: spec_hash, CREATED_ATTR: time.time(),
             PLANNED_ATTR: planned_count(spec), INSTANCE_ATTR: secrets.token_hex(6)}
    if artifacts:
        attrs[ARTIFACTS_ATTR] = artifacts
    # The spec, the start of the plan and the ready flag, all or nothing (or finishing an interrupted creation).
    outcome = backends.of(study).plan(study, attrs, lambda i: _plan_template(spec, i), chunk_size())
    if outcome != "exists" and study.metric_names is None:
        # optuna-dashboard and trials_dataframe() name the objective after it ("Objective 0" otherwise).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(spec.metrics))
    what = plan_summary(spec)
    if outcome == "created":
        return study, f"created study {spec.name!r} ({spec.sampler['name']}, {what}; hash {spec_hash})"
    stored = study.user_attrs
    if stored.get(HASH_ATTR) == spec_hash:
        if outcome == "finished":
            return study, (f"study {spec.name!r} already existed with this spec but its creation had been interrupted; "
                           f"finished it ({what}; hash {spec_hash})")
        return study, f"study {spec.name!r} already exists with this spec (hash {spec_hash}); nothing to do"
    if stored.get(HASH_ATTR) is None:
        raise HpsearchError(
            f"study {spec.name!r} exists but was not created by hpsearch; pass --replace to delete and recreate it"
        )
    raise HpsearchError(
        f"study {spec.name!r} already exists with a different spec (stored hash {stored.get(HASH_ATTR)},"
        f" this spec {spec_hash}); use another --name, or --replace to delete it and its trials"
    )


def ensure_ready(study: optuna.Study, spec: StudySpec) -> None:
    """A worker never treats a half-created study as done: it finishes planning it first."""
    if not study.user_attrs.get(READY_ATTR):
        backends.of(study).finish_plan(study, planned_count(spec))


def chunk_size() -> int:
    """How many plan items are issued at a time ($HPSEARCH_ISSUE_CHUNK, 64)."""
    raw = os.environ.get("HPSEARCH_ISSUE_CHUNK", "64")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise HpsearchError(f"HPSEARCH_ISSUE_CHUNK must be an integer >= 1, but got {raw!r}")
    return value


def _directions(spec: StudySpec) -> list[optuna.study.StudyDirection]:
    """One per objective, in the spec's order."""
    return [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
            for d in spec.directions]


def plan_item(spec: StudySpec, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed params, user attrs) of the index-th trial of the study's plan."""
    if spec.is_grid:
        params, seed = _grid_plan(spec)[index]
        return params, {SEED: seed, CONFIG_ID: space_mod.config_id(params)}
    warm = spec.warm_configs()
    if index < len(warm):  # a warm start's configurations come first (hpsearch.spec.warm)
        origin = warm_mod.origin(spec.warm_start or {}, warm[index])
        return dict(warm[index]["params"]), {SEED: spec.seed, WARM_START: origin}
    return {}, {SEED: spec.seed}


_GRID_CACHE: dict[str, list[tuple[dict[str, Any], int]]] = {}


def _grid_plan(spec: StudySpec) -> list[tuple[dict[str, Any], int]]:
    key = spec.hash()
    if key not in _GRID_CACHE:
        _GRID_CACHE[key] = space_mod.planned_trials(spec)
    return _GRID_CACHE[key]


def planned_count(spec: StudySpec) -> int:
    """Entries of the plan: grid points x seeds, or the budget's tickets (one per sampled configuration)."""
    return len(_grid_plan(spec)) if spec.is_grid else int(spec.budget_trials or 0)


def plan_summary(spec: StudySpec) -> str:
    """Trials the study runs, from configurations and seeds: '40 trials planned: 20 configurations x 2 seeds'.

    A sampled configuration's other seeds are queued when its first seed completes, so a pruned or
    failed one runs fewer: its count is an upper bound.
    """
    def count(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    seeds = count(spec.repeats, "seed")
    if spec.is_grid:
        configs = len(_grid_plan(spec)) // spec.repeats
        return f"{count(configs * spec.repeats, 'trial')} planned: {count(configs, 'configuration')} x {seeds}"
    configs = int(spec.budget_trials or 0)
    if spec.repeats == 1:
        return f"{count(configs, 'trial')} planned: {count(configs, 'sampled configuration')} x {seeds}"
    return (f"up to {configs * spec.repeats} trials planned: {count(configs, 'sampled configuration')} x {seeds}, "
            "fewer where one is pruned or fails")


def _plan_template(spec: StudySpec, index: int) -> FrozenTrial:
    params, attrs = plan_item(spec, index)
    return _template(params, {**attrs, PLAN_INDEX: index})


def unissued(study: optuna.Study) -> int:
    attrs = study.user_attrs
    planned = int(attrs.get(PLANNED_ATTR, 0))
    return max(0, planned - int(attrs.get(ISSUED_ATTR, planned)))


def top_up(study: optuna.Study, spec: StudySpec, chunk: int) -> int:
    """Issue the next chunk of the plan (the trials and how far the plan is issued, exactly once). How many."""
    if chunk < 1:
        raise HpsearchError(f"the issue chunk must be >= 1, but got {chunk=}")
    return backends.of(study).issue(study, lambda i: _plan_template(spec, i), chunk)


def _template(params: dict[str, Any], user_attrs: dict[str, Any]) -> FrozenTrial:
    return optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={FIXED_PARAMS: params},
                                     user_attrs=user_attrs)


def _enqueue(study: optuna.Study, params: dict[str, Any], user_attrs: dict[str, Any]) -> None:
    study.add_trial(_template(params, user_attrs))


def enqueue_repeats(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, params: dict[str, Any],
                    seeds: list[int], mark_repeat: bool = False) -> None:
    for seed in seeds:
        attrs = {SEED: seed, CONFIG_ID: space_mod.config_id(params), REPEAT_OF: trial.number}
        if mark_repeat:
            attrs[IS_REPEAT] = True
        _enqueue(study, params, attrs)


def enqueue_seeds_of(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, seeds: list[int]) -> bool:
    """A sampled configuration completed: queue its other seeds, once, and only while `trial` is
    still this worker's (RUNNING). False when it was taken over meanwhile (its result is dropped).

    Exactly once even when the worker dies half-way or a retry of the same trial completes too:
    seeds whose (config_id, seed) the study already holds are skipped, and the check, the
    enqueues and the mark are one transaction on PostgreSQL, one critical section elsewhere.
    """
    params = dict(trial.params)
    cid = space_mod.config_id(params)

    def templates(frozen: FrozenTrial, existing: set[tuple[str, int]]) -> list[FrozenTrial]:
        return [_template(params, {SEED: s, CONFIG_ID: cid, REPEAT_OF: frozen.number})
                for s in seeds if (cid, s) not in existing]

    return backends.of(study).enqueue_if_running(study, optuna_internals.trial_id(trial), templates)
