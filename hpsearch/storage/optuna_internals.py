"""Every use of Optuna's (and optuna-dashboard's) private names, behind named functions.

hpsearch needs a few things Optuna does not expose: a trial's and a study's storage ids, the
storage under a study, suggesting from a prebuilt distribution, the cache around an RDB storage,
its session factory and ORM models, the journal backend's lock, the dashboard's artifact lookup.
They are reached here and nowhere else, so a new Optuna release is checked against one file, and
the version is checked when hpsearch first touches storage: a different Optuna stops with one
line instead of failing somewhere deep inside a trial.
"""

from __future__ import annotations

from typing import Any

import optuna

from hpsearch.errors import HpsearchError

OPTUNA_VERSION = "5.0.0"  # the release whose internals this module was written against (pyproject pins it)


def check_version(found: str = optuna.__version__) -> None:
    if found != OPTUNA_VERSION:
        raise HpsearchError(f"hpsearch needs optuna=={OPTUNA_VERSION} (it relies on Optuna internals that change "
                            f"between releases), but found optuna {found}; reinstall with `pip install -e .`")


check_version()


# --- trials and studies -------------------------------------------------------------------------
def trial_id(trial: optuna.trial.BaseTrial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of a trial (Optuna's number counts within a study; the id is global)."""
    return trial._trial_id  # type: ignore[union-attr]


def study_id(study: optuna.Study) -> int:
    return study._study_id


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study was loaded with (Optuna wraps an RDB storage in its cache)."""
    return study._storage


def suggest(trial: optuna.trial.BaseTrial, name: str, distribution: optuna.distributions.BaseDistribution) -> Any:
    """Suggest `name` from a ready-made distribution (what suggest_float/int/categorical build)."""
    return trial._suggest(name, distribution)  # type: ignore[attr-defined]


def study_trials(study: optuna.Study, deepcopy: bool, states: Any, use_cache: bool) -> list[optuna.trial.FrozenTrial]:
    """Optuna's own trial read with its cache flag (what samplers call through the study)."""
    return study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)


# --- artifacts ------------------------------------------------------------------------------------
def file_store_path(store: Any) -> str | None:
    """The directory of a FileSystemArtifactStore (None for other stores)."""
    path = getattr(store, "_base_path", None)
    return None if path is None else str(path)


def dashboard_artifact_meta(storage: Any, study_id: int, trial_id: int | None, artifact_id: str) -> Any:
    """optuna-dashboard's record of an artifact (None when it has none); KeyError for an unknown id."""
    from optuna_dashboard.artifact._backend import get_study_artifact_meta, get_trial_artifact_meta

    if trial_id is None:
        return get_study_artifact_meta(storage, study_id, artifact_id)
    return get_trial_artifact_meta(storage, study_id, trial_id, artifact_id)


# --- storages -------------------------------------------------------------------------------------
def cached(rdb: optuna.storages.RDBStorage) -> optuna.storages.BaseStorage:
    """An RDB storage behind Optuna's cache, as optuna.load_study would wrap it."""
    return optuna.storages._CachedStorage(rdb)
