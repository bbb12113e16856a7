"""Any Optuna storage, through Optuna's public storage API: the base every other backend refines.

Claims are the storage's own compare-and-set WAITING -> RUNNING (set_trial_state_values), so a
trial is never claimed twice whatever the number of workers. Heartbeats are a trial attribute
(unix time). A critical section is its writes under the study lock, ordered so that a process
killed between two of them leaves nothing that requeue_orphans() does not restore. Alone this
class serves Optuna's in-memory storage, where the study lock only needs to exclude threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.schema import (
    BEAT,
    BEAT_INTERVAL,
    CONFIG_ID,
    HASH_ATTR,
    ISSUED_ATTR,
    PLAN_INDEX,
    PLANNED_ATTR,
    READY_ATTR,
    REPEATS_ENQUEUED,
    SEED,
    SPEC_ATTR,
)
from hpsearch.storage import optuna_internals
from hpsearch.storage.locks import Acquire, StudyLock
from hpsearch.storage.protocol import Make

OTHER = "other"


class OptunaBackend:
    name = OTHER
    workers_keep_queue = True
    serial_writes = False

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self.storage = storage  # the storage itself, under Optuna's cache where a study has one around it
        self._locks: dict[tuple[str, str], StudyLock] = {}
        self._locks_guard = threading.Lock()

    # ------------------------------------------------------------ claims

    def claim(self, study: optuna.Study) -> int | None:
        storage = optuna_internals.storage_of(study)
        for frozen in self._claim_order(_waiting(study)):
            if _take(storage, optuna_internals.trial_id(frozen)):
                return optuna_internals.trial_id(frozen)
        return None

    def _claim_order(self, waiting: list[FrozenTrial]) -> list[FrozenTrial]:
        """The order a worker tries the waiting trials in: the plan's."""
        return waiting

    def claim_matching(self, study: optuna.Study, first_id: int, matches: Callable[[FrozenTrial], bool], n: int,
                       window: int) -> list[int]:
        """One trial at a time, each with the storage's compare-and-set."""
        storage = optuna_internals.storage_of(study)
        ids: list[int] = []
        for frozen in _waiting(study)[:window]:
            if len(ids) == n:
                break
            frozen_id = optuna_internals.trial_id(frozen)
            if frozen_id != first_id and matches(frozen) and _take(storage, frozen_id):
                ids.append(frozen_id)
        return ids

    # ------------------------------------------------------------ heartbeats

    def beat(self, study: optuna.Study, trial_id: int) -> None:
        optuna_internals.storage_of(study).set_trial_user_attr(trial_id, BEAT, time.time())

    def beat_ages(self, study: optuna.Study, default_interval: float) -> dict[int, tuple[float, float]]:
        """From the running trials' beat attribute (their start, before the first beat)."""
        out = {}
        now = time.time()
        for t in optuna_internals.storage_of(study).get_all_trials(optuna_internals.study_id(study), deepcopy=False,
                                                                   states=(TrialState.RUNNING,)):
            beat = t.user_attrs.get(BEAT)
            if beat is None and t.datetime_start is not None:
                beat = t.datetime_start.timestamp()
            if beat is not None:
                out[optuna_internals.trial_id(t)] = (now - float(beat),
                                                     float(t.user_attrs.get(BEAT_INTERVAL, default_interval)))
        return out

    def writable(self, limit: float) -> bool:
        return True

    # ------------------------------------------------------------ the study lock

    def lock(self, study: optuna.Study, purpose: str = "") -> StudyLock:
        key = (study.study_name, purpose)
        with self._locks_guard:
            if key not in self._locks:
                self._locks[key] = StudyLock(self._cross_process_lock(study.study_name, purpose))
            return self._locks[key]

    def _cross_process_lock(self, study_name: str, purpose: str) -> Acquire | None:
        """What excludes other processes (None: nothing, threads of this process only)."""
        return None

    # ------------------------------------------------------------ critical sections

    def fail_and_requeue(self, study: optuna.Study, trial_id: int, attrs: dict[str, Any],
                         successor: Callable[[FrozenTrial], FrozenTrial | None], stale_limit: float | None,
                         attrs_if_none: dict[str, Any]) -> tuple[FrozenTrial, bool] | None:
        """Two writes under the study lock: the failure (its attributes first: a finished trial's are
        frozen), then its successor; requeue_orphans() restores a successor a killed process did not write."""
        storage = optuna_internals.storage_of(study)
        with self.lock(study):
            try:
                frozen = storage.get_trial(trial_id)
            except KeyError:
                return None
            if frozen.state != TrialState.RUNNING:
                return None
            if stale_limit is not None and not self._silent_for(study, trial_id, stale_limit):
                return None
            template = successor(frozen)
            try:
                for key, value in {**attrs, **(attrs_if_none if template is None else {})}.items():
                    storage.set_trial_user_attr(trial_id, key, value)
                if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    return None
            except optuna.exceptions.UpdateFinishedTrialError:
                return None
            if template is not None:
                study.add_trial(template)
        return frozen, template is not None

    def _silent_for(self, study: optuna.Study, trial_id: int, limit: float) -> bool:
        """Whether the trial's heartbeat is still older than `limit` now, under the lock."""
        age = self.beat_ages(study, 30.0).get(trial_id, (None, 0.0))[0]
        return age is not None and age > limit

    def requeue_orphans(self, study: optuna.Study, orphans: Callable[[list[FrozenTrial]], list[FrozenTrial]]) -> int:
        with self.lock(study):
            todo = orphans(_all(study))
            for template in todo:
                study.add_trial(template)
        return len(todo)

    def plan(self, study: optuna.Study, attrs: dict[str, Any], make: Make, chunk: int) -> str:
        storage, sid = optuna_internals.storage_of(study), optuna_internals.study_id(study)
        with self.lock(study):
            stored = study.user_attrs
            if stored.get(HASH_ATTR) is None and not storage.get_n_trials(sid):
                # Spec first, hash second: a study with a hash always has its spec.
                study.set_user_attr(SPEC_ATTR, attrs[SPEC_ATTR])
                for key, value in attrs.items():
                    if key != SPEC_ATTR:
                        study.set_user_attr(key, value)
                self.issue(study, make, self._first_chunk(int(attrs[PLANNED_ATTR]), chunk))
                study.set_user_attr(READY_ATTR, True)
                return "created"
            if stored.get(HASH_ATTR) == attrs[HASH_ATTR] and not stored.get(READY_ATTR):
                self._finish(study, int(attrs[PLANNED_ATTR]))
                return "finished"
        return "exists"

    def _first_chunk(self, planned: int, chunk: int) -> int:
        """How much of the plan a new study starts with: a chunk; workers issue the rest."""
        return min(planned, chunk)

    def finish_plan(self, study: optuna.Study, planned: int) -> None:
        with self.lock(study):
            if not study.user_attrs.get(READY_ATTR):
                self._finish(study, planned)

    def _finish(self, study: optuna.Study, planned: int) -> None:
        """Under the study lock: how far the interrupted creation got is what its plan items say."""
        attrs = study.user_attrs
        if PLANNED_ATTR not in attrs:
            study.set_user_attr(PLANNED_ATTR, planned)
        if ISSUED_ATTR not in attrs:
            study.set_user_attr(ISSUED_ATTR, max(_plan_indexes(study), default=-1) + 1)
        study.set_user_attr(READY_ATTR, True)

    def issue(self, study: optuna.Study, make: Make, chunk: int) -> int:
        """How far the plan is issued is read from the trials themselves (their plan index), so a
        process killed half-way through a chunk is resumed where it stopped, never repeated."""
        with self.lock(study):
            attrs = study.user_attrs
            planned = int(attrs.get(PLANNED_ATTR, 0))
            recorded = int(attrs.get(ISSUED_ATTR, planned if READY_ATTR in attrs else 0))
            issued = max(recorded, max(_plan_indexes(study), default=-1) + 1)
            stop = min(planned, issued + chunk)
            for i in range(issued, stop):
                study.add_trial(make(i))
            if stop > recorded or ISSUED_ATTR not in attrs:
                study.set_user_attr(ISSUED_ATTR, max(stop, issued))
        return max(0, stop - issued)

    def enqueue_if_running(self, study: optuna.Study, trial_id: int,
                           templates: Callable[[FrozenTrial, set[tuple[str, int]]], list[FrozenTrial]]) -> bool:
        storage = optuna_internals.storage_of(study)
        with self.lock(study):
            frozen = storage.get_trial(trial_id)
            if frozen.state != TrialState.RUNNING:
                return False
            if frozen.user_attrs.get(REPEATS_ENQUEUED):
                return True
            existing = {(t.user_attrs.get(CONFIG_ID), int(t.user_attrs.get(SEED, -1))) for t in _all(study)}
            for template in templates(frozen, existing):
                study.add_trial(template)
            storage.set_trial_user_attr(trial_id, REPEATS_ENQUEUED, True)
        return True

    # ------------------------------------------------------------ reads and writes

    def active_counts(self, study: optuna.Study) -> tuple[int, int]:
        trials = optuna_internals.storage_of(study).get_all_trials(
            optuna_internals.study_id(study), deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
        return waiting, len(trials) - waiting

    def set_trial_user_attrs(self, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    def trials(self, study: optuna.Study, keys: Iterable[str], states: Iterable[TrialState] | None,
               running_keys: Iterable[str], with_params: bool) -> list[Any]:
        return self.full_trials(study, states)

    def full_trials(self, study: optuna.Study, states: Iterable[TrialState] | None) -> list[FrozenTrial]:
        return study.get_trials(deepcopy=False, states=tuple(states) if states is not None else None)

    def prepare(self) -> None:
        pass


def _take(storage: optuna.storages.BaseStorage, trial_id: int) -> bool:
    """The storage's compare-and-set WAITING -> RUNNING: True for exactly one claimer."""
    try:
        return bool(storage.set_trial_state_values(trial_id, state=TrialState.RUNNING))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # finished by someone else since the list was read


def _waiting(study: optuna.Study) -> list[FrozenTrial]:
    return optuna_internals.storage_of(study).get_all_trials(optuna_internals.study_id(study), deepcopy=False,
                                                             states=(TrialState.WAITING,))


def _all(study: optuna.Study) -> list[FrozenTrial]:
    return optuna_internals.storage_of(study).get_all_trials(optuna_internals.study_id(study), deepcopy=False)


def _plan_indexes(study: optuna.Study) -> list[int]:
    """The plan index of every trial of the study that is a plan item."""
    return [int(i) for t in _all(study) if (i := t.user_attrs.get(PLAN_INDEX)) is not None]
