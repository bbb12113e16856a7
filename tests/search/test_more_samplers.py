"""GP, CMA-ES and NSGA-II/III (issue 23): each runs a study with two real workers on PostgreSQL and
on the journal, every planned (configuration, seed) exactly once, the sampler really learning, repeat
seeds never sampled and fused; what cannot work is refused at create-study in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from conftest import run_cli, start_worker, tiny_spec, unique, write_spec
from faultkit import assert_exactly_once
from hpsearch.storage.backend import open_storage

BUDGET, REPEATS = 12, 2
NUMERIC = {
    "lr": {"low": 1.0e-3, "high": 0.3, "log": True},
    "dropout": {"low": 0.0, "high": 0.5},
    "weight_decay": {"low": 1.0e-6, "high": 1.0e-2, "log": True},
}
# Small populations and start-ups, so a 12-trial study gets past the random start.
SAMPLERS = {
    "gp": {"name": "gp", "n_startup_trials": 4},
    "cmaes": {"name": "cmaes", "popsize": 4},
    "nsga2": {"name": "nsga2", "population_size": 4},
    "nsga3": {"name": "nsga3", "population_size": 4},
}
# What each sampler writes on a trial it chose from what it learned (not at random).
LEARNED_MARK = {
    "gp": lambda t: "gp:relative_params:0" in t.system_attrs,
    "cmaes": lambda t: t.system_attrs.get("cma:generation", 0) >= 1,
    "nsga2": lambda t: t.system_attrs.get("NSGAIISampler:generation", 0) >= 1,
    "nsga3": lambda t: t.system_attrs.get("NSGAIIISampler:generation", 0) >= 1,
}
SAMPLED_MARK = ("gp:relative_params:0", "cma:generation", "NSGAIISampler:generation", "NSGAIIISampler:generation")


def numeric_spec(name: str, sampler: Any, **over: Any) -> dict[str, Any]:
    """A numeric space (CMA-ES applies) whose configurations all fuse (no searched shape)."""
    train = {"epochs": 1, "batch_size": 128, "model": "dense", "hidden_size": 16, "hidden_layers": 1,
             "optimizer": "adam"}
    return tiny_spec(name, **{"sampler": sampler, "budget": BUDGET, "repeats": REPEATS, "train": train,
                              "space": dict(NUMERIC), **over})


# Each sampler on one storage, each storage under two samplers (the claim path is the storage's,
# the sampler's state lives in the trials): the full 4 x 2 matrix cost the suite ~2 minutes more.
@pytest.mark.parametrize(("sampler", "storage"), [("gp", "pg_url"), ("cmaes", "journal_url"),
                                                  ("nsga2", "pg_url"), ("nsga3", "journal_url")])
def test_two_workers_run_every_planned_trial_once(sampler: str, storage: str, request: pytest.FixtureRequest,
                                                  tmp_path: Path) -> None:
    url = request.getfixturevalue(storage)
    name = unique(sampler)
    run_cli("create-study", str(write_spec(tmp_path, numeric_spec(name, SAMPLERS[sampler]))), "--storage", url,
            check=True)
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    workers = [start_worker(name, url, "--device", "cpu", "--fuse", "4", log=log) for log in logs]
    for w, log in zip(workers, logs, strict=True):
        assert w.wait(timeout=600) == 0, log.read_text()
        assert "Traceback" not in log.read_text(), log.read_text()
        assert f"({sampler}," in log.read_text()

    study = optuna.load_study(study_name=name, storage=open_storage(url))
    trials = study.get_trials(deepcopy=False)
    # A sampler may propose a configuration it already had (NSGA's crossover keeps a parent's
    # values): that ticket ends FAIL as a duplicate, naming the earlier trial, and is not trained.
    dups = [t for t in trials if t.state == TrialState.FAIL
            and t.user_attrs.get("fail_reason", "").startswith("duplicate:")]
    for t in dups:
        first = trials[int(t.user_attrs["fail_reason"].split("trial ")[1].split(" ")[0])]
        assert first.number < t.number and first.params == t.params and first.state == TrialState.COMPLETE
    assert_exactly_once(study, (BUDGET - len(dups)) * REPEATS)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    sampled = [t for t in done if t.user_attrs.get("repeat_of") is None]
    repeats = [t for t in done if t.user_attrs.get("repeat_of") is not None]
    assert len(sampled) == BUDGET - len(dups) and len(repeats) == (BUDGET - len(dups)) * (REPEATS - 1)
    # The sampler learned: some configurations came from its model, not its random start.
    assert any(LEARNED_MARK[sampler](t) for t in sampled), [t.system_attrs for t in sampled]
    # A repeat seed trains its configuration's parameters; the sampler was never asked for it.
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for t in repeats:
        assert t.params == by_number[t.user_attrs["repeat_of"]].params
        assert not any(key in t.system_attrs for key in SAMPLED_MARK), t.system_attrs
    # Sampled tickets train alone (their parameters exist only once claimed); repeat seeds fuse.
    assert {t.user_attrs.get("fused_group") for t in sampled} == {1}
    assert max(t.user_attrs.get("fused_group", 1) for t in repeats) > 1


def _nested(name: str) -> dict[str, Any]:
    space = {"lr": NUMERIC["lr"], "hidden_layers": {"low": 1, "high": 2},
             "momentum": {"low": 0.5, "high": 0.9, "when": {"hidden_layers": [2]}}}
    spec = numeric_spec(name, "cmaes")
    del spec["train"]["hidden_layers"]  # searched here
    return {**spec, "space": space}


REFUSED = [
    # (id, spec, --sampler, the line's gist)
    ("cmaes-categorical", lambda n: {**numeric_spec(n, "random"), "space": {**NUMERIC, "lr": {"choices": [0.1, 0.01]}}},
     "cmaes", "space.lr: CMA-ES samples numeric ranges only"),
    ("cmaes-conditional", _nested, None, "space.momentum: CMA-ES needs every parameter in every trial"),
    ("cmaes-x0-outside", lambda n: numeric_spec(n, {"name": "cmaes", "x0": {"lr": 5}}), None,
     "sampler.x0.lr: must be a number in [0.001, 0.3], but got 5"),
    ("unknown-option", lambda n: numeric_spec(n, {"name": "gp", "n_startup": 3}), None,
     "sampler.n_startup: is not an option of sampler 'gp'; known: deterministic_objective, n_startup_trials"),
    ("bad-value", lambda n: numeric_spec(n, {"name": "cmaes", "sigma0": -1}), None,
     "sampler.sigma0: must be a number > 0, but got -1"),
    ("bad-crossover", lambda n: numeric_spec(n, {"name": "nsga2", "crossover": "sbxx", "population_size": 4}), None,
     "crossover 'sbxx' is not registered"),
    ("optuna-refuses", lambda n: numeric_spec(n, {"name": "nsga3", "population_size": 2, "crossover": "undx"}), None,
     "population size should be greater than or equal to 3"),
    ("population-over-budget", lambda n: numeric_spec(n, "nsga2"), None,
     "sampler.population_size: must be below the budget (budget.trials=12), but got population_size=50"),
    ("gp-deterministic-repeats", lambda n: numeric_spec(n, {"name": "gp", "deterministic_objective": True,
                                                            "n_startup_trials": 4}), None,
     "sampler.deterministic_objective: must be false with repeats=2"),
]


@pytest.mark.parametrize(("case", "make", "override", "gist"), REFUSED, ids=[r[0] for r in REFUSED])
def test_what_cannot_work_is_refused_in_one_line(case: str, make: Any, override: str | None, gist: str,
                                                 journal_url: str, tmp_path: Path) -> None:
    name = unique(case)
    path = write_spec(tmp_path, make(name))
    proc = run_cli("create-study", str(path), "--storage", journal_url, *(["--sampler", override] if override else []))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and gist in lines[0], proc.stderr
    assert str(path) in lines[0] and "Traceback" not in proc.stderr + proc.stdout
    assert "created study" not in proc.stdout


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_the_same_sampler_on_the_command_line_is_accepted(sampler: str, journal_url: str, tmp_path: Path) -> None:
    """The valid half: `--sampler NAME` with its defaults on a numeric space and a budget that fits."""
    name = unique(sampler)
    spec = numeric_spec(name, "random", budget=60, repeats=1)
    proc = run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", journal_url, "--sampler", sampler)
    assert proc.returncode == 0, proc.stderr
    assert f"created study {name!r} ({sampler}," in proc.stdout


def test_a_configuration_proposed_again_is_not_trained_twice(journal_url: str, tmp_path: Path) -> None:
    # Deterministic stand-in for NSGA's crossover handing back a parent: the same parameters come
    # twice (enqueued, as a sampler's fixed suggestion is) in a random study of one seed. The second
    # ends FAIL as a duplicate naming the first; the first trains; the worker carries on (exit 0).
    name = unique("dup")
    spec = numeric_spec(name, "random", budget=2, repeats=1)
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", journal_url, check=True)
    study = optuna.load_study(study_name=name, storage=open_storage(journal_url))
    point = {"lr": 0.01, "dropout": 0.1, "weight_decay": 1e-4}
    study.enqueue_trial(point, skip_if_exists=False)
    study.enqueue_trial(point, skip_if_exists=False)
    log = tmp_path / "w.log"
    assert start_worker(name, journal_url, "--device", "cpu", log=log).wait(timeout=300) == 0, log.read_text()
    by_params = [t for t in study.get_trials(deepcopy=False) if t.params == point]
    assert [t.state for t in by_params] == [TrialState.COMPLETE, TrialState.FAIL], log.read_text()
    assert by_params[1].user_attrs["fail_reason"].startswith(f"duplicate: the sampler proposed the configuration "
                                                            f"and seed of trial {by_params[0].number} again")
    assert "Traceback" not in log.read_text()


def test_what_the_sampler_cannot_do_is_listed_with_the_spec_s_other_problems(journal_url: str, tmp_path: Path) -> None:
    """CMA-ES on a categorical parameter and a bad seed: both lines, at once (the fit check ran
    after the spec's own validation and one of them waited for the other to be fixed)."""
    spec = numeric_spec(unique("both"), {"name": "cmaes"})
    spec["space"]["optimizer"] = {"choices": ["sgd", "adam"]}
    spec["seed"] = -1
    proc = run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", journal_url)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "seed: must be an integer" in proc.stderr and "space.optimizer: CMA-ES samples numeric ranges" in proc.stderr
