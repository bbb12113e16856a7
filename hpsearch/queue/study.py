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
import warnings
from collections.abc import Callable
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import HpsearchError, StudyNotFound

# The attribute keys live in hpsearch.schema; these names are kept here while callers move over.
from hpsearch.schema import (  # noqa: E402,F401
    ARTIFACTS_ATTR,
    BEAT,
    BEAT_INTERVAL,
    CLASS_COUNTS_ATTR,
    CONFIG_ID,
    CRASHES,
    CREATED_ATTR,
    FAIL_REASON,
    HASH_ATTR,
    IS_REPEAT,
    ISSUED_ATTR,
    PLAN_INDEX,
    PLANNED_ATTR,
    READY_ATTR,
    REPEAT_OF,
    REPEATS_ENQUEUED,
    RETRY_EXHAUSTED,
    RETRY_HISTORY,
    RETRY_OF,
    SEED,
    SPEC_ATTR,
    WORKER,
)
from hpsearch.spec import space as space_mod
from hpsearch.spec.parse import StudySpec, spec_from_dict
from hpsearch.storage.postgres import HEARTBEAT, LeanRDBStorage

optuna.logging.set_verbosity(optuna.logging.WARNING)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ---------------------------------------------------------------- create / load


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
        storage.create_new_study([_direction(spec)], spec.name)
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=spec.name, storage=storage, sampler=optuna.samplers.RandomSampler())
    _ensure_indexes(storage)
    attrs = {SPEC_ATTR: spec.to_dict(), HASH_ATTR: spec_hash, CREATED_ATTR: time.time(),
             PLANNED_ATTR: planned_count(spec)}
    if artifacts:
        attrs[ARTIFACTS_ATTR] = artifacts
    outcome = _plan_once(study, spec, attrs)
    if outcome != "exists" and study.metric_names is None:
        # optuna-dashboard and trials_dataframe() name the objective after it ("Objective 0" otherwise).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([spec.metric])
    planned = planned_count(spec)
    what = "grid points x seeds" if spec.is_grid else "trials budget"
    if outcome == "created":
        return study, f"created study {spec.name!r} ({spec.sampler['name']}, {planned} trials planned: {what}; hash {spec_hash})"
    stored = study.user_attrs
    if stored.get(HASH_ATTR) == spec_hash:
        if outcome == "finished":
            return study, (f"study {spec.name!r} already existed with this spec but its creation had been interrupted; "
                           f"finished it ({planned} trials planned: {what}; hash {spec_hash})")
        return study, f"study {spec.name!r} already exists with this spec (hash {spec_hash}); nothing to do"
    if stored.get(HASH_ATTR) is None:
        raise HpsearchError(
            f"study {spec.name!r} exists but was not created by hpsearch; pass --replace to delete and recreate it"
        )
    raise HpsearchError(
        f"study {spec.name!r} already exists with a different spec (stored hash {stored.get(HASH_ATTR)},"
        f" this spec {spec_hash}); use another --name, or --replace to delete it and its trials"
    )


def _plan_once(study: optuna.Study, spec: StudySpec, attrs: dict[str, Any]) -> str:
    """'created' (this call planned it), 'finished' (it completed an interrupted creation) or 'exists'."""
    from hpsearch.queue.faults import StudyLock, study_key

    rdb = _postgres(study._storage)
    chunk = issue_chunk(study._storage)
    first = attrs[PLANNED_ATTR] if chunk is None else min(attrs[PLANNED_ATTR], chunk)
    if rdb is not None:
        from hpsearch.storage import atomic
        from hpsearch.storage.backend import with_reconnect

        created = with_reconnect(atomic.plan)(rdb, study_key(study.study_name), study._study_id, attrs, HASH_ATTR,
                                              lambda i: _plan_template(spec, i), first,
                                              {ISSUED_ATTR: first, READY_ATTR: True})
        return "created" if created else "exists"
    with StudyLock.of(study):
        stored = study.user_attrs
        if stored.get(HASH_ATTR) is None and not study._storage.get_n_trials(study._study_id):
            # Spec first, hash second: a study with a hash always has its spec.
            study.set_user_attr(SPEC_ATTR, attrs[SPEC_ATTR])
            for key, value in attrs.items():
                if key != SPEC_ATTR:
                    study.set_user_attr(key, value)
            top_up(study, spec, first)
            study.set_user_attr(READY_ATTR, True)
            return "created"
        if stored.get(HASH_ATTR) == attrs[HASH_ATTR] and not stored.get(READY_ATTR):
            _finish_plan(study, spec)
            return "finished"
    return "exists"


