"""The report's numbers on a study with known, constructed results (trials written through Optuna's API).

Every expectation is computed here from the constructed data (scipy for the intervals), never
copied from the code under test.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from scipy import stats

from conftest import unique
from hpsearch import schema
from hpsearch import space as space_mod
from hpsearch.errors import HpsearchError
from hpsearch.ops.repeats import queue_repeats
from hpsearch.queue import study as study_mod
from hpsearch.report.cost import cost
from hpsearch.report.curves import divergent_runs, under_trained_runs
from hpsearch.report.export import export, trials_frame
from hpsearch.report.stats import baselines, best_per_group, mean_ci, summarize
from hpsearch.report.where import select
from hpsearch.spec.parse import parse_spec
from hpsearch.storage.backend import open_storage

EPOCHS = 5
DISTS = {
    "model": CategoricalDistribution(["dense", "cnn"]),
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "optimizer": CategoricalDistribution(["sgd", "adam"]),
    "momentum": FloatDistribution(0.5, 0.99),
}
SPEC = {
    "name": "constructed", "metric": "val_acc", "sampler": "tpe", "pruner": "median", "budget": 50,
    "dataset": {"name": "digits"}, "train": {"epochs": EPOCHS, "batch_size": 64},
    "space": {"model": {"choices": ["dense", "cnn"]}, "lr": {"low": 1e-4, "high": 1e-1, "log": True},
              "optimizer": {"choices": ["sgd", "adam"]},
              "momentum": {"low": 0.5, "high": 0.99, "when": {"optimizer": "sgd"}}},
}
COUNTS = {"train": [50, 30, 20], "val": [10, 6, 4], "test": [20, 20, 10], "classes": ["cat", "dog", "eel"]}

# configuration -> (params, validation accuracy per seed, test accuracy per seed)
CONFIGS: dict[str, tuple[dict[str, Any], list[float], list[float]]] = {
    "A": ({"model": "dense", "lr": 0.01, "optimizer": "adam"}, [0.90, 0.92, 0.91], [0.89, 0.90, 0.93]),
    "B": ({"model": "dense", "lr": 0.001, "optimizer": "sgd", "momentum": 0.9}, [0.85, 0.88], [0.80, 0.86]),
    "C": ({"model": "cnn", "lr": 0.003, "optimizer": "adam"}, [0.95, 0.94, 0.97, 0.93], [0.94, 0.93, 0.95, 0.96]),
    "D": ({"model": "cnn", "lr": 0.05, "optimizer": "sgd", "momentum": 0.5}, [0.80], [0.78]),
    "E": ({"model": "dense", "lr": 0.0001, "optimizer": "adam"}, [0.50, 0.60], [0.45, 0.62]),
    "F": ({"model": "dense", "lr": 0.1, "optimizer": "sgd", "momentum": 0.99}, [0.12], [0.10]),
}
RANKING = ["C", "A", "B", "D", "E", "F"]  # by mean validation accuracy


def plateau(v: float) -> list[float]:
    """Improves early, then flat: +0.005 over the last 3 epochs (below the 0.01 rule)."""
    return [v - 0.3, v - 0.005, v - 0.002, v, v]


def rising(v: float) -> list[float]:
    """Still climbing: +0.15 over the last 3 epochs."""
    return [v - 0.2, v - 0.15, v - 0.1, v - 0.05, v]


def make_curve(val: list[float], train_loss: list[float] | None = None) -> list[dict[str, Any]]:
    losses = train_loss or [2.0 - 0.3 * e for e in range(len(val))]
    return [{"epoch": e + 1, "train_loss": losses[e], "train_acc": val[e], "val_loss": 1.0 - val[e] / 2,
             "val_acc": val[e], "lr": 0.01, "epoch_time": 0.1} for e in range(len(val))]


@dataclass
class Built:
    study: optuna.Study
    url: str
    numbers: dict[str, list[int]] = field(default_factory=dict)  # config -> trial numbers
    divergent: set[int] = field(default_factory=set)
    under_trained: set[int] = field(default_factory=set)
    pruned: int = -1
    running: int = -1
    waiting: int = -1


def _add(study: optuna.Study, params: dict[str, Any], state: TrialState = TrialState.COMPLETE,
         value: float | None = None, curve: list[dict[str, Any]] | None = None, **attrs: Any) -> int:
    user_attrs = {"config_id": space_mod.config_id(params), "name": space_mod.short_name(params),
                  "device": "cuda:0", "duration_s": 60.0, "config": {**params, "epochs": EPOCHS}, **attrs}
    user_attrs = {k: v for k, v in user_attrs.items() if v is not None}
    if curve is not None:
        user_attrs["curve"] = curve
        user_attrs["epochs_trained"] = len(curve)
    study.add_trial(optuna.trial.create_trial(
        state=state, value=value, params=params, distributions={k: DISTS[k] for k in params},
        user_attrs=user_attrs,
        intermediate_values={r["epoch"]: r["val_acc"] for r in curve or [] if math.isfinite(r["val_acc"])},
    ))
    return len(study.get_trials(deepcopy=False)) - 1


def build(url: str) -> Built:
    storage = open_storage(url, create=True)
    study = optuna.create_study(storage=storage, study_name=unique("constructed"), direction="maximize")
    spec = parse_spec(dict(SPEC), "test")
    study.set_user_attr(schema.SPEC_ATTR, spec.to_dict())
    study.set_user_attr(schema.CLASS_COUNTS_ATTR, COUNTS)
    b = Built(study, url)
    for key, (params, vals, tests) in CONFIGS.items():
        for seed, (v, t) in enumerate(zip(vals, tests, strict=True)):
            # Config C's odd seeds and config E's first are still improving at their last epoch.
            climbing = (key == "C" and seed % 2 == 1) or (key == "E" and seed == 0)
            losses = [2.3, 2.31, 2.32, 2.33, 2.35] if key == "F" else None  # F never learns
            cm = [[20 - seed, seed, 0], [2, 18, 0], [1, 1, 8]]
            n = _add(study, params, value=v, curve=make_curve(rising(v) if climbing else plateau(v), losses),
                     seed=seed, val_acc=v, test_acc=t, val_loss=1 - v / 2, confusion_matrix=cm, best_epoch=EPOCHS)
            b.numbers.setdefault(key, []).append(n)
            if climbing:
                b.under_trained.add(n)
            if key == "F":
                b.divergent.add(n)
    # A complete run whose validation loss went NaN at epoch 4 (kept as complete by some objective).
    nan_curve = make_curve(plateau(0.7))
    nan_curve[3]["val_loss"] = float("nan")
    b.divergent.add(_add(study, {"model": "cnn", "lr": 0.02, "optimizer": "adam"}, value=0.7, curve=nan_curve,
                         seed=0, val_acc=0.7, test_acc=0.69))
    # A failed run the worker marked divergent (its curve stops before the NaN).
    b.divergent.add(_add(study, {"model": "cnn", "lr": 0.09, "optimizer": "sgd", "momentum": 0.95},
                         state=TrialState.FAIL, curve=make_curve([0.3, 0.2]), seed=0, divergent=True,
                         fail_reason="Divergent: loss became nan at epoch 3"))
    # Pruned at epoch 2 of 5: 3 epochs saved.
    b.pruned = _add(study, {"model": "dense", "lr": 0.0003, "optimizer": "adam"}, state=TrialState.PRUNED,
                    curve=make_curve([0.3, 0.31]), seed=0, pruned_at_epoch=2)
    # A worker is in epoch 2 of a trial: the report is a snapshot.
    b.running = _add(study, {"model": "cnn", "lr": 0.004, "optimizer": "adam"}, state=TrialState.RUNNING,
                     curve=make_curve([0.4]), seed=0, duration_s=None)
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": CONFIGS["D"][0]},
                                              user_attrs={"seed": 1, "config_id": space_mod.config_id(CONFIGS["D"][0])}))
    b.waiting = len(study.get_trials(deepcopy=False)) - 1
    return b


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return build(f"journal:{tmp_path / 'journal.log'}")


def _interval(values: list[float], level: float) -> tuple[float, float]:
    return stats.t.interval(level, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))


# ---------------------------------------------------------------- table: means, intervals, ranking


@pytest.mark.parametrize("backend", ["journal", "postgres"])
@pytest.mark.parametrize("level", [0.9, 0.95])
def test_table_means_and_intervals_equal_scipy_t_interval(backend: str, level: float, tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_session_db") if backend == "postgres" else f"journal:{tmp_path / 'j.log'}"
    b = build(url)
    rows = summarize(b.study.get_trials(deepcopy=False), maximize=True, level=level)
    # The NaN-curve run is a configuration of its own (one seed); the ranking of the others is fixed.
    by_id = {r.config_id: r for r in rows}
    ranked = [r.config_id for r in rows if r.config_id in {space_mod.config_id(CONFIGS[k][0]) for k in CONFIGS}]
    assert ranked == [space_mod.config_id(CONFIGS[k][0]) for k in RANKING]
    for key, (params, vals, tests) in CONFIGS.items():
        row = by_id[space_mod.config_id(params)]
        assert row.value.n == len(vals) and row.trials == b.numbers[key]
        assert row.value.mean == pytest.approx(np.mean(vals), abs=1e-12)
        assert row.metrics["test_acc"].mean == pytest.approx(np.mean(tests), abs=1e-12)
        if len(vals) == 1:
            assert row.value.low is None and row.value.half_width is None  # no invented interval
            assert "no CI" in row.value.text()
            continue
        assert (row.value.low, row.value.high) == pytest.approx(_interval(vals, level), abs=1e-12)
        # An accuracy's interval is clipped to [0, 1] (a few seeds' t-interval can reach past it).
        low, high = _interval(tests, level)
        assert (row.metrics["test_acc"].low, row.metrics["test_acc"].high) == pytest.approx((max(low, 0.0),
                                                                                             min(high, 1.0)))
    assert rows[0].rank == 1 and rows[0].config_id == space_mod.config_id(CONFIGS["C"][0])
    assert rows[0].representative == b.numbers["C"][2]  # its best seed (0.97)


def test_identical_seeds_give_a_zero_width_interval_and_bad_levels_are_refused() -> None:
    same = mean_ci([0.5, 0.5, 0.5])
    assert same is not None and (same.low, same.high) == (0.5, 0.5)
    assert mean_ci([]) is None and mean_ci([float("nan")]) is None
    from hpsearch.report.stats import check_level

    for bad in (0.0, 1.0, 90):
        with pytest.raises(HpsearchError, match="--level"):
            check_level(bad)


def test_best_per_group_ranks_within_each_group_and_orders_groups_by_their_best(built: Built) -> None:
    rows = summarize(built.study.get_trials(deepcopy=False), maximize=True)
    groups = best_per_group(rows, "model", top=2)
    names = [(g, [r.config_id for r in rs]) for g, rs in groups]
    cid = {k: space_mod.config_id(p) for k, (p, _, _) in CONFIGS.items()}
    # cnn: C (0.9475), D (0.80) beats the one-seed NaN-curve run (0.70); dense: A then B.
    assert names == [("cnn", [cid["C"], cid["D"]]), ("dense", [cid["A"], cid["B"]])]
    by_opt = best_per_group(rows, "optimizer", top=1)
    assert [(g, rs[0].config_id) for g, rs in by_opt] == [("adam", cid["C"]), ("sgd", cid["B"])]
    # momentum is inactive for adam configurations: they form their own group.
    assert "(inactive)" in [g for g, _ in best_per_group(rows, "momentum", top=1)]


def test_minimized_metric_ranks_lowest_first(built: Built) -> None:
    rows = summarize(built.study.get_trials(deepcopy=False), maximize=False)
    assert rows[0].config_id == space_mod.config_id(CONFIGS["F"][0])


# ---------------------------------------------------------------- baselines


def test_baselines_match_the_class_counts() -> None:
    train, test, val = np.array(COUNTS["train"]), np.array(COUNTS["test"]), np.array(COUNTS["val"])
    p_train, p_test, p_val = train / train.sum(), test / test.sum(), val / val.sum()
    uniform, prior, majority = baselines(COUNTS)
    assert uniform.test_acc == pytest.approx(1 / 3) and uniform.val_acc == pytest.approx(1 / 3)
    assert prior.test_acc == pytest.approx(float(p_train @ p_test))  # 0.5*0.4 + 0.3*0.4 + 0.2*0.2
    assert prior.val_acc == pytest.approx(float(p_train @ p_val))
    assert majority.test_acc == pytest.approx(p_test[int(train.argmax())])  # "cat" is 40% of test
    assert "cat" in majority.name


def test_majority_baseline_is_scored_on_the_evaluated_split_not_the_training_one() -> None:
    counts = {"train": [10, 90], "val": [50, 50], "test": [80, 20]}
    _, prior, majority = baselines(counts)
    assert majority.test_acc == pytest.approx(0.2) and majority.val_acc == pytest.approx(0.5)
    assert prior.test_acc == pytest.approx(0.1 * 0.8 + 0.9 * 0.2)


# ---------------------------------------------------------------- divergent / under-trained


def test_divergent_and_under_trained_lists_hold_exactly_the_constructed_runs(built: Built) -> None:
    trials = built.study.get_trials(deepcopy=False)
    divergent = divergent_runs(trials)
    assert {f.number for f in divergent} == built.divergent
    reasons = {f.number: f.reason for f in divergent}
    assert all("train_loss did not decrease" in reasons[n] for n in built.numbers["F"])
    assert any("val_loss is nan at epoch 4" in r for r in reasons.values())
    assert any("marked divergent by the worker" in r for r in reasons.values())
    under = under_trained_runs(trials, "val_acc", maximize=True)
    assert {f.number for f in under} == built.under_trained
    assert all("+0.1500 over the last 3 epochs" in f.reason for f in under)


@pytest.mark.parametrize(("window", "min_gain", "expected"), [
    (3, 0.01, {"rising"}),            # plateau gains 0.005 over 3 epochs
    (3, 0.004, {"rising", "plateau"}),  # a looser rule also catches the plateau
    (1, 0.01, {"rising"}),            # last step: rising +0.05, plateau +0
    (3, 0.2, set()),                  # nothing improved by 20 points
])
def test_under_trained_rule_follows_its_parameters(window: int, min_gain: float, expected: set[str]) -> None:
    study = optuna.create_study(direction="maximize")
    for kind, fn in (("rising", rising), ("plateau", plateau)):
        _add(study, {"lr": 0.01}, value=0.8, curve=make_curve(fn(0.8)), name=kind)
    flags = under_trained_runs(study.get_trials(), "val_acc", True, window=window, min_gain=min_gain)
    assert {f.name for f in flags} == expected


def test_under_trained_for_a_loss_is_relative() -> None:
    study = optuna.create_study(direction="minimize")
    curve = make_curve([0.5] * 5)
    for r, loss in zip(curve, [2.0, 0.50, 0.49, 0.48, 0.47], strict=True):  # -6% over the last 3 epochs
        r["val_loss"] = loss
    _add(study, {"lr": 0.01}, value=0.47, curve=curve)
    assert len(under_trained_runs(study.get_trials(), "val_loss", False, min_gain=0.05)) == 1
    assert under_trained_runs(study.get_trials(), "val_loss", False, min_gain=0.10) == []


# ---------------------------------------------------------------- filters


def _expected(b: Built, pred: Any) -> set[int]:
    return {t.number for t in b.study.get_trials(deepcopy=False) if pred(t, P(t), t.user_attrs)}


def P(t: optuna.trial.FrozenTrial) -> dict[str, Any]:  # noqa: N802 - reads like the filter
    """Parameters as the filter sees them: a queued trial's are its fixed ones."""
    return t.params or t.system_attrs.get("fixed_params", {})


