"""hpsearch's PostgreSQL storage as a queue: every critical section one transaction, every claim one statement.

Claims lock rows with SKIP LOCKED, so workers claiming at the same moment take different trials
without waiting on each other. A hand-back or a reap, issuing the plan, a new study's plan and a
configuration's other seeds each commit whole or not at all, under the study's advisory lock taken
inside the transaction (hpsearch.storage.atomic): nothing is left for a sweep to repair, and the
study lock proper is only needed by `hpsearch repeat` (an advisory lock of its own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch import schema
from hpsearch.storage import atomic, bulk, claims, heartbeats, locks, optuna_internals
from hpsearch.storage.generic import OptunaBackend
from hpsearch.storage.locks import Acquire
from hpsearch.storage.postgres import LeanRDBStorage
from hpsearch.storage.protocol import Make
from hpsearch.storage.reconnect import with_reconnect

POSTGRESQL = "postgresql"


class PostgresBackend(OptunaBackend):
    name = POSTGRESQL

    def __init__(self, rdb: LeanRDBStorage) -> None:
        super().__init__(rdb)
        self.rdb = rdb

    def _key(self, study: optuna.Study) -> int:
        return atomic.study_key(study.study_name)

    # ------------------------------------------------------------ claims

    def claim(self, study: optuna.Study) -> int | None:
        cached = self._cache(study)
        got = claims.claim_next_postgres(self.rdb, optuna_internals.study_id(study), read=cached is not None)
        if got is None:
            return None
        self._register(study, cached, [got])
        return got[0]

    def claim_matching(self, study: optuna.Study, first_id: int, matches: Callable[[FrozenTrial], bool], n: int,
                       window: int) -> list[int]:
        # Candidates are read as their fixed parameters only, not as whole trials.
        cached = self._cache(study)
        got = claims.claim_matching_postgres(self.rdb, optuna_internals.study_id(study), window,
                                             lambda fixed: matches(_waiting_template(fixed)), n,
                                             read=cached is not None)
        self._register(study, cached, got)
        return [trial_id for trial_id, _ in got]

    def _cache(self, study: optuna.Study) -> optuna.storages.BaseStorage | None:
        """Optuna's cache around this storage, as the study has it (None: the study has none)."""
        storage = optuna_internals.storage_of(study)
        return None if storage is self.rdb else storage

    def _register(self, study: optuna.Study, cached: optuna.storages.BaseStorage | None,
                  claimed: list[tuple[int, FrozenTrial | None]]) -> None:
        """Tell Optuna's cache about the trials the claim took behind its back (claims.register_claimed says why)."""
        for _, frozen in claimed if cached is not None else ():
            assert frozen is not None
            optuna_internals.cache_claimed(cached, optuna_internals.study_id(study), frozen)

    # ------------------------------------------------------------ heartbeats

    def beat(self, study: optuna.Study, trial_id: int) -> None:
        # Not through the reconnecting wrapper: its backoff (up to 15 s a try) would leave beats
        # unsent for long after the database is back. The heartbeat retries on its own.
        self.rdb.record_heartbeat_once(trial_id)

    def beat_ages(self, study: optuna.Study, default_interval: float) -> dict[int, tuple[float, float]]:
        return heartbeats.ages_and_intervals(self.rdb, optuna_internals.study_id(study), schema.BEAT_INTERVAL,
                                             schema.BEAT, default_interval, postgres=True)

    # ------------------------------------------------------------ the study lock

    def _cross_process_lock(self, study_name: str, purpose: str) -> Acquire | None:
        # The queue's own critical sections take the study's advisory lock inside their transaction;
        # another purpose (`hpsearch repeat`) holds an advisory lock of its own for its whole block.
        if not purpose:
            return None
        key = atomic.study_key(f"{study_name}:{purpose}")

        def acquire() -> locks.Release:
            conn = with_reconnect(locks.advisory_xact_lock)(self.rdb.engine, key)
            return lambda: locks.release_connection(conn)

        return acquire

    # ------------------------------------------------------------ critical sections: one transaction each

    def fail_and_requeue(self, study: optuna.Study, trial_id: int, attrs: dict[str, Any],
                         successor: Callable[[FrozenTrial], FrozenTrial | None], stale_limit: float | None,
                         attrs_if_none: dict[str, Any]) -> tuple[FrozenTrial, bool] | None:
        # Staleness is judged by the database clock at the moment of the write.
        done = with_reconnect(atomic.fail_and_requeue)(self.rdb, self._key(study), optuna_internals.study_id(study),
                                                       trial_id, attrs, successor, stale_limit, schema.BEAT,
                                                       attrs_if_none)
        return None if done is None else (done[0], done[1] is not None)

    def requeue_orphans(self, study: optuna.Study, orphans: Callable[[list[FrozenTrial]], list[FrozenTrial]]) -> int:
        return 0  # a failure and its successor are one transaction: there are none

    def plan(self, study: optuna.Study, attrs: dict[str, Any], make: Make, chunk: int) -> str:
        first = self._first_chunk(int(attrs[schema.PLANNED_ATTR]), chunk)
        ready = {schema.ISSUED_ATTR: first, schema.READY_ATTR: True}
        created = with_reconnect(atomic.plan)(self.rdb, self._key(study), optuna_internals.study_id(study), attrs,
                                              schema.HASH_ATTR, make, first, ready)
        return "created" if created else "exists"

    def finish_plan(self, study: optuna.Study, planned: int) -> None:
        with_reconnect(atomic.finish_plan)(self.rdb, self._key(study), optuna_internals.study_id(study),
                                           schema.READY_ATTR, schema.PLANNED_ATTR, schema.ISSUED_ATTR,
                                           schema.PLAN_INDEX, planned)

    def issue(self, study: optuna.Study, make: Make, chunk: int) -> int:
        return with_reconnect(atomic.issue)(self.rdb, self._key(study), optuna_internals.study_id(study),
                                            schema.PLANNED_ATTR, schema.ISSUED_ATTR, make, chunk)

    def enqueue_if_running(self, study: optuna.Study, trial_id: int,
                           templates: Callable[[FrozenTrial, set[tuple[str, int]]], list[FrozenTrial]]) -> bool:
        return with_reconnect(atomic.enqueue_if_running)(self.rdb, self._key(study), optuna_internals.study_id(study),
                                                         trial_id, templates, schema.REPEATS_ENQUEUED,
                                                         schema.CONFIG_ID, schema.SEED)

    # ------------------------------------------------------------ reads and writes

    def active_counts(self, study: optuna.Study) -> tuple[int, int]:
        return claims.active_counts(self.rdb, optuna_internals.study_id(study))

    def set_trial_user_attrs(self, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
        self.rdb.set_trial_user_attrs(optuna_internals.trial_id(trial), attrs)
        optuna_internals.cached_frozen_trial(trial).user_attrs.update(attrs)  # what trial.user_attrs reads back

    def trials(self, study: optuna.Study, keys: Iterable[str], states: Iterable[TrialState] | None,
               running_keys: Iterable[str], with_params: bool) -> list[Any]:
        return bulk.postgres_trials(self.rdb, optuna_internals.study_id(study), keys, states, running_keys,
                                    with_params)

    def full_trials(self, study: optuna.Study, states: Iterable[TrialState] | None) -> list[FrozenTrial]:
        wanted = tuple(states) if states is not None else None
        return sorted(self.rdb.bulk_trials(optuna_internals.study_id(study), wanted), key=lambda t: t.number)

    def prepare(self) -> None:
        claims.ensure_indexes(self.rdb)


def _waiting_template(fixed_params: dict[str, Any]) -> FrozenTrial:
    """What a fusion key reads of a waiting trial, without loading the whole trial."""
    return optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={schema.FIXED_PARAMS: fixed_params})
