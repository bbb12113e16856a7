"""hpsearch/objective.py: the contract a user objective meets and the dispatch, on in-memory studies."""

from __future__ import annotations

import math
import sys

import optuna
import pytest

from conftest import ROOT
from hpsearch import objective
from hpsearch.errors import HpsearchError
from hpsearch.spec.parse import spec_from_dict

sys.path.insert(0, str(ROOT / "tests" / "plugins"))


def _user_spec(**over: object) -> object:
    return spec_from_dict({"name": "o", "objective": "hps_objectives:quadratic", "metric": "loss",
                           "direction": "minimize", "sampler": "grid", "train": {"steps": 2},
                           "space": {"x": {"choices": [0.3, 0.5]}}, **over})


def test_run_calls_the_user_objective_with_its_space_suggested_and_recorded() -> None:
    spec = _user_spec()
    trial = optuna.create_study(direction="minimize").ask()

    def no_trainer() -> None:
        raise AssertionError("a user objective never builds the trainer's context")

    value = objective.run(trial, spec, no_trainer)
    x = trial.params["x"]
    assert x in (0.3, 0.5) and value == pytest.approx((x - 0.3) ** 2 + 0.5)
    assert trial.user_attrs["config"] == {"steps": 2, "x": x, "seed": 0} and trial.user_attrs["name"]


def test_the_configuration_goes_through_the_recorder_the_worker_lends() -> None:
    recorded: list[dict[str, object]] = []
    trial = optuna.create_study(direction="minimize").ask()
    objective.run(trial, _user_spec(), lambda: None, lambda t, attrs: recorded.append(attrs))
    assert len(recorded) == 1 and recorded[0]["config"] == {"steps": 2, "x": trial.params["x"], "seed": 0}
    assert "config" not in trial.user_attrs  # written by the recorder alone


def test_without_an_objective_the_built_in_trainer_runs() -> None:
    spec = spec_from_dict({"name": "b", "dataset": {"name": "digits"}, "sampler": "random", "budget": {"trials": 1},
                           "space": {"lr": {"low": 0.001, "high": 0.1, "log": True}}}, registries=False)
    assert objective.run(optuna.create_study().ask(), spec, lambda: 0.75) == 0.75


def test_a_user_objective_that_does_not_import_is_one_line() -> None:
    spec = _user_spec(objective="hps_no_such_module:f")
    with pytest.raises(HpsearchError, match="cannot import module 'hps_no_such_module'"):
        objective.run(optuna.create_study().ask(), spec, lambda: None)


@pytest.mark.parametrize(("value", "divergent"), [(math.nan, True), (math.inf, True), ("0.5", False), (None, False)])
def test_only_a_finite_number_is_a_result(value: object, divergent: bool) -> None:
    with pytest.raises(objective.BadResult) as info:
        objective.checked(value, "loss")
    assert objective.is_divergent(info.value) is divergent
    assert objective.checked(0.25, "loss") == 0.25


def test_divergent_is_divergent_and_preempted_is_not() -> None:
    assert objective.is_divergent(objective.Divergent("loss became nan"))
    assert not objective.is_divergent(objective.Preempted("asked to stop"))
    assert not objective.is_divergent(ValueError("Divergent"))


def test_should_stop_is_false_outside_a_worker_and_the_worker_s_flag_inside() -> None:
    from hpsearch.worker.stopping import Stopping

    saved, stop = objective._stop_check[0], Stopping()
    try:
        objective.stop_when(objective._never)
        assert objective.should_stop() is False
        objective.stop_when(stop.asked_to_stop)  # what a worker installs when it starts
        assert objective.should_stop() is False
        stop.requested.set()
        assert objective.should_stop() is True
    finally:
        objective.stop_when(saved)