@pytest.mark.parametrize(("expr", "pred"), [
    ("test_acc < 0.15", lambda t, p, a: a.get("test_acc") is not None and a["test_acc"] < 0.15),
    ("val_acc > 0.95", lambda t, p, a: (a.get("val_acc") or 0) > 0.95),
    ("model == cnn and lr > 0.01", lambda t, p, a: p.get("model") == "cnn" and p.get("lr", 0) > 0.01),
    ("optimizer == 'sgd' or val_acc >= 0.97", lambda t, p, a: p.get("optimizer") == "sgd" or (a.get("val_acc") or 0) >= 0.97),
    ("momentum != 0.9", lambda t, p, a: "momentum" in p and p["momentum"] != 0.9),  # absent never matches
    ("not (model == dense) and state == complete",
     lambda t, p, a: p.get("model") != "dense" and t.state == TrialState.COMPLETE),
    ("lr == 1e-2", lambda t, p, a: p.get("lr") == 0.01),
    ("state == pruned", lambda t, p, a: t.state == TrialState.PRUNED),
    ("divergent == true or number == 0", lambda t, p, a: a.get("divergent") is True or t.number == 0),
    ("params_lr <= 0.001 AND seed = 1", lambda t, p, a: p.get("lr", 1) <= 0.001 and a.get("seed") == 1),
])
def test_filters_select_the_right_trials(built: Built, expr: str, pred: Any) -> None:
    frame = trials_frame(built.study.get_trials(deepcopy=False))
    chosen = set(select(expr, frame)["number"].tolist())
    assert chosen == _expected(built, pred)
    assert chosen  # every expression here selects something: an empty match would prove little


