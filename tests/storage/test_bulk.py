"""The bulk reader returns exactly what Optuna's own get_trials() returns."""

from __future__ import annotations

import math

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import unique
from hpsearch.storage import bulk
from hpsearch.storage.backend import open_storage


def _same(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))


def test_full_trials_equal_optunas_trials(pg_session_db: str) -> None:
    study = optuna.create_study(study_name=unique("fast"), storage=open_storage(pg_session_db, create=True))
    dists = {"x": FloatDistribution(1e-4, 1.0, log=True), "n": IntDistribution(1, 8),
             "act": CategoricalDistribution(["relu", "tanh"])}
    for i in range(12):
        state = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL][i % 3]
        study.add_trial(optuna.trial.create_trial(
            state=state, value=(float("inf") if i == 3 else 0.1 * i) if state == TrialState.COMPLETE else None,
            params={"x": 10.0 ** -(i % 4), "n": i % 8 + 1, "act": ["relu", "tanh"][i % 2]}, distributions=dists,
            intermediate_values={1: 0.5, 2: float("nan") if i == 4 else 0.6},
            user_attrs={"curve": [{"epoch": 1, "val_acc": 0.5}], "config_id": f"c{i % 4}", "seed": i},
            system_attrs={"fixed_params": {"x": 0.1}}))
    study.enqueue_trial({"act": "relu"}, user_attrs={"seed": 99})
    # The reference is Optuna's own ORM reader (hpsearch's storage reads lean SQL: hpsearch.storage.postgres).
    plain = optuna.storages.RDBStorage(pg_session_db.replace("postgresql://", "postgresql+psycopg2://"))
    theirs = plain.get_all_trials(study._study_id, deepcopy=False)
    ours = bulk.full_trials(study)
    assert [t.number for t in ours] == [t.number for t in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert (a.state, a.params, a.distributions, a.user_attrs) == (b.state, b.params, b.distributions, b.user_attrs)
        assert a.system_attrs == b.system_attrs and a.datetime_start == b.datetime_start
        assert _same(a.value, b.value)
        assert a.intermediate_values.keys() == b.intermediate_values.keys()
        assert all(_same(a.intermediate_values[k], b.intermediate_values[k]) for k in a.intermediate_values)
    light = bulk.trials(study, keys=["seed"], states=(TrialState.COMPLETE,), with_params=True)
    assert [(t.number, t.params, t.user_attrs) for t in light] == [
        (t.number, t.params, {"seed": t.user_attrs["seed"]}) for t in theirs if t.state == TrialState.COMPLETE]
