"""Create (idempotent, race-safe), load, plan and claim trials; requeue stale ones.

Every trial a study will run exists in the storage as a WAITING trial before a worker takes it:
grid points (x repeat seeds) are all enqueued at create-study, and a random/TPE budget of B trials
is B parameterless "tickets" whose parameters the sampler fills in when a worker claims one.
Workers only ever claim waiting trials, so a grid point runs once and a budget is never
overshot, whatever the number of workers. A study is done when nothing waits and nothing runs.
"""

from __future__ import annotations

import os
import random
import socket
import time
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch import space as space_mod
from hpsearch.errors import HpsearchError, StudyNotFound
from hpsearch.pglean import HEARTBEAT, LeanRDBStorage
from hpsearch.spec import StudySpec, spec_from_dict

SPEC_ATTR = "hpsearch:spec"
HASH_ATTR = "hpsearch:spec_hash"
READY_ATTR = "hpsearch:ready"
CREATED_ATTR = "hpsearch:created"
PLANNED_ATTR = "hpsearch:planned"
ISSUED_ATTR = "hpsearch:issued"  # how many planned trials have been enqueued so far
PLAN_INDEX = "plan_index"
CLASS_COUNTS_ATTR = "hpsearch:class_counts"

# Trial user attributes written by hpsearch (report.py and tracking.py read these names).
SEED = "seed"
CONFIG_ID = "config_id"
RETRY_OF = "retry_of"  # number of the original trial this one retries
RETRY_HISTORY = "retry_history"
FAIL_REASON = "fail_reason"
REPEAT_OF = "repeat_of"  # number of the trial whose configuration this one repeats with a new seed
IS_REPEAT = "is_repeat"
WORKER = "worker"
BEAT = "hpsearch:beat"  # last heartbeat (unix time) where the storage has no heartbeat table
BEAT_INTERVAL = "hpsearch:heartbeat_interval"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ---------------------------------------------------------------- create / load


def create(spec: StudySpec, storage: optuna.storages.BaseStorage, replace: bool = False) -> tuple[optuna.Study, str]:
    """Create the study and its plan once. Returns (study, message)."""
    spec_hash = spec.hash()
    if replace:
        try:
            optuna.delete_study(study_name=spec.name, storage=storage)
        except KeyError:
            pass
    try:
        storage.create_new_study([_direction(spec)], spec.name)
        creator = True
    except optuna.exceptions.DuplicatedStudyError:
        creator = False
    study = optuna.load_study(study_name=spec.name, storage=storage, sampler=optuna.samplers.RandomSampler())
    _ensure_indexes(storage)

    if not creator:
        attrs = _wait_ready(study)
        if attrs.get(HASH_ATTR) == spec_hash:
            return study, f"study {spec.name!r} already exists with this spec (hash {spec_hash}); nothing to do"
        if attrs.get(HASH_ATTR) is None or not attrs.get(READY_ATTR):
            raise HpsearchError(
                f"study {spec.name!r} exists but was not created by hpsearch (or its creation was interrupted);"
                " pass --replace to delete and recreate it"
            )
        raise HpsearchError(
            f"study {spec.name!r} already exists with a different spec (stored hash {attrs.get(HASH_ATTR)},"
            f" this spec {spec_hash}); use another --name, or --replace to delete it and its trials"
        )

    study.set_user_attr(SPEC_ATTR, spec.to_dict())
    study.set_user_attr(HASH_ATTR, spec_hash)
    study.set_user_attr(CREATED_ATTR, time.time())
    planned = enqueue_plan(study, spec, chunk=issue_chunk(storage))
    # Written last: other create-study processes and workers wait for it.
    study.set_user_attr(READY_ATTR, True)
    what = "grid points x seeds" if spec.is_grid else "trials budget"
    return study, f"created study {spec.name!r} ({spec.sampler['name']}, {planned} trials planned: {what}; hash {spec_hash})"


def _ensure_indexes(storage: optuna.storages.BaseStorage) -> None:
    """Claims and counts filter trials by (study, state): index it, so they stay cheap at 50k trials."""
    rdb = _rdb(storage)
    if rdb is None or rdb.engine.dialect.name != "postgresql":
        return
    import sqlalchemy as sa

    try:
        with rdb.engine.begin() as conn:
            conn.execute(sa.text("CREATE INDEX IF NOT EXISTS hpsearch_trials_study_state_number "
                                 "ON trials (study_id, state, number)"))
    except Exception:  # noqa: BLE001 - concurrent creators race on the catalog; the index is an optimisation
        pass


def issue_chunk(storage: optuna.storages.BaseStorage) -> int | None:
    """Trials issued at a time; everything at once where workers cannot take the study lock (gRPC)."""
    if isinstance(storage, optuna.storages.GrpcStorageProxy):
        return None
    return int(os.environ.get("HPSEARCH_ISSUE_CHUNK", "64"))


def _direction(spec: StudySpec) -> optuna.study.StudyDirection:
    return optuna.study.StudyDirection.MAXIMIZE if spec.direction == "maximize" else optuna.study.StudyDirection.MINIMIZE