def _finish_plan(study: optuna.Study, spec: StudySpec) -> None:
    """Under the study lock (journal/SQLite): complete a creation that stopped after the spec."""
    attrs = study.user_attrs
    if PLANNED_ATTR not in attrs:
        study.set_user_attr(PLANNED_ATTR, planned_count(spec))
    if ISSUED_ATTR not in attrs:  # how far it got: the plan items it enqueued carry their index
        indexes = [t.user_attrs.get(PLAN_INDEX) for t in study._storage.get_all_trials(study._study_id, deepcopy=False)]
        study.set_user_attr(ISSUED_ATTR, max([int(i) + 1 for i in indexes if i is not None], default=0))
    study.set_user_attr(READY_ATTR, True)


def ensure_ready(study: optuna.Study, spec: StudySpec) -> None:
    """A worker never treats a half-created study as done: it finishes planning it first."""
    if study.user_attrs.get(READY_ATTR):
        return
    from hpsearch.queue.faults import StudyLock

    rdb = _postgres(study._storage)
    if rdb is not None:
        # Created in one transaction by this version: not ready means an older creator died mid-way.
        from hpsearch.queue.faults import study_key
        from hpsearch.storage import atomic
        from hpsearch.storage.backend import with_reconnect

        def finish() -> None:
            with atomic.locked(rdb, study_key(study.study_name)) as session:
                stored = atomic.study_attrs(session, study._study_id, [READY_ATTR, PLANNED_ATTR])
                if stored.get(READY_ATTR):
                    return
                extra: dict[str, Any] = {READY_ATTR: True}
                if PLANNED_ATTR not in stored:
                    extra[PLANNED_ATTR] = planned_count(spec)
                    extra[ISSUED_ATTR] = _max_plan_index_rdb(session, study._study_id) + 1
                atomic.set_study_attrs(session, study._study_id, extra)

        with_reconnect(finish)()
        return
    if isinstance(study._storage, optuna.storages.GrpcStorageProxy):
        raise HpsearchError(f"study {study.study_name!r} is not ready: its creation was interrupted; "
                            "run the same hpsearch create-study again to finish it")
    with StudyLock.of(study):
        if not study.user_attrs.get(READY_ATTR):
            _finish_plan(study, spec)


def _max_plan_index_rdb(session: Any, study_id: int) -> int:
    import sqlalchemy as sa

    value = session.execute(sa.text(
        "SELECT max(CAST(a.value_json AS integer)) FROM trial_user_attributes a JOIN trials t "
        "ON t.trial_id = a.trial_id WHERE t.study_id = :s AND a.key = :k"), {"s": study_id, "k": PLAN_INDEX}).scalar()
    return -1 if value is None else int(value)


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


def issue_chunk(storage: optuna.storages.BaseStorage | None = None) -> int | None:
    """Trials issued at a time; everything at once where workers cannot take the study lock (gRPC)."""
    if isinstance(storage, optuna.storages.GrpcStorageProxy):
        return None
    raw = os.environ.get("HPSEARCH_ISSUE_CHUNK", "64")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise HpsearchError(f"HPSEARCH_ISSUE_CHUNK must be an integer >= 1, but got {raw!r}")
    return value


def _direction(spec: StudySpec) -> optuna.study.StudyDirection:
    return optuna.study.StudyDirection.MAXIMIZE if spec.direction == "maximize" else optuna.study.StudyDirection.MINIMIZE


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


def _plan_template(spec: StudySpec, index: int) -> FrozenTrial:
    params, attrs = plan_item(spec, index)
    return _template(params, {**attrs, PLAN_INDEX: index})


