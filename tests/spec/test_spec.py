"""Spec validation: valid/invalid pairs asserting the message text; every spec in studies/ loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, run_cli, tiny_spec, write_spec
from hpsearch.errors import HpsearchError
from hpsearch.spec.loading import load_spec
from hpsearch.spec.model import SpecError


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
    ({"sampler": "tpee"}, "sampler: sampler 'tpee' is not registered; known: cmaes, gp, grid, nsga2, nsga3, qmc, random, tpe (did you mean 'tpe'?)"),
    ({"pruner": "medain"}, "pruner: pruner 'medain' is not registered; known:"),
    ({"pruner": {"name": "median", "n_warmup": 2}}, "pruner.n_warmup: is not an option of pruner 'median'"),
    ({"sampler": "tpe"}, "budget: sampled studies (every sampler but grid) need a trial budget"),
    ({"repeats": 0}, "repeats: must be an integer >= 1, but got repeats=0"),
    ({"metric": "test_acc"}, "metric: must be one of val_acc, val_loss, n_params, train_time_s, latency_ms, flops, but got 'test_acc' (the test set is never used for selection)"),
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


@pytest.mark.parametrize("where", ["train", "space"])
def test_unknown_registry_names_are_reported_with_the_other_problems(tmp_path: Path, where: str) -> None:
    spec = tiny_spec("many")
    spec["space"]["weight_decay"] = {"low": 1.0e-2, "high": 1.0e-6, "log": True}  # a bad range
    if where == "train":
        spec["space"].pop("optimizer")
        spec["train"]["optimizer"] = "adma"
    else:
        spec["space"]["optimizer"] = {"choices": ["sgd", "adma"]}
    with pytest.raises(SpecError) as info:
        _load(tmp_path, spec)
    problems = info.value.problems
    assert any(": space.weight_decay" in p for p in problems), problems
    field = "train.optimizer" if where == "train" else "space.optimizer.choices"
    assert any(f": {field}: optimizer 'adma' is not registered" in p and "did you mean 'adam'" in p
               for p in problems), problems


def test_create_study_prints_a_bad_range_and_an_unknown_optimizer_at_once(tmp_path: Path) -> None:
    spec = tiny_spec("many")
    spec["space"]["optimizer"] = {"choices": ["sgd", "adma"]}
    spec["space"]["dropout"] = {"low": 0.5, "high": 0.1}
    proc = run_cli("create-study", str(write_spec(tmp_path, spec, "s.yaml")), "--storage",
                   f"journal:{tmp_path / 'j.log'}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert any("space.dropout" in ln for ln in lines), lines
    assert any("space.optimizer.choices: optimizer 'adma' is not registered" in ln for ln in lines), lines


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


# ---------------------------------------------------------------- hostile input (issue 11, items 10 and 12)


def alias_bomb(levels: int, key: str = "name") -> str:
    """A "billion laughs" spec: each level is nine aliases of the one before (9**levels leaves)."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\n{key}: *l{levels - 1}\n"


