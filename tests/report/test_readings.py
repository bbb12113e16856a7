"""Readings count configurations, not seeds; intervals of bounded metrics stay in their range; `best`
lists parameters in the spec's order on every row (issue 21)."""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from conftest import run_cli, tiny_spec, unique
from hpsearch import schema
from hpsearch import space as space_mod
from hpsearch.queue import plan as plan_mod
from hpsearch.report.importance import correlations, importances
from hpsearch.report.stats import bounds_of, config_points, mean_ci, summarize
from hpsearch.spec.parse import parse_spec
from hpsearch.storage.backend import open_storage

LR = FloatDistribution(1e-4, 1.0, log=True)
OPT = CategoricalDistribution(["sgd", "adam"])


def _add(study: optuna.Study, params: dict[str, Any], value: float | None, seed: int,
         state: TrialState = TrialState.COMPLETE, **attrs: Any) -> None:
    dists = {"lr": LR, "optimizer": OPT}
    study.add_trial(optuna.trial.create_trial(
        state=state, value=value, params=params, distributions={k: dists[k] for k in params},
        user_attrs={schema.CONFIG_ID: space_mod.config_id(params), schema.SEED: seed, **attrs}))


def _eleven_configurations_two_seeds(study: optuna.Study) -> None:
    # 11 configurations x 2 seeds: the metric falls with lr, and the seeds of one configuration
    # differ by a little noise (as seeds do).
    for i in range(11):
        lr = 10 ** (-4 + 0.4 * i)
        for seed, noise in enumerate((0.01, -0.01)):
            _add(study, {"lr": lr, "optimizer": "sgd" if i % 2 else "adam"}, 0.9 - 0.05 * i + noise, seed)


def test_correlations_count_each_configuration_once_with_its_mean() -> None:
    study = optuna.create_study(direction="maximize")
    _eleven_configurations_two_seeds(study)
    trials = study.get_trials(deepcopy=False)
    points = config_points(trials)
    assert len(points) == 11
    assert sorted(p.value for p in points) == pytest.approx(sorted(0.9 - 0.05 * i for i in range(11)))
    by_param = {c.param: c for c in correlations(trials, maximize=True)}
    assert by_param["lr"].n == 11 and by_param["optimizer"].n == 11  # not 22 "points"
    assert by_param["lr"].value == pytest.approx(-1.0)
    # The p-value is that of 11 points, not of 22 (which would be far smaller).
    from scipy import stats

    assert by_param["lr"].p_value == pytest.approx(stats.spearmanr(range(11), range(11)[::-1]).pvalue)


def test_importances_are_fitted_on_one_point_per_configuration() -> None:
    study = optuna.create_study(direction="maximize")
    _eleven_configurations_two_seeds(study)
    imp = importances(study.get_trials(deepcopy=False), maximize=True)
    assert imp.by_method and not [n for n in imp.notes if "not computed" in n]
    few = optuna.create_study(direction="maximize")
    for seed in range(4):  # 4 seeds of 2 configurations are 2 points: too few for an importance
        _add(few, {"lr": 0.1 if seed % 2 else 0.01, "optimizer": "sgd"}, 0.5 + seed / 100, seed)
    notes = importances(few.get_trials(deepcopy=False), maximize=True).notes
    assert any("have 2," in n for n in notes)


def test_report_says_the_unit_of_a_reading_is_the_configuration(tmp_path: Path) -> None:
    from hpsearch.report.build import write_report

    study = optuna.create_study(storage=open_storage(f"journal:{tmp_path / 'j.log'}", create=True),
                                study_name=unique("unit"), direction="maximize")
    _eleven_configurations_two_seeds(study)
    md, _, _ = write_report(study, tmp_path / "out")
    text = md.read_text()
    assert "The unit is the configuration" in text and "Repeats count as separate points" not in text
    rows = [line for line in text.splitlines() if line.startswith("| lr ")]
    assert rows and "| 11 |" in rows[-1]


def test_a_two_seed_interval_of_an_accuracy_never_reaches_below_zero() -> None:
    raw = mean_ci([0.02, 0.30], 0.9)
    assert raw is not None and raw.low is not None and raw.low < 0  # the plain t-interval does
    clipped = mean_ci([0.02, 0.30], 0.9, bounds_of("val_acc"))
    assert clipped is not None and clipped.clipped
    assert raw.high is not None and raw.high > 1  # two seeds this far apart: both ends are past the range
    assert (clipped.low, clipped.high) == (0.0, 1.0) and clipped.mean == pytest.approx(0.16)
    assert clipped.text() == "0.1600 [0.0000, 1.0000] (clipped)"
    top = mean_ci([0.97, 0.999], 0.9, bounds_of("test_acc"))
    assert top is not None and top.high == 1.0 and top.clipped
    inside = mean_ci([0.5, 0.52], 0.9, bounds_of("val_acc"))
    assert inside is not None and not inside.clipped and inside.text().count("±") == 1
    loss = mean_ci([0.01, 0.9], 0.9, bounds_of("val_loss"))
    assert loss is not None and loss.low == 0.0 and loss.high is not None and math.isfinite(loss.high)
    assert bounds_of("value") is None and bounds_of("my_accuracy") == (0.0, 1.0)