def _wait_ready(study: optuna.Study, timeout: float = 300.0) -> dict[str, Any]:
    """Another process created the study: wait until it has finished planning it."""
    start = time.monotonic()
    while True:
        attrs = study.user_attrs
        if attrs.get(READY_ATTR) or time.monotonic() - start > timeout:
            return attrs
        if attrs.get(HASH_ATTR) is None and time.monotonic() - start > 10:
            return attrs  # not an hpsearch study, or its creator died before writing the spec
        time.sleep(0.2)


def plan_item(spec: StudySpec, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed params, user attrs) of the index-th trial of the study's plan."""
    if spec.is_grid:
        params, seed = _grid_plan(spec)[index]
        return params, {SEED: seed, CONFIG_ID: space_mod.config_id(params)}
    return {}, {SEED: spec.seed}


_GRID_CACHE: dict[str, list[tuple[dict[str, Any], int]]] = {}


def _grid_plan(spec: StudySpec) -> list[tuple[dict[str, Any], int]]:
    key = spec.hash()
    if key not in _GRID_CACHE:
        _GRID_CACHE[key] = space_mod.planned_trials(spec)
    return _GRID_CACHE[key]


def planned_count(spec: StudySpec) -> int:
    return len(_grid_plan(spec)) if spec.is_grid else int(spec.budget_trials or 0)


def enqueue_plan(study: optuna.Study, spec: StudySpec, chunk: int | None = None) -> int:
    """Issue the first `chunk` planned trials (all when None); workers issue the rest as needed.

    Issuing lazily keeps the queue short: Optuna re-reads every unfinished trial on each sync, so
    50,000 waiting tickets would make every trial pay for all of them.
    """
    planned = planned_count(spec)
    study.set_user_attr(PLANNED_ATTR, planned)
    _issue(study, spec, 0, planned if chunk is None else min(planned, chunk))
    return planned


def _issue(study: optuna.Study, spec: StudySpec, start: int, stop: int) -> None:
    for i in range(start, stop):
        params, attrs = plan_item(spec, i)
        _enqueue(study, params, {**attrs, PLAN_INDEX: i})
    study.set_user_attr(ISSUED_ATTR, stop)


def unissued(study: optuna.Study) -> int:
    attrs = study.user_attrs
    planned = int(attrs.get(PLANNED_ATTR, 0))
    return max(0, planned - int(attrs.get(ISSUED_ATTR, planned)))


def top_up(study: optuna.Study, spec: StudySpec, chunk: int) -> int:
    """Issue the next chunk of the plan; call under the StudyLock. Returns how many were issued."""
    attrs = study.user_attrs
    planned = int(attrs.get(PLANNED_ATTR, 0))
    issued = int(attrs.get(ISSUED_ATTR, planned))
    if issued >= planned:
        return 0
    stop = min(planned, issued + chunk)
    _issue(study, spec, issued, stop)
    return stop - issued


def _enqueue(study: optuna.Study, params: dict[str, Any], user_attrs: dict[str, Any]) -> None:
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            system_attrs={"fixed_params": params},
            user_attrs=user_attrs,
        )
    )


def load(name: str, storage: optuna.storages.BaseStorage, sampler: optuna.samplers.BaseSampler | None = None,
         pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        known = [s.study_name for s in storage.get_all_studies()]
        from hpsearch.registry import unknown_name_message

        raise StudyNotFound(unknown_name_message("study", name, known).replace("is not registered", "does not exist")) from None


def stored_spec(study: optuna.Study) -> StudySpec:
    attrs = study.user_attrs
    raw = attrs.get(SPEC_ATTR)
    if raw is None:
        raise HpsearchError(f"study {study.study_name!r} has no hpsearch spec; create it with hpsearch create-study")
    return spec_from_dict(raw, source=f"study {study.study_name}")


def enqueue_repeats(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, params: dict[str, Any],
                    seeds: list[int], mark_repeat: bool = False) -> None:
    for seed in seeds:
        attrs = {SEED: seed, CONFIG_ID: space_mod.config_id(params), REPEAT_OF: trial.number}
        if mark_repeat:
            attrs[IS_REPEAT] = True
        _enqueue(study, params, attrs)


# ---------------------------------------------------------------- claiming


def claim(study: optuna.Study) -> optuna.Trial | None:
    """Take one waiting trial (exactly once across all workers) or return None."""
    storage = study._storage
    rdb = _rdb(storage)
    study._thread_local.cached_all_trials = None
    if rdb is not None:
        trial_id = _claim_rdb(rdb, study._study_id)
        if trial_id is not None and rdb is not storage:
            _cache_claimed(storage, study._study_id, rdb.get_trial(trial_id))
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
    storage = study._storage
    waiting = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))
    if isinstance(storage, optuna.storages.GrpcStorageProxy) and len(waiting) > 1:
        head = min(len(waiting), 64)
        start = random.randrange(head)
        waiting = waiting[start:head] + waiting[:start] + waiting[head:]
    for frozen in waiting:
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return frozen._trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished by someone else since the list was read
    return None