@pytest.mark.parametrize("key", ["name", "description", "l9"])
def test_yaml_alias_bomb_is_refused_before_it_expands(tmp_path: Path, key: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(7, key))  # 4.8 million leaves from ~500 bytes
    with pytest.raises(HpsearchError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: must expand to at most 100,000 YAML nodes, but its aliases (*name) expand to more"


def test_recursive_alias_and_oversized_file_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("name: &a [*a]\n")
    with pytest.raises(HpsearchError, match="an alias refers to a node that contains it"):
        load_spec(path)
    path.write_text("name: x\ndescription: '" + "x" * 1_000_001 + "'\n")
    with pytest.raises(HpsearchError, match=r"must be a spec of at most 1,000,000 bytes, but got 1,000,0\d\d bytes"):
        load_spec(path)


def test_a_few_anchors_and_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text("name: anchors\nsampler: grid\ntrain: &t {epochs: 1}\n"
                    "space: {lr: {choices: &lrs [0.1, 0.01]}, weight_decay: {choices: [0.0, 0.001]}}\n")
    spec = load_spec(path)
    assert spec.train == {"epochs": 1} and spec.space["lr"].choices == [0.1, 0.01]


def _changed(**change: Any) -> dict[str, Any]:
    spec = tiny_spec("bad")
    for key, value in change.items():
        spec[key] = {**spec[key], **value} if key in ("space", "train") else value
    return spec


PLUGIN = {"objective": "hps_objectives:quadratic", "metric": "loss"}  # any parameter name goes
BIG_GRID = {f"p{i}": {"choices": list(range(10))} for i in range(23)}  # 10**23 points
HOSTILE = [
    ("repeats-1e8", _changed(repeats=100_000_000), "repeats: must be at most 1,000,000 (planned trials), but got repeats=100000000"),
    ("grid-1e23", _changed(**PLUGIN, space=BIG_GRID),
     "space: must plan at most 1,000,000 trials (grid points x repeats), but the grid has more than 1,000,000 points"),
    ("grid-x-repeats", _changed(repeats=1000, space={"filters1": {"low": 1, "high": 2000}}),
     "space: must plan at most 1,000,000 trials (grid points x repeats), but the grid has 8,000 points x 1,000 repeats"),
    ("int-range-1e12", _changed(space={"filters1": {"low": 1, "high": 10**12}}), "but the grid has more than 1,000,000 points"),
    ("budget-1e9", _changed(sampler="tpe", budget=10**9), "budget.trials: must be at most 1,000,000 (planned trials), but got trials=1000000000"),
    ("budget-x-repeats", _changed(sampler="tpe", budget=1000, repeats=10_000), "budget.trials: must plan at most 1,000,000 trials (trials x repeats)"),
    ("seed-2^64", _changed(seed=2**64), "seed: must be an integer in [0, 2**32-1], but got seed=18446744073709551616"),
    ("seed-plus-repeats", _changed(seed=2**32 - 1, repeats=2), "seed: must leave room for the repeat seeds"),
    ("choices-1-true-1.0", _changed(space={"kernel_size": {"choices": [1, True, 1.0]}}),
     "space.kernel_size.choices: must not repeat a value (1, 1.0 and true are equal), but got 1 and True"),
    ("choices-0-false", _changed(space={"patience": {"choices": [0, False]}}), "but got 0 and False"),
    ("choices-nan", _changed(space={"lr": {"choices": [0.1, float("nan")]}}), "space.lr.choices: must hold finite numbers"),
    ("name-newline", _changed(name="study\n"), "name: must be a name of letters, digits, '_', '.', '-', but got name='study\\n'"),
    ("lr-range", _changed(sampler="random", budget=4, space={"lr": {"low": -0.5, "high": 0.1}}),
     "space.lr.low: must be a number > 0, but got low=-0.5"),
    ("lr-choice", _changed(space={"lr": {"choices": [0.1, 0]}}), "space.lr.choices: must be a number > 0, but got lr=0"),
    ("momentum-1", _changed(sampler="random", budget=4, space={"momentum": {"low": 0.5, "high": 1.0}}),
     "space.momentum.high: must be a number in [0, 1), but got high=1.0"),
    ("dropout-choice", _changed(space={"dropout": {"choices": [0.5, 1.5]}}), "space.dropout.choices: must be a number in [0, 1), but got dropout=1.5"),
    ("weight-decay-train", _changed(train={"weight_decay": -1e-4}), "train.weight_decay: must be a number >= 0, but got weight_decay=-0.0001"),
    ("batch-size-0", _changed(train={"batch_size": 0}), "train.batch_size: must be an integer >= 1, but got batch_size=0"),
    ("patience-range", _changed(space={"patience": {"low": -1, "high": 3}}), "space.patience.low: must be an integer >= 0, but got low=-1"),
    ("int-as-float-range", _changed(sampler="random", budget=4, space={"step_size": {"low": 1.0, "high": 3.0, "type": "float"}}),
     "space.step_size: must be an integer range (type: int), but got a float range low=1.0, high=3.0"),
    ("filters-range", _changed(space={"filters1": {"low": 0, "high": 64, "step": 16}}),
     "space.filters1.low: must be an integer >= 1, but got low=0"),
    ("widths-0", _changed(train={"widths": [64, 0]}), "train.widths: must be a list of positive integers, but got widths=[64, 0]"),
    ("betas-3", _changed(train={"betas": [0.9, 0.99, 0.999]}), "train.betas: must be two numbers in [0, 1), but got betas=[0.9, 0.99, 0.999]"),
    ("gamma-string", _changed(train={"gamma": "fast"}), "train.gamma: must be a number > 0, but got gamma='fast'"),
]


@pytest.mark.parametrize(("change", "message"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_or_impossible_values_name_their_field(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(HpsearchError) as info:
        _load(tmp_path, change)
    text = str(info.value)
    assert message in text, text
    assert len(text.splitlines()) == 1 and len(text) < 400, text


# The valid side of each pair: the edges of every accepted range load.
EDGES = [
    {"train": {"momentum": 0.0, "weight_decay": 0.0, "dropout": 0.0, "hidden_layers": 0, "grad_clip": 0.0}},
    {"train": {"epochs": 1, "batch_size": 1, "widths": [1], "betas": [0.0, 0.999], "alpha": 1.0}},
    {"sampler": "random", "budget": 4, "space": {"momentum": {"low": 0.0, "high": 0.99}, "lr": {"low": 1e-6, "high": 1.0, "log": True}}},
    {"repeats": 1000, "space": {"filters1": {"low": 1, "high": 250}}},  # 2 lr x 2 optimizers x 250 x 1000: exactly 1,000,000
    {"seed": 2**32 - 2, "repeats": 2},
    {"space": {"batch_norm": {"choices": [True, False]}, "lr": {"choices": [1, 0.5]}}},
]


@pytest.mark.parametrize("change", EDGES, ids=[str(i) for i in range(len(EDGES))])
def test_edges_of_the_accepted_ranges_load(tmp_path: Path, change: dict[str, Any]) -> None:
    spec = _load(tmp_path, _changed(**change))
    assert spec.name == "bad"


def test_plan_size_is_counted_without_enumerating_conditional_grids() -> None:
    from hpsearch import space

    for path in sorted((ROOT / "studies").glob("*.yaml")):
        spec = load_spec(path)
        if spec.is_grid:
            assert space.grid_size(spec.space) == len(space.grid(spec.space)), path.name


def test_a_plugin_objective_keeps_its_own_settings(tmp_path: Path) -> None:
    """Accepted ranges are the built-in trainer's: a plugin's `lr` may mean anything."""
    spec = {"name": "p", "objective": "hps_objectives:quadratic", "metric": "loss", "direction": "minimize",
            "sampler": "random", "budget": 3, "train": {"lr": -1}, "space": {"x": {"low": -1.0, "high": 1.0}}}
    assert _load(tmp_path, spec).train == {"lr": -1}


# ---------------------------------------------------------------- hostile input (issue 20)


def alias_to_a_big_scalar(scalar_kb: int = 50, fan_out: int = 30) -> str:
    """A small spec whose aliases all point at one big scalar: 27,930 nodes (under the node bound),
    but 27,000 copies of 50 KB (1.4 GB) once anything walks it."""
    lines = [f"big: &b '{'x' * (scalar_kb * 1000)}'", f"l1: &l1 [{', '.join(['*b'] * fan_out)}]",
             f"l2: &l2 [{', '.join(['*l1'] * fan_out)}]", f"description: [{', '.join(['*l2'] * fan_out)}]"]
    return "name: big\n" + "\n".join(lines) + "\n"


def test_aliases_of_a_big_scalar_are_refused_before_they_expand(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(alias_to_a_big_scalar())
    assert path.stat().st_size < 100_000
    with pytest.raises(HpsearchError) as info:
        load_spec(path)  # was 20 s and a MemoryError; the bound is checked on the composed graph
    assert str(info.value) == (f"{path}: must expand to at most 10,000,000 characters of YAML values, but its aliases "
                               "(*name) expand to more")


def test_the_issues_shape_stops_at_the_alias_that_crosses_the_bound(tmp_path: Path) -> None:
    """90,000 aliases of one 100 KB scalar in a flat list: refused while composing (PyYAML would
    spend seconds parsing the rest first), not after."""
    path = tmp_path / "flat.yaml"
    path.write_text("name: flat\nbig: &b '" + "x" * 100_000 + "'\ndescription: [" + ", ".join(["*b"] * 90_000) + "]\n")
    with pytest.raises(HpsearchError, match="must expand to at most 10,000,000 characters of YAML values"):
        load_spec(path)


def test_a_big_scalar_used_once_and_a_few_aliases_of_it_still_load(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(f"name: ok\ndescription: &d '{'x' * 500_000}'\ntrain: {{note: *d}}\n"
                    "objective: hps_objectives:quadratic\nmetric: loss\nsampler: random\nbudget: 1\n")
    assert len(load_spec(path).train["note"]) == 500_000


@pytest.mark.parametrize(("length", "ok"), [(128, True), (129, False), (600, False), (100_000, False)])
def test_a_study_name_is_at_most_128_characters(tmp_path: Path, length: int, ok: bool) -> None:
    name = "n" * length
    if ok:
        assert _load(tmp_path, tiny_spec(name)).name == name
        return
    with pytest.raises(SpecError) as info:
        _load(tmp_path, tiny_spec(name))
    assert str(info.value) == (f"{tmp_path / 's.yaml'}: name: must be at most 128 characters, but got a name of "
                               f"{length:,} characters (nnnnnnnnnnnnnnnnnnnn...)")


def test_the_builtin_names_create_study_checks_without_torch_are_the_registries_own() -> None:
    # catalog.BUILTIN spares create-study the torch import for specs naming only built-ins: it must
    # not drift from the registries (a model added to hpsearch/models.py and not here is still
    # accepted, through the registry, but pays the import).
    import subprocess
    import sys

    from hpsearch import models
    from hpsearch.spec import catalog
    from hpsearch.training import optim

    own = {"model": models.MODELS, "optimizer": optim.OPTIMIZERS, "loss": optim.LOSSES, "schedule": optim.SCHEDULES}
    for key, registry in own.items():
        assert sorted(catalog.BUILTIN[key]) == sorted(n for n in registry.names() if ":" not in n), key
    assert sorted(catalog.BUILTIN["activation"]) == sorted(models.ACTIVATIONS)
    # A spec of built-in names is checked without importing torch; a wrong name still is one line.
    code = ("import sys; from hpsearch.spec.loading import load_spec; load_spec(sys.argv[1], {}, []); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "studies" / "digits-quick.yaml")],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
