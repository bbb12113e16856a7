"""Every spec in studies/ validates and runs one real trial (create-study + worker.py subprocesses)
with its dataset replaced by tiny generated files of the same shape; catalogue value checks; plugins.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from conftest import ROOT, run_cli, start_worker, tiny_spec, unique, write_spec
from hpsearch import space
from hpsearch.queue import plan as plan_mod
from hpsearch.spec import catalog
from hpsearch.spec.loading import load_spec
from hpsearch.spec.model import SpecError
from hpsearch.storage.backend import open_storage

sys.path.insert(0, str(ROOT / "tests" / "plugins"))
from hps_catalogue_formats import write_csv, write_npz, write_vision  # noqa: E402

SPECS = sorted((ROOT / "studies").glob("*.yaml"))
CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "digits": 10, "file": 3}
# What the issue asks of each spec: (configurations, trials) for grids, the trial budget otherwise.
PLANNED = {"mnist-grid": (80, 400), "lr-batch-epochs": (39, 117), "transfer-resnet": (15, 45),
           "fashion-mlp-tpe": (None, 100), "cifar100-cnn-tpe": (None, 60)}


def tiny_data_overrides(path: Path, root: Path) -> list[str]:
    """--set arguments that swap the spec's data for tiny files in the real format, and 1 epoch."""
    spec = load_spec(path)
    name = spec.dataset["name"]
    sets = ["dataset.limit=32"]
    if name in ("mnist", "fashion_mnist", "cifar10", "cifar100"):
        write_vision(root, name)
        sets.append(f"dataset.root={root}")
        if name.startswith("cifar"):
            sets.append("dataset.verify=false")  # tiny files cannot match the published checksums
    elif name == "file":
        write_csv(root / spec.dataset["path"], n=60)
        sets.append(f"dataset.root={root}")
    if "epochs" in spec.space:
        sets.append("space.epochs={choices: [1]}")
    else:
        sets.append("train.epochs=1")
    if spec.train.get("weights"):
        from torchvision.models import resnet18

        torch.save(resnet18(weights=None).state_dict(), root / "resnet18.pth")
        sets.append(f"train.weights={root / 'resnet18.pth'}")
    return sets


def run_one_trial(tmp_path: Path, spec_path: Path, url: str, sets: list[str],
                  name: str | None = None) -> optuna.trial.FrozenTrial:
    name = name or unique(spec_path.stem)
    args = [a for s in sets for a in ("--set", s)]
    created = run_cli("create-study", str(spec_path), "--storage", url, "--name", name, *args, check=True)
    assert " planned: " in created.stdout and "created study" in created.stdout
    worker = start_worker(name, url, "--n-trials", "1", "--device", "cpu", "--heartbeat", "5",
                          log=tmp_path / "worker.log")
    assert worker.wait(timeout=240) == 0, (tmp_path / "worker.log").read_text()
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)
    done = [t for t in trials if t.state.is_finished()]
    assert len(done) == 1, (tmp_path / "worker.log").read_text()
    return done[0]


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_study_spec_runs_one_trial_on_tiny_data(tmp_path: Path, journal_url: str, path: Path) -> None:
    sets = tiny_data_overrides(path, tmp_path / "data")
    warm = load_spec(path).warm_start
    if warm:  # the seed's story: the source study first (one trial), then this one starts from it
        source_path, source = ROOT / "studies" / f"{warm['from']}.yaml", unique(warm["from"])
        (tmp_path / "source").mkdir()
        first = run_one_trial(tmp_path / "source", source_path, journal_url,
                              tiny_data_overrides(source_path, tmp_path / "data"), name=source)
        sets.append(f"warm_start.from={source}")
    trial = run_one_trial(tmp_path, path, journal_url, sets)
    if warm:  # its first trial is the source's best configuration, saying so
        assert trial.params == first.params and trial.user_attrs["warm_start_of"].startswith(f"{source} trial 0")
    log = (tmp_path / "worker.log").read_text()
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs.get("fail_reason", log)
    attrs = trial.user_attrs
    assert 0.0 <= attrs["val_acc"] <= 1.0 and 0.0 <= attrs["test_acc"] <= 1.0
    assert attrs["name"] == space.short_name(trial.params) and len(attrs["curve"]) == 1
    n_classes = CLASSES[load_spec(path).dataset["name"]]
    assert len(attrs["confusion_matrix"]) == n_classes  # the dataset's classes, not the labels seen


@pytest.mark.parametrize("name", sorted(PLANNED))
def test_spec_plans_what_the_issue_asks(name: str) -> None:
    spec = load_spec(ROOT / "studies" / f"{name}.yaml")
    configurations, trials = PLANNED[name]
    assert spec.name == name and plan_mod.planned_count(spec) == trials
    if configurations is not None:
        assert spec.is_grid and len(space.grid(spec.space)) == configurations