def _cache_claimed(cached: Any, study_id: int, frozen: FrozenTrial) -> None:
    """Tell Optuna's _CachedStorage about the one trial the claim took behind its back.

    Its own sync (_read_trials_from_remote_storage) re-reads every unfinished trial of the study:
    with 64 workers that is ~130 trials and ~3,000 ORM rows per claim, which made coordination
    cost grow with the number of workers. The claimed trial is registered as unfinished, so any
    later sync (TPE's constant liar reads running trials) refreshes it the usual way.
    """
    from optuna.storages._cached_storage import _StudyInfo

    with cached._lock:
        info = cached._studies.setdefault(study_id, _StudyInfo())
        cached._add_trials_to_cache(study_id, [frozen])
        info.unfinished_trial_ids.add(frozen._trial_id)


def _rdb(storage: Any) -> optuna.storages.RDBStorage | None:
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def _claim_rdb(rdb: optuna.storages.RDBStorage, study_id: int) -> int | None:
    import sqlalchemy as sa

    from hpsearch.storage import with_reconnect

    postgres = rdb.engine.dialect.name == "postgresql"
    pick = "SELECT trial_id FROM trials WHERE study_id = :s AND state = 'WAITING' ORDER BY number LIMIT 1"

    def attempt_postgres() -> int | None:
        # One statement: the row lock skips trials other workers are claiming right now, and the
        # state test makes it a compare-and-set. The heartbeat row starts in the same transaction.
        with rdb.engine.begin() as conn:
            row = conn.execute(sa.text(
                "UPDATE trials SET state = 'RUNNING', datetime_start = :now WHERE trial_id = ("
                "SELECT trial_id FROM trials WHERE study_id = :s AND state = 'WAITING' ORDER BY number LIMIT 1 "
                "FOR UPDATE SKIP LOCKED) AND state = 'WAITING' RETURNING trial_id"),
                {"s": study_id, "now": datetime.now()}).first()
            if row is not None and rdb.heartbeat_interval:
                conn.execute(HEARTBEAT, {"t": row[0]})
        return None if row is None else int(row[0])

    def attempt() -> int | None:
        for _ in range(50):
            with rdb.engine.begin() as conn:
                row = conn.execute(sa.text(pick), {"s": study_id}).first()
                if row is None:
                    return None
                # Compare-and-set: exactly one claimer flips WAITING -> RUNNING.
                done = conn.execute(
                    sa.text("UPDATE trials SET state = 'RUNNING', datetime_start = :now "
                            "WHERE trial_id = :t AND state = 'WAITING'"),
                    {"t": row[0], "now": datetime.now()},
                )
                if done.rowcount == 1:
                    if rdb.heartbeat_interval:
                        conn.execute(sa.text("DELETE FROM trial_heartbeats WHERE trial_id = :t"), {"t": row[0]})
                        conn.execute(
                            sa.text("INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (:t, CURRENT_TIMESTAMP)"),
                            {"t": row[0]},
                        )
                    return int(row[0])
        return None

    return with_reconnect(attempt_postgres if postgres else attempt)()


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Several trial attributes in one database statement (one round trip, not one per key)."""
    rdb = _rdb(trial.study._storage)
    if not isinstance(rdb, LeanRDBStorage):
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    rdb.set_trial_user_attrs(trial._trial_id, attrs)
    trial._cached_frozen_trial.user_attrs.update(attrs)  # what trial.user_attrs reads back


# ---------------------------------------------------------------- state of a study


def active_counts(study: optuna.Study) -> tuple[int, int]:
    """(waiting, running): the only question a worker's loop asks of the whole study."""
    storage = study._storage
    rdb = _rdb(storage)
    if rdb is not None:
        import sqlalchemy as sa

        from hpsearch.storage import with_reconnect

        def q() -> tuple[int, int]:
            with rdb.engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT state, count(*) FROM trials WHERE study_id = :s "
                            "AND state IN ('WAITING', 'RUNNING') GROUP BY state"),
                    {"s": study._study_id},
                ).all()
            d = {r[0]: r[1] for r in rows}
            return int(d.get("WAITING", 0)), int(d.get("RUNNING", 0))

        return with_reconnect(q)()
    trials = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    return waiting, len(trials) - waiting


# ---------------------------------------------------------------- retry


def requeue(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """Queue the same parameters again, linked to the original trial (checkpoint travels along)."""
    history = list(trial.user_attrs.get(RETRY_HISTORY, [])) + [trial.number]
    user_attrs = {k: v for k, v in trial.user_attrs.items() if not k.startswith("hpsearch:beat")}
    user_attrs.pop(FAIL_REASON, None)
    user_attrs.pop(WORKER, None)
    user_attrs[RETRY_OF] = history[0]
    user_attrs[RETRY_HISTORY] = history
    user_attrs["retry_reason"] = reason
    fixed = dict(trial.system_attrs.get("fixed_params", {}))
    fixed.update(trial.params)
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            system_attrs={"fixed_params": fixed},
            user_attrs=user_attrs,
        )
    )

