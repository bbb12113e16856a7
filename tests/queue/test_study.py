"""Studies end to end with real worker processes, on PostgreSQL and on the embedded journal file."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, cli_env, run_cli, start_worker, tiny_spec, unique, write_spec
from hpsearch import space
from hpsearch.spec.loading import load_spec
from hpsearch.storage.backend import open_storage


def _trials(name: str, url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)


def _run_workers(name: str, url: str, n: int, tmp_path: Path, *extra: str, env: dict | None = None) -> list[str]:
    procs = [start_worker(name, url, "--device", "cpu", *extra, env=env, log=tmp_path / f"w{i}.log") for i in range(n)]
    codes = [p.wait(timeout=400) for p in procs]
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(n)]
    assert codes == [0] * n, "\n".join(logs)
    return logs


GRID = {"lr": {"choices": [0.1, 0.03, 0.01, 0.003]}, "optimizer": {"choices": ["sgd", "momentum", "adam"]}}


@pytest.mark.parametrize("backend", ["postgres", "journal"])
def test_grid_runs_every_point_exactly_once(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue("pg_session_db") if backend == "postgres" else f"journal:{tmp_path / 'j.log'}"
    name = unique("grid")
    spec_path = write_spec(tmp_path, tiny_spec(name, repeats=2, space=GRID, train={
        "epochs": 1, "batch_size": 256, "model": "dense", "hidden_size": 8, "hidden_layers": 1}))
    run_cli("create-study", str(spec_path), "--storage", url, check=True)
    # A small issue chunk makes workers top the queue up while others claim.
    logs = _run_workers(name, url, 4, tmp_path, "--quiet", env=cli_env(HPSEARCH_ISSUE_CHUNK="5"))
    assert all("study done" in log for log in logs)

    trials = _trials(name, url)
    plan = space.planned_trials(load_spec(spec_path))
    assert len(plan) == 24
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 24}
    done = Counter((space.config_id(t.params), t.user_attrs["seed"]) for t in trials)
    assert done == Counter((space.config_id(p), s) for p, s in plan)  # each point x seed exactly once
    t = trials[0]
    for key in ("config", "curve", "val_acc", "test_acc", "duration_s", "device", "confusion_matrix"):
        assert key in t.user_attrs, key
    assert t.user_attrs["config"]["seed"] == t.user_attrs["seed"]
    assert sorted(t.intermediate_values) == [1]

    if backend == "postgres":
        status = run_cli("status", name, "--storage", url, check=True).stdout
        assert "24 finished of 24 planned, 0 to go" in status and "trials/hour" in status
        best = run_cli("best", name, "--storage", url, "--top", "3", check=True).stdout
        assert "test_acc" in best and best.count("\n") > 5
        listing = run_cli("list", "--storage", url, check=True).stdout
        assert name in listing


@pytest.mark.parametrize(("over", "line"), [
    ({"repeats": 2}, "(grid, 8 trials planned: 4 configurations x 2 seeds; hash"),
    ({}, "(grid, 4 trials planned: 4 configurations x 1 seed; hash"),
    ({"sampler": "random", "budget": 5, "repeats": 2},
     "(random, up to 10 trials planned: 5 sampled configurations x 2 seeds, fewer where one is pruned or fails;"),
    ({"sampler": "tpe", "budget": 5}, "(tpe, 5 trials planned: 5 sampled configurations x 1 seed; hash"),
])
def test_create_study_counts_trials_from_configurations_and_seeds(tmp_path: Path, over: dict, line: str) -> None:
    name = unique("plan")
    url = f"journal:{tmp_path / 'journal.log'}"
    created = run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name, **over))), "--storage", url, check=True)
    assert f"created study {name!r} {line}" in created.stdout, created.stdout
    if over.get("sampler") is None:
        assert len(_trials(name, url)) == 4 * over.get("repeats", 1)  # the count is the plan's


def test_the_printed_worker_command_and_worker_py_work_from_any_directory(tmp_path: Path) -> None:
    name = unique("anywhere")
    url = f"journal:{tmp_path / 'journal.log'}"
    created = run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name))), "--storage", url, check=True)
    hint = next(ln for ln in created.stdout.splitlines() if ln.startswith("run workers with: "))
    assert hint == f"run workers with: hpsearch worker --study {name} --storage {url}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in cli_env().items() if k != "PYTHONPATH"}  # nothing but the installed venv
    command = [str(Path(sys.executable).parent / "hpsearch"), *hint.split(": ", 1)[1].split()[1:]]
    for argv in (command, [sys.executable, str(ROOT / "worker.py"), "--study", name, "--storage", url]):
        proc = subprocess.run([*argv, "--device", "cpu", "--n-trials", "1"], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sum(t.state == TrialState.COMPLETE for t in _trials(name, url)) == 2


def test_create_study_is_idempotent_and_guards_the_spec(pg_session_db: str, tmp_path: Path) -> None:
    name = unique("idem")
    spec_path = write_spec(tmp_path, tiny_spec(name))
    first = run_cli("create-study", str(spec_path), "--storage", pg_session_db, check=True)
    assert "created study" in first.stdout
    again = run_cli("create-study", str(spec_path), "--storage", pg_session_db, check=True)
    assert "already exists with this spec" in again.stdout and "nothing to do" in again.stdout
    changed = run_cli("create-study", str(spec_path), "--storage", pg_session_db, "--set", "repeats=2")
    assert changed.returncode != 0
    assert "already exists with a different spec" in changed.stderr and "--replace" in changed.stderr
    assert "Traceback" not in changed.stderr
    assert len(_trials(name, pg_session_db)) == 4  # nothing touched
    replaced = run_cli("create-study", str(spec_path), "--storage", pg_session_db, "--set", "repeats=2", "--replace",
                       check=True)
    assert "created study" in replaced.stdout
    assert len(_trials(name, pg_session_db)) == 8
    # optuna-dashboard names the objective after the spec's metric, not "Objective 0".
    assert optuna.load_study(study_name=name, storage=open_storage(pg_session_db)).metric_names == ["val_acc"]


def test_concurrent_create_study_gives_one_study(pg_url: str, tmp_path: Path) -> None:
    name = unique("race")
    spec_path = write_spec(tmp_path, tiny_spec(name, repeats=3))
    procs = [subprocess.Popen([sys.executable, "-m", "hpsearch", "create-study", str(spec_path), "--storage", pg_url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=ROOT)
             for _ in range(6)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, outs
    assert sum("created study" in o for o, _ in outs) == 1
    summaries = optuna.get_all_study_summaries(open_storage(pg_url))
    assert [s.study_name for s in summaries] == [name]
    assert len(_trials(name, pg_url)) == 12


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_budget_is_honoured_across_workers(sampler: str, pg_session_db: str, tmp_path: Path) -> None:
    name = unique(sampler)
    spec = {"name": name, "objective": "hps_objectives:quadratic", "metric": "loss", "direction": "minimize",
            "sampler": {"name": sampler, **({"n_startup_trials": 4} if sampler == "tpe" else {})},
            "budget": {"trials": 14}, "train": {"steps": 2}, "space": {"x": {"low": -1.0, "high": 1.0}}}
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", pg_session_db, check=True)
    _run_workers(name, pg_session_db, 4, tmp_path, "--quiet", env=cli_env(HPSEARCH_ISSUE_CHUNK="3"))
    trials = _trials(name, pg_session_db)
    assert len(trials) == 14 and all(t.state == TrialState.COMPLETE for t in trials)
    assert not any(t.user_attrs["torch_imported"] for t in trials)  # user objectives stay torch-free
    assert len({round(t.params["x"], 12) for t in trials}) == 14  # workers never start identical points


def test_tpe_repeats_queue_the_other_seeds(journal_url: str, tmp_path: Path) -> None:
    name = unique("rep")
    spec = {"name": name, "objective": "hps_objectives:quadratic", "metric": "loss", "direction": "minimize",
            "sampler": "tpe", "budget": 3, "repeats": 3, "seed": 10, "train": {"steps": 1},
            "space": {"x": {"low": -1.0, "high": 1.0}}}
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", journal_url, check=True)
    _run_workers(name, journal_url, 2, tmp_path, "--quiet")
    trials = _trials(name, journal_url)
    assert len(trials) == 9
    by_config = Counter(t.user_attrs["config_id"] for t in trials)
    assert sorted(by_config.values()) == [3, 3, 3]
    seeds = {cid: sorted(t.user_attrs["seed"] for t in trials if t.user_attrs["config_id"] == cid) for cid in by_config}
    assert all(s == [10, 11, 12] for s in seeds.values())


def test_median_pruner_prunes_clearly_bad_configurations(journal_url: str, tmp_path: Path) -> None:
    name = unique("prune")
    spec = tiny_spec(name, pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
                     space={"lr": {"choices": [0.1, 0.05, 1.0e-6, 1.0e-7]}},
                     train={"epochs": 4, "batch_size": 64, "model": "dense", "hidden_size": 16, "hidden_layers": 1,
                            "optimizer": "adam"})
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", journal_url, check=True)
    _run_workers(name, journal_url, 1, tmp_path)  # one worker: the good points run first, in grid order
    trials = _trials(name, journal_url)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert {t.params["lr"] for t in pruned} == {1e-6, 1e-7}
    assert all(t.user_attrs["pruned_at_epoch"] < 4 for t in pruned)
    assert all(t.state == TrialState.COMPLETE for t in trials if t.params["lr"] >= 0.05)


def test_same_parameters_and_seed_give_the_same_metrics(tmp_path: Path) -> None:
    from hpsearch.training import trainer

    spec = load_spec(write_spec(tmp_path, tiny_spec("det", space={"lr": {"choices": [0.05]}},
                                                      train={"epochs": 2, "batch_size": 64, "model": "dense",
                                                             "dropout": 0.2, "hidden_size": 16, "hidden_layers": 1})))
    curves = []
    for _ in range(2):
        study = optuna.create_study(direction="maximize")
        study.enqueue_trial({"lr": 0.05}, user_attrs={"seed": 3})
        trial = study.ask()
        value = trainer.run(trial, spec, trainer.Context(device="cpu", progress=lambda m: None))
        curves.append((value, trial.user_attrs["curve"], trial.user_attrs["test_acc"]))
    strip = [(v, [{k: r[k] for k in r if k != "epoch_time"} for r in c], t) for v, c, t in curves]
    assert strip[0] == strip[1]


def _imported(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Run `hpsearch ARGS` as a user does, under -X importtime: the modules it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "hpsearch", *args], capture_output=True,
                          text=True, timeout=120, env=cli_env(), cwd=ROOT)
    modules = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return modules, proc


def test_reading_a_stored_spec_does_not_import_torch(pg_session_db: str, tmp_path: Path) -> None:
    """The stored spec is read structurally: status and list of a built-in-trainer study import neither
    torch nor the spec's plugin, though it names torch-side registries (model, optimizer, dataset)."""
    name = unique("torchfree")
    spec = tiny_spec(name, plugins=["hps_registered"], train={**tiny_spec(name)["train"], "model": "plugin_mlp"})
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", pg_session_db, check=True)
    for args in (["status", name], ["status", name, "--json"], ["list"]):
        modules, proc = _imported(*args, "--storage", pg_session_db)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "optuna" in modules and "hpsearch.queue.study" in modules  # the measurement sees imports
        assert "torch" not in modules and "hps_registered" not in modules, f"hpsearch {' '.join(args)}"
        assert name in proc.stdout