def unissued(study: optuna.Study) -> int:
    attrs = study.user_attrs
    planned = int(attrs.get(PLANNED_ATTR, 0))
    return max(0, planned - int(attrs.get(ISSUED_ATTR, planned)))


def top_up(study: optuna.Study, spec: StudySpec, chunk: int) -> int:
    """Issue the next chunk of the plan. Returns how many were issued.

    PostgreSQL: the trials and the new issued count commit together, under the study lock taken
    inside that transaction. Journal/SQLite (call under the StudyLock): how far the plan is issued
    is read from the trials themselves (their plan_index), so a process killed half-way through a
    chunk is resumed where it stopped, never repeated.
    """
    if chunk < 1:
        raise HpsearchError(f"the issue chunk must be >= 1, but got {chunk=}")
    rdb = _postgres(study._storage)
    if rdb is not None:
        from hpsearch.queue.faults import study_key
        from hpsearch.storage import atomic
        from hpsearch.storage.backend import with_reconnect

        return with_reconnect(atomic.issue)(rdb, study_key(study.study_name), study._study_id, PLANNED_ATTR,
                                            ISSUED_ATTR, lambda i: _plan_template(spec, i), chunk)
    attrs = study.user_attrs
    planned = int(attrs.get(PLANNED_ATTR, 0))
    recorded = int(attrs.get(ISSUED_ATTR, planned if READY_ATTR in attrs else 0))
    indexes = [t.user_attrs.get(PLAN_INDEX) for t in study._storage.get_all_trials(study._study_id, deepcopy=False)]
    issued = max([recorded] + [int(i) + 1 for i in indexes if i is not None])
    stop = min(planned, issued + chunk)
    for i in range(issued, stop):
        study.add_trial(_plan_template(spec, i))
    if stop > recorded or ISSUED_ATTR not in attrs:
        study.set_user_attr(ISSUED_ATTR, max(stop, issued))
    return max(0, stop - issued)


def _template(params: dict[str, Any], user_attrs: dict[str, Any]) -> FrozenTrial:
    return optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": params},
                                     user_attrs=user_attrs)


def _enqueue(study: optuna.Study, params: dict[str, Any], user_attrs: dict[str, Any]) -> None:
    study.add_trial(_template(params, user_attrs))


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

    rdb = _postgres(study._storage)
    if rdb is not None:
        from hpsearch.queue.faults import study_key
        from hpsearch.storage import atomic
        from hpsearch.storage.backend import with_reconnect

        return with_reconnect(atomic.enqueue_if_running)(rdb, study_key(study.study_name), study._study_id,
                                                         trial._trial_id, templates, REPEATS_ENQUEUED,
                                                         CONFIG_ID, SEED)
    from hpsearch.queue.faults import StudyLock

    with StudyLock.of(study):
        frozen = study._storage.get_trial(trial._trial_id)
        if frozen.state != TrialState.RUNNING:
            return False
        if frozen.user_attrs.get(REPEATS_ENQUEUED):
            return True
        existing = {(t.user_attrs.get(CONFIG_ID), int(t.user_attrs.get(SEED, -1)))
                    for t in study._storage.get_all_trials(study._study_id, deepcopy=False)}
        for template in templates(frozen, existing):
            study.add_trial(template)
        study._storage.set_trial_user_attr(trial._trial_id, REPEATS_ENQUEUED, True)
    return True


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


def _postgres(storage: Any) -> LeanRDBStorage | None:
    """The PostgreSQL storage under `storage` (hpsearch's lean one), or None for any other backend."""
    rdb = _rdb(storage)
    return rdb if isinstance(rdb, LeanRDBStorage) and rdb.lean else None


def _rdb(storage: Any) -> optuna.storages.RDBStorage | None:
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def _claim_rdb(rdb: optuna.storages.RDBStorage, study_id: int) -> int | None:
    import sqlalchemy as sa

    from hpsearch.storage.backend import with_reconnect

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


GROUP_WINDOW = 512  # waiting trials (oldest first) searched for a claimed trial's fusion partners


