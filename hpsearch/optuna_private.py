"""Optuna's private names that are not storage: what a sampler reads of a study.

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
