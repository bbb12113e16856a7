"""Several objectives (issue 23): a study of val_acc against n_params on the dense MLP, its Pareto front
in `best`, `report` and `export`, a user objective's tuple, and what cannot work refused in one line."""

from __future__ import annotations

import json
import math
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, run_cli, start_worker, tiny_spec, unique, write_spec
from faultkit import assert_exactly_once
from hpsearch import objective
from hpsearch.report.front import front_line
from hpsearch.report.objectives import dominates, pareto_ranks
from hpsearch.spec.parse import spec_from_dict
from hpsearch.storage.backend import open_storage

sys.path.insert(0, str(ROOT / "tests" / "ops"))
from test_dashboard import AUTH, TOKEN, _page_text, request, start_dashboard, stop, wait_for  # noqa: E402

BUDGET, REPEATS = 6, 2
GOALS = {"val_acc": True, "n_params": False}  # metric -> maximize


def mlp_spec(name: str, **over: Any) -> dict[str, Any]:
    """The dense MLP with its width and depth searched, 1 epoch on digits: val_acc against n_params."""
    spec = tiny_spec(name, metrics=["val_acc", "n_params"], sampler={"name": "tpe", "n_startup_trials": 3},
                     budget=BUDGET, repeats=REPEATS,
                     train={"epochs": 1, "batch_size": 128, "model": "dense", "optimizer": "adam", "lr": 0.01},
                     space={"hidden_size": {"choices": [4, 16, 64]}, "hidden_layers": {"low": 1, "high": 2}}, **over)
    del spec["metric"]
    return spec


def _means(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """config_id -> each objective's mean over the complete seeds, recomputed from `export` rows."""
    seeds: dict[str, list[list[float]]] = defaultdict(list)
    for r in rows:
        if r["state"] == "complete":
            seeds[r["config_id"]].append([float(r[m]) for m in GOALS])
    return {cid: [sum(v[i] for v in vs) / len(vs) for i in range(len(GOALS))] for cid, vs in seeds.items()}


def test_two_workers_on_postgres_find_a_pareto_front_of_the_mlp(tmp_path: Path, pg_url: str, browser: Any) -> None:
    name = unique("mo")
    run_cli("create-study", str(write_spec(tmp_path, mlp_spec(name))), "--storage", pg_url, check=True)
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    workers = [start_worker(name, pg_url, "--device", "cpu", log=log) for log in logs]
    for w, log in zip(workers, logs, strict=True):
        assert w.wait(timeout=600) == 0, log.read_text()
        assert "Traceback" not in log.read_text(), log.read_text()
    assert "complete: val_acc=" in logs[0].read_text() + logs[1].read_text()

    # The study has both directions and names them (what optuna-dashboard labels its front with).
    study = optuna.load_study(study_name=name, storage=open_storage(pg_url))
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["val_acc", "n_params"]
    trials = study.get_trials(deepcopy=False)
    dups = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs["fail_reason"].startswith("duplicate:")]
    assert_exactly_once(study, (BUDGET - len(dups)) * REPEATS)
    for t in trials:
        if t.state == TrialState.COMPLETE:  # the worker told both values, each also the trial's attribute
            assert t.values == [t.user_attrs["val_acc"], t.user_attrs["n_parameters"]]

    # export: every objective a named column.
    proc = run_cli("export", name, "--storage", pg_url, "--format", "json", check=True)
    rows = json.loads(proc.stdout)
    means = _means(rows)
    assert len(means) == BUDGET - len(dups)

    # best: the front's rows are non-dominated, every other configuration dominated (all are clean,
    # none is bounded), and each row's means are the seeds' means.
    data = json.loads(run_cli("best", name, "--storage", pg_url, "--json", check=True).stdout)
    assert data["metrics"] == ["val_acc", "n_params"] and data["directions"] == ["maximize", "minimize"]
    front = {c["config_id"]: c for c in data["configurations"]}
    up = list(GOALS.values())
    for cid, c in front.items():
        assert c["rank"] == 1 and c["seeds"]["complete"] == REPEATS
        assert [c["objectives"][m]["mean"] for m in GOALS] == pytest.approx(means[cid])
        assert not any(dominates(other, means[cid], up) for other in means.values())
    others = [cid for cid in means if cid not in front]
    assert all(any(dominates(means[f], means[cid], up) for f in front) for cid in others)
    assert data["pareto"] == {"size": len(front), "others": len(others), "dominated": len(others),
                              "not_dominated": {"infeasible": 0, "flagged": 0}}
    text = " ".join(run_cli("best", name, "--storage", pg_url, check=True).stdout.split())
    assert "Pareto-optimal configurations" in text and front_line(data) in text

    # report: the front drawn, the table in the page.
    out = tmp_path / "report"
    run_cli("report", name, "--storage", pg_url, "--out", str(out), check=True)
    assert (out / "figures" / "pareto_front.png").stat().st_size > 0
    assert (out / "figures" / "pareto_front.html").exists()
    md = (out / "report.md").read_text()
    assert "## Pareto front" in md and f"The {len(front)} Pareto-optimal configurations" in md

    # optuna-dashboard: the study's page draws the front, its axes named after the metrics.
    dashboard, base = start_dashboard(pg_url, "--read-only")
    try:
        browser.get(f"{base}/dashboard?token={TOKEN}")
        wait_for(lambda: name in _page_text(browser), 60, f"study {name} on the study list")
        study_id = next(s["study_id"] for s in json.loads(request(f"{base}/api/studies", headers=AUTH)[1])[
            "study_summaries"] if s["study_name"] == name)
        browser.get(f"{base}/dashboard/studies/{study_id}")
        wait_for(lambda: "Pareto Front\nObjective X:\nval_acc\nObjective Y:\nn_params" in _page_text(browser), 60,
                 "the Pareto front with the metric names")
    finally:
        stop(dashboard)