def claim_group(study: optuna.Study, first: optuna.Trial, k: int,
                key: Callable[[FrozenTrial], str | None]) -> list[optuna.Trial]:
    """After claim(): `first` and up to k-1 more waiting trials with the same fusion key.

    `key` sees a waiting trial's fixed parameters (system attr fixed_params) and says what shapes
    its computation; None means "never fused" (a sampled ticket, whose parameters the sampler has
    not chosen yet, or a model the fused trainer does not run). Each partner is taken with the
    same compare-and-set as claim(), so a trial is never claimed twice; fewer partners (or none)
    when other workers got there first.
    """
    want = key(study._storage.get_trial(first._trial_id)) if k > 1 else None
    if want is None:
        return [first]
    storage = study._storage
    rdb = _postgres(storage)
    if rdb is not None:
        ids = _claim_partners_postgres(rdb, study._study_id, want, key, k - 1)
        if rdb is not storage:
            for trial_id in ids:
                _cache_claimed(storage, study._study_id, rdb.get_trial(trial_id))
    else:  # journal, SQLite, gRPC proxy: the storage's own compare-and-set, one trial at a time
        ids = []
        waiting = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))
        for frozen in waiting[:GROUP_WINDOW]:
            if len(ids) == k - 1:
                break
            if frozen._trial_id == first._trial_id or key(frozen) != want:
                continue
            try:
                if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                    ids.append(frozen._trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # finished by someone else since the list was read
    return [first] + [optuna.Trial(study, trial_id) for trial_id in ids]


def _claim_partners_postgres(rdb: optuna.storages.RDBStorage, study_id: int, want: str,
                             key: Callable[[FrozenTrial], str | None], n: int) -> list[int]:
    import json

    import sqlalchemy as sa

    from hpsearch.storage.backend import with_reconnect

    def attempt() -> list[int]:
        # Candidates: the oldest waiting trials' fixed parameters, filtered by key here.
        with rdb.engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT t.trial_id, a.value_json FROM trials t JOIN trial_system_attributes a "
                "ON a.trial_id = t.trial_id AND a.key = 'fixed_params' "
                "WHERE t.study_id = :s AND t.state = 'WAITING' ORDER BY t.number LIMIT :w"),
                {"s": study_id, "w": GROUP_WINDOW}).all()
        matching = [int(r[0]) for r in rows if key(_waiting_template(json.loads(r[1]))) == want]
        if not matching:
            return []
        # One statement, as claim(): the row locks skip partners another worker is claiming right
        # now and the state test makes each a compare-and-set. Heartbeats start in the same transaction.
        with rdb.engine.begin() as conn:
            got = [int(r[0]) for r in conn.execute(sa.text(
                "UPDATE trials SET state = 'RUNNING', datetime_start = :now WHERE trial_id = ANY("
                "SELECT trial_id FROM trials WHERE trial_id = ANY(:ids) AND state = 'WAITING' ORDER BY number "
                "LIMIT :n FOR UPDATE SKIP LOCKED) AND state = 'WAITING' RETURNING trial_id"),
                {"ids": matching, "n": n, "now": datetime.now()}).all()]
            got.sort()  # RETURNING has no order; plan order reads better in logs
            if rdb.heartbeat_interval:
                for trial_id in got:
                    conn.execute(HEARTBEAT, {"t": trial_id})
        return got

    return with_reconnect(attempt)()


def _waiting_template(fixed_params: dict[str, Any]) -> FrozenTrial:
    """What a fusion key reads of a waiting trial, without loading the whole trial."""
    return optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": fixed_params})


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

        from hpsearch.storage.backend import with_reconnect

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
    user_attrs = {k: v for k, v in trial.user_attrs.items() if not k.startswith("hpsearch:beat")}
    for key in (FAIL_REASON, WORKER, RETRY_EXHAUSTED):
        user_attrs.pop(key, None)
    user_attrs.update({RETRY_OF: history[0], RETRY_HISTORY: history, "retry_reason": reason, CRASHES: crashes})
    fixed = dict(trial.system_attrs.get("fixed_params", {}))
    fixed.update(trial.params)
    return optuna.trial.create_trial(
        state=TrialState.WAITING,
        system_attrs={"fixed_params": fixed, "failed_trial": history[0], "retry_history": history},
        user_attrs=user_attrs,
    )