@pytest.mark.parametrize(("expr", "message"), [
    ("", "empty"),
    ("test_acc <", "expected a value"),
    ("test_acc >> 0.1", "expected a value"),
    ("lr > 0.1 or", "a parameter or metric name"),
    ("(lr > 0.1", "expected ')'"),
    ("__import__('os').system('true') == 0", "cannot read"),
    ("__import__ ('os') == 0", "comparison operator"),
    ("lr.__class__ == 1", "is not a parameter or metric"),
    ("accuracy > 0.5", "is not a parameter or metric"),
    ("optimizer < adam", "only == and != compare text"),
    ("model > 3", "holds text"),
    ("val_acc > nan", "compare with a number"),
    ("lr > 0.1; rm -rf /", "cannot read"),
])
def test_bad_filters_are_refused_with_one_clear_line(built: Built, expr: str, message: str) -> None:
    frame = trials_frame(built.study.get_trials(deepcopy=False))
    with pytest.raises(HpsearchError, match=re.escape(message)) as info:
        select(expr, frame)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- repeat, cost, export


def test_repeat_queues_new_seeds_of_the_best_configuration_per_group(built: Built) -> None:
    spec = study_mod.stored_spec(built.study)
    queued = queue_repeats(built.study, spec, top=1, seeds=2, group_by="model")
    assert [(q.config.config_id, q.seeds) for q in queued] == [
        (space_mod.config_id(CONFIGS["C"][0]), [4, 5]),  # C used seeds 0-3
        (space_mod.config_id(CONFIGS["A"][0]), [3, 4]),
    ]
    again = queue_repeats(built.study, spec, top=1, seeds=1)  # queued seeds count as used
    assert [q.seeds for q in again] == [[6]]
    new = [t for t in built.study.get_trials(deepcopy=False) if t.user_attrs.get("is_repeat")]
    assert len(new) == 5 and all(t.state == TrialState.WAITING for t in new)
    for t in new:
        fixed = t.system_attrs["fixed_params"]
        assert t.user_attrs["config_id"] == space_mod.config_id(fixed)
        assert t.user_attrs["repeat_of"] in built.numbers["C"] + built.numbers["A"]
    # D has a queued (waiting) seed 1 besides its complete seed 0: the next one is 2.
    d = queue_repeats(built.study, spec, top=4, seeds=1)
    assert [q.seeds for q in d if q.config.config_id == space_mod.config_id(CONFIGS["D"][0])] == [[2]]


