"""A study as the queue sees it: loading it, its stored spec, a worker's name, what waits and runs.

The plan and its issuing are in hpsearch.queue.plan, claims in hpsearch.queue.claim, retries in
hpsearch.queue.retries, heartbeats and the reaper in hpsearch.queue.faults, the study lock in
hpsearch.queue.lock; every one of them through the study's storage backend (hpsearch.storage.protocol).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import optuna

from hpsearch import schema
from hpsearch.errors import HpsearchError, StudyNotFound
from hpsearch.spec.model import StudySpec
from hpsearch.spec.parse import spec_from_dict
from hpsearch.storage import backends


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def load(name: str, storage: optuna.storages.BaseStorage, sampler: optuna.samplers.BaseSampler | None = None,
         pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        known = [s.study_name for s in storage.get_all_studies()]
        from hpsearch.registry import unknown_name_message

        known = known or ["(none: hpsearch create-study SPEC makes one)"]  # not a bare "known: "
        raise StudyNotFound(unknown_name_message("study", name, known).replace("is not registered", "does not exist")) from None


def stored_spec(study: optuna.Study) -> StudySpec:
    attrs = study.user_attrs
    raw = attrs.get(schema.SPEC_ATTR)
    if raw is None:
        raise HpsearchError(f"study {study.study_name!r} has no hpsearch spec; create it with hpsearch create-study")
    # Structural: checked against the registries at create-study; reading it imports neither torch
    # nor the plugins (a worker checks them once before its first claim: spec.parse.check_registries).
    return spec_from_dict(raw, source=f"study {study.study_name}", registries=False)


def has_trials(study: optuna.Study) -> bool:
    """Whether the study holds any trial, in any state (asked only on an error path: reads them all)."""
    return bool(study.get_trials(deepcopy=False))


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Several trial attributes in one database statement (one round trip, not one per key)."""
    backends.of(trial.study).set_trial_user_attrs(trial, attrs)


def active_counts(study: optuna.Study) -> tuple[int, int]:
    """(waiting, running): the only question a worker's loop asks of the whole study."""
    return backends.of(study).active_counts(study)