# ---------------------------------------------------------------- a user objective's tuple


def two_goals(trial: optuna.Trial, spec: dict[str, Any]) -> tuple[float, float]:
    """A user objective of two metrics that trade off (a larger x scores more and costs more); sets `size`."""
    x = float(trial.params["x"])
    trial.set_user_attr("size", 10 * x)
    return math.sqrt(x), x


def _user_spec(**over: Any) -> Any:
    return spec_from_dict({"name": "u", "objective": "test_multi_objective:two_goals", "sampler": "grid",
                           "metrics": {"score": "maximize", "cost": "minimize"},
                           "space": {"x": {"choices": [0.1, 0.5, 0.9]}}, **over})


def test_a_user_objective_returns_one_value_per_metric_and_may_be_bounded_on_its_own_attribute() -> None:
    spec = _user_spec(constraints={"size": {"max": 6}})
    study = optuna.create_study(directions=spec.directions)
    for x in (0.1, 0.5, 0.9):
        study.enqueue_trial({"x": x})
        trial = study.ask()
        values = objective.run(trial, spec, lambda: None)
        assert values == pytest.approx([math.sqrt(x), x])
        # Each objective under its name (where `best` reads the others), the bound on `size`.
        assert trial.user_attrs["score"] == values[0] and trial.user_attrs["cost"] == x
        assert trial.user_attrs["feasible"] is (10 * x <= 6)
        assert trial.user_attrs["constraints"] == {"size.max": pytest.approx((10 * x - 6) / 6)}
        study.tell(trial, values)
    # Optuna's own reading agrees: x=0.9 is infeasible, so never on its front either.
    assert sorted(t.params["x"] for t in study.best_trials) == [0.1, 0.5]


@pytest.mark.parametrize(("bad", "divergent"), [(0.5, False), ((0.5,), False), ((0.5, 1.0, 2.0), False),
                                                ((0.5, float("nan")), True)])
def test_anything_but_one_finite_number_per_metric_is_a_bad_result(bad: Any, divergent: bool) -> None:
    with pytest.raises(objective.BadResult, match="finite number") as info:
        objective.result(bad, _user_spec())
    assert info.value.divergent is divergent


def test_pareto_ranks_are_the_fronts_of_a_brute_force_peel() -> None:
    rng = random.Random(0)
    for _ in range(30):
        up = [rng.random() < 0.5 for _ in range(rng.choice([2, 3]))]
        points = [[rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in up] for _ in range(rng.randint(1, 25))]
        expected, left, front = [0] * len(points), set(range(len(points))), 1
        while left:
            layer = {i for i in left if not any(dominates(points[j], points[i], up) for j in left)}
            for i in layer:
                expected[i] = front
            left, front = left - layer, front + 1
        assert pareto_ranks(points, up) == expected


# ---------------------------------------------------------------- refused at create-study

REFUSED = [
    ("pruner", {"pruner": "median"}, "pruner: must be none with several metrics"),
    ("cmaes", {"sampler": {"name": "cmaes", "popsize": 4}, "space": {"dropout": {"low": 0.0, "high": 0.5}}},
     "sampler: cmaes optimizes one metric (Optuna's CmaEsSampler refuses a multi-objective study)"),
    ("unknown-metric", {"metrics": ["val_acc", "n_param"]},
     "metrics[1]: must be one of val_acc, val_loss, n_params, train_time_s, latency_ms, flops, but got 'n_param' "
     "(did you mean 'n_params'?)"),
    ("directions", {"directions": ["maximize"]}, "directions: must give one direction per metric (2 metrics"),
]


@pytest.mark.parametrize(("case", "change", "gist"), REFUSED, ids=[r[0] for r in REFUSED])
def test_what_several_objectives_cannot_do_is_refused_in_one_line(case: str, change: dict[str, Any], gist: str,
                                                                  journal_url: str, tmp_path: Path) -> None:
    path = write_spec(tmp_path, {**mlp_spec(unique(case)), **change})
    proc = run_cli("create-study", str(path), "--storage", journal_url)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and gist in lines[0] and str(path) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and "created study" not in proc.stdout