def test_repeat_refuses_bad_input(built: Built) -> None:
    spec = study_mod.stored_spec(built.study)
    with pytest.raises(HpsearchError, match="did you mean 'model'"):
        queue_repeats(built.study, spec, top=1, seeds=1, group_by="modle")
    with pytest.raises(HpsearchError, match="--seeds"):
        queue_repeats(built.study, spec, top=1, seeds=0)
    with pytest.raises(HpsearchError, match="--top"):
        queue_repeats(built.study, spec, top=0, seeds=1)


def test_cost_counts_states_pruning_savings_and_gpu_hours(built: Built) -> None:
    trials = built.study.get_trials(deepcopy=False)
    running = next(t for t in trials if t.state == TrialState.RUNNING)
    now = running.datetime_start.timestamp() + 90.0  # type: ignore[union-attr]
    c = cost(trials, default_epochs=EPOCHS, now=now)
    n_complete = sum(len(v[1]) for v in CONFIGS.values()) + 1
    assert c.by_state == {"complete": n_complete, "pruned": 1, "fail": 1, "running": 1, "waiting": 1}
    assert c.still_running
    assert (c.epochs_saved, c.epochs_pruned_budget) == (EPOCHS - 2, EPOCHS)
    # Every finished trial ran 60 s on cuda:0; the running one counts up to now (90 s).
    assert c.gpu_hours == pytest.approx(((n_complete + 2) * 60 + 90) / 3600)
    assert c.epochs_trained == n_complete * EPOCHS + 2 + 2 + 1
    first = min(t.datetime_start.timestamp() for t in trials if t.datetime_start)
    assert c.wall_s == pytest.approx(now - first)  # a running study's wall time runs to the snapshot
    assert c.trials_per_hour == pytest.approx((n_complete + 2) / (c.wall_s / 3600))


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_writes_one_row_per_trial(built: Built, fmt: str, tmp_path: Path) -> None:
    import pandas as pd

    trials = built.study.get_trials(deepcopy=False)
    path = tmp_path / f"out.{fmt}"
    assert export(trials, fmt, path) == len(trials)
    frame = {"csv": pd.read_csv, "json": pd.read_json, "parquet": pd.read_parquet}[fmt](path)
    assert len(frame) == len(trials)
    assert {"number", "state", "value", "val_acc", "test_acc", "seed", "params_lr", "params_momentum"} <= set(frame)
    assert sorted(frame["state"].unique()) == ["complete", "fail", "pruned", "running", "waiting"]
    waiting = frame[frame["state"] == "waiting"].iloc[0]
    assert waiting["params_model"] == "cnn"  # a queued trial shows the parameters it will run with
    if fmt == "json":
        records = json.loads(path.read_text())
        assert records[built.numbers["D"][0]]["params_momentum"] == 0.5


def test_export_refuses_an_unknown_format_and_binary_to_stdout(built: Built) -> None:
    trials = built.study.get_trials(deepcopy=False)
    with pytest.raises(HpsearchError, match="--format"):
        export(trials, "xlsx", "x.xlsx")
    with pytest.raises(HpsearchError, match="binary"):
        export(trials, "parquet", "-")


def test_cost_counts_the_divergent_runs_the_curves_section_lists(built: Built) -> None:
    trials = built.study.get_trials(deepcopy=False)
    # A count of the worker's flag alone (1) missed the run whose loss never fell and the NaN curve.
    assert cost(trials).divergent == len(divergent_runs(trials)) == len(built.divergent) == 3
