"""Optuna's (and optuna-dashboard's) private names that are not storage: what a sampler reads of a
study, and the dashboard's artifact records, notes and figures.

Optuna's samplers read a study's trials through its public get_trials() and through the private
Study._get_trials(deepcopy, states, use_cache) (TPE, GP and NSGA do; the cache flag is theirs). A
view that filters what a sampler learns from must answer both, so that protocol lives here, in
one place checked against a new Optuna release (pyproject pins it; hpsearch.storage.optuna_internals
checks the version when hpsearch first touches storage). It imports nothing of hpsearch: spec/ and
search/ may use it without depending on storage/.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any

from optuna.trial import FrozenTrial, TrialState

Keep = Callable[[list[FrozenTrial]], list[FrozenTrial]]


class FilteredStudy:
    """A study whose trial lists pass through `keep` on every read a sampler makes; everything else
    is the study's, unchanged."""

    def __init__(self, study: Any, keep: Keep) -> None:
        self._study = study
        self._keep = keep

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        return self._keep(self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache))

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._keep(self._study.get_trials(deepcopy=deepcopy, states=states))

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


# --- optuna-dashboard ----------------------------------------------------------------------------


def dashboard_artifact_meta(storage: Any, study_id: int, trial_id: int | None, artifact_id: str) -> Any:
    """optuna-dashboard's record of an artifact (None when it has none); KeyError for an unknown id."""
    from optuna_dashboard.artifact._backend import get_study_artifact_meta, get_trial_artifact_meta

    if trial_id is None:
        return get_study_artifact_meta(storage, study_id, artifact_id)
    return get_trial_artifact_meta(storage, study_id, trial_id, artifact_id)


def dashboard_note(system_attrs: dict[str, Any], trial_id: int | None) -> tuple[int, str]:
    """(version, Markdown body) of optuna-dashboard's note on the study (trial_id None) or one of its
    trials, from the study's system attributes (where the dashboard keeps every note)."""
    from optuna_dashboard._note import get_note_from_system_attrs

    note = get_note_from_system_attrs(system_attrs, trial_id)
    return int(note["version"]), str(note["body"])


def save_dashboard_note(storage: Any, study_id: int, trial_id: int | None,
                        version: int, body: str) -> None:
    """Write the note as the dashboard's own editor does: `version` must be the stored one + 1, so
    an editor left open on the older version is told of the conflict instead of overwriting it."""
    from optuna_dashboard._note import save_note_with_version

    save_note_with_version(storage, study_id, trial_id, version, body)


def dashboard_plot(system_attrs: dict[str, Any], graph_object_id: str) -> str | None:
    """The JSON of a Plotly figure saved with optuna_dashboard.save_plotly_graph_object under that
    id (shown on the study's top page), or None."""
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    return get_plotly_graph_objects(system_attrs).get(graph_object_id)
