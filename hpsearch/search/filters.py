"""A sampler wrapper that controls which trials the sampler learns from.

- Trials queued by `hpsearch repeat` (user attr `is_repeat`) are extra seeds of configurations the
  sampler already chose: they are never fed back as new samples.
- `window: N` (a TPE option in the spec) keeps only the N most recent finished trials in the
  sampler's model. TPE's cost per trial grows with the number of finished trials; a window bounds
  it for studies of tens of thousands of trials (bench/scale.py measures cost and search quality).
  Running trials are always kept, so constant liar still spreads parallel workers out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch.optuna_private import FilteredStudy
from hpsearch.schema import IS_REPEAT


def _keep(trials: list[FrozenTrial], window: int | None) -> list[FrozenTrial]:
    """Drop repeats; with a window, keep the last `window` finished trials and the unfinished among them.

    Trials come sorted by number, so a backward scan stops after `window` finished trials: the cost
    is O(window), not O(study), which is the point of having a window at 50k trials.
    """
    if not window:
        return [t for t in trials if not t.user_attrs.get(IS_REPEAT)]
    kept: list[FrozenTrial] = []
    finished = 0
    for t in reversed(trials):
        if t.user_attrs.get(IS_REPEAT):
            continue
        if t.state.is_finished():
            if finished == window:
                break
            finished += 1
        kept.append(t)
    kept.reverse()
    return kept


class FilteredSampler(optuna.samplers.BaseSampler):
    def __init__(self, inner: optuna.samplers.BaseSampler, window: int | None = None) -> None:
        self.inner = inner
        self.window = window

    def _view(self, study: Any) -> Any:
        """The study as the sampler should see it (repeats out, and only the window of finished trials)."""
        return FilteredStudy(study, lambda trials: _keep(trials, self.window))

    def infer_relative_search_space(self, study: Any, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study: Any, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.inner.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study: Any, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.inner.sample_independent(self._view(study), trial, param_name, param_distribution)

    def before_trial(self, study: Any, trial: FrozenTrial) -> None:
        self.inner.before_trial(self._view(study), trial)

    def after_trial(self, study: Any, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self.inner.after_trial(self._view(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