def test_summarize_clips_the_metric_and_every_accuracy() -> None:
    study = optuna.create_study(direction="maximize")
    for seed, v in enumerate((0.02, 0.30)):
        _add(study, {"lr": 0.1, "optimizer": "sgd"}, v, seed, test_acc=v)
    (row,) = summarize(study.get_trials(deepcopy=False), True, bounds=bounds_of("val_acc"))
    assert row.value.low == 0.0 and row.metrics["test_acc"] is not None and row.metrics["test_acc"].low == 0.0


def _spec_study(url: str, name: str) -> optuna.Study:
    raw = tiny_spec(name, repeats=2, space={"optimizer": {"choices": ["sgd", "adam"]},
                                            "lr": {"low": 1e-4, "high": 1.0, "log": True}},
                    sampler="random", budget=4)
    study, _ = plan_mod.create(parse_spec(raw, "test"), open_storage(url, create=True))
    return study


def test_best_lists_parameters_in_the_spec_order_and_clips_the_interval(journal_url: str) -> None:
    name = unique("order")
    study = _spec_study(journal_url, name)
    # Stored in a different order on each trial, as the storage may return them.
    for i, (value, seed) in enumerate([(0.02, 0), (0.30, 1), (0.5, 0), (0.52, 1)]):
        params: dict[str, Any] = {"lr": 0.1, "optimizer": "sgd"} if i < 2 else {"optimizer": "adam", "lr": 0.01}
        if i % 2:
            params = dict(reversed(list(params.items())))
        _add(study, params, value, seed, val_acc=value)
    data = json.loads(run_cli("best", name, "--storage", journal_url, "--json", check=True).stdout)
    assert [list(c["params"]) for c in data["configurations"]] == [["optimizer", "lr"]] * 2
    low = next(c for c in data["configurations"] if c["params"]["optimizer"] == "sgd")["value"]
    assert low["low"] == 0.0 and low["clipped"] is True
    text = run_cli("best", name, "--storage", journal_url, check=True).stdout
    rows = [line for line in text.splitlines() if "optimizer=" in line]
    assert len(rows) == 2 and all(r.index("optimizer=") < r.index("lr=") for r in rows)
    assert "[0.0000," in text and "(clipped)" in text


# ---------------------------------------------------------------- pruning's first wave


def _waves(url: str, pruner: Any, first: int, fused: int) -> str:
    """A study whose first `first` trials (2 workers, fused groups of `fused`) all started before any
    finished, then 4 trials started one by one after that."""
    name = unique("wave")
    study, _ = plan_mod.create(parse_spec(tiny_spec(name, pruner=pruner), "test"), open_storage(url, create=True))
    t0 = time.time() - 3600
    for i in range(first + 4):
        start = t0 + (i * 0.1 if i < first else 200 + 100 * i)
        trial = optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=0.5 + i / 1000, params={"lr": 0.1}, distributions={"lr": LR},
            user_attrs={schema.WORKER: f"host:{i % 2}", schema.FUSED: fused if i < first else 1, schema.SEED: i,
                        schema.CONFIG_ID: f"c{i}"})
        trial.datetime_start = datetime.fromtimestamp(start)
        trial.datetime_complete = datetime.fromtimestamp(start + 100)
        study.add_trial(trial)
    return name


def test_report_and_best_say_how_large_the_unprunable_first_wave_was(tmp_path: Path, journal_url: str) -> None:
    from hpsearch.report.build import write_report

    name = _waves(journal_url, {"name": "median"}, first=16, fused=8)
    study = optuna.load_study(study_name=name, storage=open_storage(journal_url))
    md = write_report(study, tmp_path / "r")[0].read_text()
    assert "Pruning's first wave: 16 trials (2 worker(s) training fused groups of up to 8)" in md
    assert "n_startup_trials = 5" in md and "`fuse: 1`" in md
    data = json.loads(run_cli("best", name, "--storage", journal_url, "--json", check=True).stdout)
    assert {k: data["first_wave"][k] for k in ("trials", "workers", "fused", "startup")} == {
        "trials": 16, "workers": 2, "fused": 8, "startup": 5}
    assert "Pruning's first wave: 16 trials" in run_cli("best", name, "--storage", journal_url, check=True).stdout


@pytest.mark.parametrize("pruner, first", [({"name": "none"}, 16), ({"name": "median", "n_startup_trials": 16}, 16),
                                           ({"name": "percentile"}, 3)])
def test_no_first_wave_note_without_a_median_pruner_or_within_its_startup(
        tmp_path: Path, journal_url: str, pruner: dict[str, Any], first: int) -> None:
    from hpsearch.report.build import write_report

    name = _waves(journal_url, pruner, first=first, fused=8)
    study = optuna.load_study(study_name=name, storage=open_storage(journal_url))
    assert "first wave" not in write_report(study, tmp_path / "r")[0].read_text()
