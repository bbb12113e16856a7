"""Spec validation: valid/invalid pairs asserting the message text; every spec in studies/ loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, tiny_spec, write_spec
from hpsearch.errors import HpsearchError
from hpsearch.spec import SpecError, load_spec


def _load(tmp_path: Path, spec: dict[str, Any]) -> Any:
    return load_spec(write_spec(tmp_path, spec, "s.yaml"))


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_study_spec_loads(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name
    assert spec.to_dict()["space"] is not None


def test_valid_spec_resolves_defaults(tmp_path: Path) -> None:
    spec = _load(tmp_path, tiny_spec("ok"))
    assert spec.is_grid and spec.direction == "maximize" and spec.repeats == 1
    assert spec.dataset["val_fraction"] == 0.2
    assert set(spec.space) == {"lr", "optimizer"}


def test_hash_is_stable_and_sensitive(tmp_path: Path) -> None:
    a = _load(tmp_path, tiny_spec("h"))
    b = _load(tmp_path, tiny_spec("h"))
    c = _load(tmp_path, tiny_spec("h", repeats=2))
    assert a.hash() == b.hash() != c.hash()


# (spec changes, expected fragment of the message) — each a field path and a reason
INVALID = [
    ({"learning_rate": 0.1}, "s.yaml: learning_rate: unknown field"),
    ({"space": {"lr": {"low": 1, "high": 0.1}}}, "space.lr: must have low <= high, but got low=1, high=0.1"),
    ({"space": {"lr": {"low": -1, "high": 0.1, "log": True}}}, "space.lr.low: must be > 0 for a log range, but got low=-1"),
    ({"space": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "space.lr.low: must be > 0 for a log range"),
    ({"space": {"lr": {"choices": []}}}, "space.lr.choices: must be a non-empty list"),
    ({"space": {"lr": {"low": 0.001, "high": 0.1}}}, "space.lr: grid search needs a finite set"),
    ({"space": {"momentum": {"low": 0.8, "high": 0.9, "step": 0.1, "when": {"optimiser": "sgd"}}}},
     "space.momentum.when.optimiser: conditions must name a parameter of space: (did you mean 'optimizer'?)"),
    ({"space": {"lr": {"choices": [0.1], "lows": 1}}}, "space.lr.lows: unknown field (did you mean 'low'?)"),
    ({"train": {"epoch": 2}}, "train.epoch: unknown training setting (did you mean 'epochs'?)"),
    ({"train": {"model": "resnt"}}, "train.model: model 'resnt' is not registered; known:"),
    ({"space": {"optimizer": {"choices": ["sgd", "adma"]}}}, "optimizer 'adma' is not registered; known:"),
    ({"dataset": {"name": "mnst"}}, "dataset.name: dataset 'mnst' is not registered; known:"),
    ({"sampler": "tpee"}, "sampler: sampler 'tpee' is not registered; known: grid, qmc, random, tpe (did you mean 'tpe'?)"),
    ({"pruner": "medain"}, "pruner: pruner 'medain' is not registered; known:"),
    ({"pruner": {"name": "median", "n_warmup": 2}}, "pruner.n_warmup: is not an option of pruner 'median'"),
    ({"sampler": "tpe"}, "budget: random and TPE studies need a trial budget"),
    ({"repeats": 0}, "repeats: must be an integer >= 1, but got repeats=0"),
    ({"metric": "test_acc"}, "metric: must be one of val_acc, val_loss, but got metric='test_acc' (the test set is never used for selection)"),
    ({"direction": "up"}, "direction: must be maximize or minimize, but got direction='up'"),
    ({"dataset": {"name": "digits", "val_fraction": 1.5}}, "dataset.val_fraction: must be a number in (0, 1)"),
    ({"train": {"lr": 0.1}}, "space.lr: is also fixed under train:"),
    ({"space": {"seed": {"choices": [1, 2]}}}, "space.seed: is reserved"),
    ({"name": "bad name!"}, "name: must be a name of letters"),
    ({"objective": "not a ref"}, "objective: must be 'package.module:function'"),
]


@pytest.mark.parametrize(("change", "message"), INVALID, ids=[m.split(":")[1].strip() + str(i) for i, (_, m) in enumerate(INVALID)])
def test_invalid_spec_names_file_and_field(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    spec = tiny_spec("bad")
    for key, value in change.items():
        if key == "space":
            spec["space"] = {**spec["space"], **value}
        elif key == "train":
            spec["train"] = {**spec["train"], **value}
        else:
            spec[key] = value
    with pytest.raises(HpsearchError) as info:
        _load(tmp_path, spec)
    text = str(info.value)
    assert message in text, text
    assert "s.yaml" in text


def test_all_errors_reported_at_once(tmp_path: Path) -> None:
    spec = tiny_spec("many", repeats=-1, direction="sideways", learning_rate=1)
    spec["space"]["wd"] = {"low": 1, "high": 0}
    with pytest.raises(SpecError) as info:
        _load(tmp_path, spec)
    problems = info.value.problems
    assert len(problems) >= 4, problems
    assert all(p.startswith(str(tmp_path / "s.yaml")) for p in problems)


def test_malformed_yaml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nspace: {lr: [0.1, 0.2\n")
    with pytest.raises(HpsearchError) as info:
        load_spec(path)
    assert "broken.yaml" in str(info.value) and "malformed YAML" in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_set_overrides_nested_fields(tmp_path: Path) -> None:
    path = write_spec(tmp_path, tiny_spec("s"), "s.yaml")
    spec = load_spec(path, sets=["train.epochs=1", "dataset.limit=64", "space.lr.choices=[0.5]"])
    assert spec.train["epochs"] == 1 and spec.dataset["limit"] == 64
    assert spec.space["lr"].choices == [0.5]


def test_plugin_objective_accepts_any_setting(tmp_path: Path) -> None:
    spec = {"name": "p", "objective": "hps_objectives:quadratic", "metric": "loss", "direction": "minimize",
            "sampler": "random", "budget": 3, "train": {"steps": 2}, "space": {"x": {"low": -1.0, "high": 1.0}}}
    loaded = _load(tmp_path, spec)
    assert loaded.objective == "hps_objectives:quadratic" and loaded.train == {"steps": 2}