def test_fashion_trial_names_describe_the_configuration() -> None:
    spec = load_spec(ROOT / "studies" / "fashion-mlp-tpe.yaml")
    params = {p.name: (p.choices or [None])[0] for p in spec.space.values()}
    name = space.short_name(params)
    assert name.startswith("hl_3_bs_16_ac_identity_hs_32_ep_5_wd_0_lr_0.001_opt_sgd_init_random_loss_")
    other = space.short_name({**params, "batch_size": 32})
    assert other != name and "bs_32" in other


def test_user_plugin_model_and_optimizer_on_a_user_npz_file(tmp_path: Path, journal_url: str) -> None:
    npz = write_npz(tmp_path / "data" / "blobs.npz")
    spec = tiny_spec("plugins", dataset={"name": "file", "path": str(npz), "val_fraction": 0.25},
                     train={"epochs": 2, "batch_size": 16, "hidden_size": 8,
                            "model": "hps_catalogue_plugins:tiny_model"},
                     space={"optimizer": {"choices": ["hps_catalogue_plugins:half_momentum_sgd"]},
                            "lr": {"choices": [0.1]}})
    trial = run_one_trial(tmp_path, write_spec(tmp_path, spec), journal_url, [])
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
    assert trial.user_attrs["val_acc"] > 0.5  # two-ish separable blobs: better than chance
    assert trial.user_attrs["n_parameters"] == 6 * 8 + 8 + 8 * 3 + 3


# (train settings, expected fragment of the one-line problem)
INVALID = [
    ({"lr": "1e-3"}, "train.lr: must be a number > 0, but got lr='1e-3' (YAML reads 1e-3 as text"),
    ({"dropout": 1.5}, "train.dropout: must be a number in [0, 1), but got dropout=1.5"),
    ({"epochs": 0}, "train.epochs: must be an integer >= 1, but got epochs=0"),
    ({"batch_size": 2.5}, "train.batch_size: must be an integer >= 1, but got batch_size=2.5"),
    ({"momentum": 1.2}, "train.momentum: must be a number in [0, 1), but got momentum=1.2"),
    ({"betas": [0.9]}, "train.betas: must be two numbers in [0, 1), but got betas=[0.9]"),
    ({"widths": [64, 0]}, "train.widths: must be a list of positive integers, but got widths=[64, 0]"),
    ({"augment": "mirror"}, "train.augment: must be true, false or one of crop_flip, crop, flip, none"),
    ({"activation": "relu6"}, "train.activation: activation 'relu6' is not registered; known:"),
    ({"mode": "probe"}, "train.mode: mode 'probe' is not registered; known: finetune, linear_probe, scratch"),
    ({"stem": "tiny"}, "train.stem: stem 'tiny' is not registered; known: auto, imagenet, small"),
    ({"init": "he"}, "train.init: init 'he' is not registered; known:"),
]


def _with_train(**train: Any) -> dict[str, Any]:
    return tiny_spec("values", train={**tiny_spec("x")["train"], **train},
                     space={"optimizer": {"choices": ["sgd", "adam"]}})


@pytest.mark.parametrize(("train", "message"), INVALID, ids=[next(iter(t)) for t, _ in INVALID])
def test_catalogue_value_checks_fail_at_validation(tmp_path: Path, train: dict[str, Any], message: str) -> None:
    spec = _with_train(**train)
    with pytest.raises(SpecError) as exc:
        load_spec(write_spec(tmp_path, spec, "s.yaml"))
    assert f"s.yaml: {message}" in str(exc.value)


def test_catalogue_value_checks_accept_the_valid_twins(tmp_path: Path) -> None:
    train = {"lr": 1.0e-3, "dropout": 0.0, "epochs": 1, "batch_size": 2, "momentum": 0.0, "betas": [0.9, 0.99],
             "widths": [64, 32], "augment": "crop", "activation": "gelu", "mode": "linear_probe", "stem": "small",
             "init": "kaiming", "filters1": None, "weights": "/x.pth"}
    spec = load_spec(write_spec(tmp_path, _with_train(**train), "s.yaml"))
    assert spec.train["augment"] == "crop"


def test_space_choices_are_checked_too(tmp_path: Path) -> None:
    spec = tiny_spec("bad", space={"dropout": {"choices": [0.0, 1.0]}})
    with pytest.raises(SpecError, match=r"space.dropout.choices: must be a number in \[0, 1\), but got dropout=1.0"):
        load_spec(write_spec(tmp_path, spec, "s.yaml"))


def test_dataset_options_are_checked_with_a_suggestion() -> None:
    problems = catalog.dataset_problems({"name": "cifar100", "roots": "/data", "val_fraction": 0.1})
    assert problems == [("dataset.roots", "dataset 'cifar100' option 'roots' is not known; known: download, "
                         "limit, name, normalize, root, split_seed, val_fraction, verify (did you mean 'root'?)")]
    assert catalog.dataset_problems({"name": "pkg.mod:fn", "anything": 1}) == []
