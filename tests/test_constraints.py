"""Constraints (issue 23): `constraints: {n_params: {max: ...}}` recorded on every trial, handed to Optuna,
logged to W&B, and infeasible configurations never ranked above feasible ones, by `best` and `report`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from conftest import ROOT, cli_env, run_cli, start_worker, tiny_spec, unique, write_spec
from hpsearch.report.objectives import Goals
from hpsearch.report.stats import summarize
from hpsearch.storage.backend import open_storage

sys.path.insert(0, str(ROOT / "tests" / "training"))
from test_tracking import offline_runs  # noqa: E402 - W&B's run files, read back

# hidden_size x hidden_layers of the dense MLP on digits (64 inputs, 10 classes): parameters
N_PARAMS = {(4, 1): 310, (4, 2): 330, (64, 1): 4810, (64, 2): 8970}
BOUND = 1000


def test_infeasible_configurations_stay_off_the_front_and_are_marked(tmp_path: Path, journal_url: str) -> None:
    name = unique("bounded")
    spec = tiny_spec(name, metrics=["val_acc", "n_params"], constraints={"n_params": {"max": BOUND}},
                     tracking={"project": "hpsearch-tests"},
                     train={"epochs": 1, "batch_size": 128, "model": "dense", "optimizer": "adam", "lr": 0.01},
                     space={"hidden_size": {"choices": [4, 64]}, "hidden_layers": {"choices": [1, 2]}})
    del spec["metric"]
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", journal_url, check=True)
    worker = start_worker(name, journal_url, "--device", "cpu", env=cli_env(WANDB_DIR=str(tmp_path)))
    out, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0 and "Traceback" not in out, out

    # Every trial: its parameter count, the bound as Optuna's constraint value (relative), feasibility.
    study = optuna.load_study(study_name=name, storage=open_storage(journal_url))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        n = N_PARAMS[(t.params["hidden_size"], t.params["hidden_layers"])]
        assert t.values[1] == n == t.user_attrs["n_parameters"]
        assert t.user_attrs["feasible"] is (n <= BOUND)
        assert t.user_attrs["constraints"] == {"n_params.max": (n - BOUND) / BOUND}
        assert t.constraints == {"n_params.max": (n - BOUND) / BOUND}  # what Optuna's samplers read
    feasible = {t.number for t in trials if t.user_attrs["feasible"]}
    assert study.best_trials and {t.number for t in study.best_trials} <= feasible  # Optuna's own front too

    # best: the front is feasible; the infeasible configurations rank after it, each naming its bound.
    data = json.loads(run_cli("best", name, "--storage", journal_url, "--json", check=True).stdout)
    assert data["constraints"] == {"n_params": {"max": BOUND}} and data["n_infeasible"] == 2
    assert data["configurations"] and all(c["feasible"] and c["violations"] == [] for c in data["configurations"])
    assert {c["params"]["hidden_size"] for c in data["configurations"]} == {4}
    text = " ".join(run_cli("best", name, "--storage", journal_url, check=True).stdout.split())
    assert "2 of 4 configurations broke a constraint (n_params <= 1,000) and rank after every feasible one" in text
    assert data["pareto"]["not_dominated"]["infeasible"] + data["pareto"]["dominated"] == data["pareto"]["others"]

    # report: the bound in the front's section and figure.
    out_dir = tmp_path / "report"
    run_cli("report", name, "--storage", journal_url, "--out", str(out_dir), check=True)
    md = (out_dir / "report.md").read_text()
    assert "Constraints: n_params <= 1,000" in md and "2 of 4 configurations broke a constraint" in md
    assert (out_dir / "figures" / "pareto_front.png").exists()

    # W&B: every objective, and whether the run met the bounds.
    runs = {r["config"]["trial_number"]: r for r in offline_runs(tmp_path)}
    assert sorted(runs) == [0, 1, 2, 3]
    for t in trials:
        summary = runs[t.number]["summary"]
        assert summary["objective/val_acc"] == t.values[0] and summary["objective/n_params"] == t.values[1]
        assert summary["objective"] == t.values[0] and summary["feasible"] is t.user_attrs["feasible"]


def _trial(number: int, config: str, value: float, n_params: int, seed: int = 0) -> Any:
    trial = optuna.trial.create_trial(value=value, params={}, distributions={},
                                      user_attrs={"config_id": config, "name": config, "seed": seed,
                                                  "n_parameters": n_params})
    trial.number = number
    return trial


def test_a_single_objective_ranks_an_infeasible_configuration_after_every_feasible_one() -> None:
    # "big" is the most accurate, but one of its seeds breaks the bound; "mid" breaks it on both.
    trials = [_trial(0, "big", 0.99, 5000), _trial(1, "big", 0.98, 900, seed=1), _trial(2, "small", 0.90, 300),
              _trial(3, "mid", 0.95, 2000), _trial(4, "tiny", 0.80, 100)]
    goals = Goals(("val_acc",), (True,), {"n_params": {"max": 1000}})
    ranked = summarize(trials, True, goals=goals)
    assert [(r.name, r.rank, r.feasible) for r in ranked] == [
        ("small", 1, True), ("tiny", 2, True), ("big", 3, False), ("mid", 4, False)]
    assert ranked[2].violations == ["n_params 5,000 > 1,000 (1 of 2 seeds)"]
    assert ranked[3].violations == ["n_params 2,000 > 1,000"]
    # Unbounded, the same trials rank by accuracy alone.
    assert [r.name for r in summarize(trials, True)] == ["big", "mid", "small", "tiny"]
