"""Grid enumeration, conditional parameters and configuration ids."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from conftest import tiny_spec, write_spec
from hpsearch import space
from hpsearch.spec.loading import load_spec


def _spec(tmp_path: Path, **over: object):
    return load_spec(write_spec(tmp_path, tiny_spec("g", **over), "g.yaml"))


def test_grid_is_the_full_product_times_seeds(tmp_path: Path) -> None:
    spec = _spec(tmp_path, repeats=3, space={"lr": {"choices": [0.1, 0.01, 0.001]}, "optimizer": {"choices": ["sgd", "adam"]},
                                             "dropout": {"low": 0.0, "high": 0.3, "step": 0.1}})
    plan = space.planned_trials(spec)
    assert len(plan) == 3 * 2 * 4 * 3
    keys = {(tuple(sorted(p.items())), s) for p, s in plan}
    assert len(keys) == len(plan)  # no duplicate point
    assert {s for _, s in plan} == {0, 1, 2}


def test_conditional_parameters_only_where_active(tmp_path: Path) -> None:
    spec = _spec(tmp_path, space={
        "optimizer": {"choices": ["sgd", "momentum", "adam"]},
        "momentum": {"low": 0.8, "high": 0.9, "step": 0.05, "when": {"optimizer": "momentum"}},
    })
    points = space.grid(spec.space)
    assert len(points) == 2 + 3
    assert all(("momentum" in p) == (p["optimizer"] == "momentum") for p in points)
    assert sorted(p["momentum"] for p in points if "momentum" in p) == [0.8, 0.85, 0.9]


def test_float_steps_do_not_drift(tmp_path: Path) -> None:
    spec = _spec(tmp_path, space={"dropout": {"low": 0.0, "high": 0.5, "step": 0.1}})
    assert space.values(spec.space["dropout"]) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]


def test_suggest_respects_conditions_and_log(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, {
        "name": "t", "sampler": "random", "budget": 5, "space": {
            "optimizer": {"choices": ["sgd", "momentum"]},
            "momentum": {"low": 0.8, "high": 0.99, "when": {"optimizer": "momentum"}},
            "lr": {"low": 1e-5, "high": 1e-1, "log": True},
            "batch_size": {"choices": [16, 32]},
        }}, "t.yaml"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        params = space.suggest(trial, spec.space)
        assert ("momentum" in params) == (params["optimizer"] == "momentum")
        assert 1e-5 <= params["lr"] <= 1e-1
        study.tell(trial, 0.0)
    assert study.trials[0].distributions["lr"].log


def test_config_id_ignores_order_and_groups_seeds() -> None:
    assert space.config_id({"a": 1, "b": "x"}) == space.config_id({"b": "x", "a": 1})
    assert space.config_id({"a": 1}) != space.config_id({"a": 2})


@pytest.mark.parametrize("params", [{"hidden_layers": 3, "batch_size": 16, "activation": "tanh"}, {"lr": 0.001}])
def test_short_name_is_readable(params: dict) -> None:
    name = space.short_name(params)
    assert name and " " not in name and all(str(v) in name for v in params.values() if not isinstance(v, float))
