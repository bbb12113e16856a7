"""Warm start: a study begins with another study's best configurations, restricted to its own space.

A real source study (a grid of a torch-free objective, one worker), then `create-study --warm-start`
from two processes at once on PostgreSQL, then workers: the first K trials are exactly the K best
configurations that lie in the new space, each once, each saying where it came from.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest

from conftest import ROOT, cli_env, run_cli, start_worker, unique, write_spec
from hpsearch import schema
from hpsearch.spec.model import Param
from hpsearch.spec.warm import fits, restrict
from hpsearch.storage.backend import open_storage

XS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def _spec(name: str, **over: Any) -> dict[str, Any]:
    # hps_objectives:quadratic: (x - 0.3)^2 + 1/steps, to minimize; best x = 0.3, then 0.2/0.4, ...
    spec = {"name": name, "objective": "hps_objectives:quadratic", "metric": "loss", "direction": "minimize",
            "sampler": "grid", "train": {"steps": 2}, "space": {"x": {"choices": XS}}, "tracking": "none"}
    spec.update(over)
    return spec


def _run_study(name: str, url: str, workers: int = 1) -> None:
    procs = [start_worker(name, url) for _ in range(workers)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out


def _trials(name: str, url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)


@pytest.fixture
def source(tmp_path: Path, pg_url: str) -> tuple[str, str]:
    name = unique("source")
    run_cli("create-study", str(write_spec(tmp_path, _spec(name), "source.yaml")), "--storage", pg_url, check=True)
    _run_study(name, pg_url)
    return name, pg_url


def test_two_racing_create_studies_enqueue_the_top_k_in_the_new_space_once(tmp_path: Path,
                                                                           source: tuple[str, str]) -> None:
    src, url = source
    name = unique("warm")
    # The new space: x in [0.25, 0.65] (0.2, tied second in the source, lies outside: skipped, not
    # bent into range), and y, which the source never searched (left to the sampler).
    spec = write_spec(tmp_path, _spec(name, sampler="random", budget=6, space={
        "x": {"low": 0.25, "high": 0.65}, "y": {"choices": [1, 2]}}), "warm.yaml")
    cmd = [sys.executable, "-m", "hpsearch", "create-study", str(spec), "--storage", url,
           "--warm-start", src, "--top", "3"]
    racing = [subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in racing]
    assert [p.returncode for p in racing] == [0, 0], outs
    # 0.3 is ranked 1; 0.2 and 0.4 tie (2, 3), as do 0.1 and 0.5 (4, 5): whichever way the ties go
    assert any("warm start: the first 3 trials take the configurations ranked 1, " in out for out, _ in outs), outs

    _run_study(name, url, workers=2)
    trials = _trials(name, url)
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    warm = [t for t in trials if schema.WARM_START in t.user_attrs]
    assert Counter(t.params["x"] for t in warm) == Counter({0.3: 1, 0.4: 1, 0.5: 1})  # each once
    assert {t.user_attrs[schema.PLAN_INDEX] for t in warm} == {0, 1, 2}  # the plan's first entries
    assert all(t.user_attrs[schema.WARM_START].startswith(f"{src} trial ") and t.params["y"] in (1, 2) for t in warm)
    stored = optuna.load_study(study_name=name, storage=open_storage(url)).user_attrs[schema.SPEC_ATTR]
    assert [c["params"] for c in stored["warm_start"]["configs"]] == [{"x": 0.3}, {"x": 0.4}, {"x": 0.5}]

    # Run again, after the source has moved on: the same study, nothing new (the choice is stored).
    run_cli("create-study", str(write_spec(tmp_path, _spec(src, space={"x": {"choices": [0.45]}}), "more.yaml")),
            "--storage", url, "--name", src, "--replace", check=True)
    again = run_cli("create-study", str(spec), "--storage", url, "--warm-start", src, "--top", "3", check=True)
    assert "already exists with this spec" in again.stdout and len(_trials(name, url)) == 6


@pytest.mark.parametrize(("args", "over", "line"), [
    (["--warm-start", "{src}"], {}, "warm_start: a grid study runs every point anyway"),
    (["--warm-start", "no-such-study"], {"sampler": "random", "budget": 4},
     "warm_start: study 'no-such-study' does not exist"),
    (["--top", "2"], {"sampler": "random", "budget": 4}, "--top goes with --warm-start STUDY"),
    (["--warm-start", "{src}", "--top", "5"], {"sampler": "random", "budget": 4},
     "warm_start.top: must be at most the budget's 4 configurations, but got top=5"),
    (["--warm-start", "{src}"], {"sampler": "random", "budget": 4, "space": {"x": {"low": 2.0, "high": 3.0}}},
     "warm_start: none of the 8 configurations of study"),
])
def test_a_warm_start_that_cannot_work_is_one_line_and_creates_nothing(tmp_path: Path, source: tuple[str, str],
                                                                        args: list[str], over: dict[str, Any],
                                                                        line: str) -> None:
    src, url = source
    name = unique("refused")
    proc = run_cli("create-study", str(write_spec(tmp_path, _spec(name, **over))), "--storage", url,
                   *[a.format(src=src) for a in args])
    assert proc.returncode == (3 if "does not exist" in line else 2) and line in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert name not in [s.study_name for s in optuna.get_all_study_summaries(open_storage(url))]


def test_a_value_fits_only_its_own_space() -> None:
    ranged = Param("lr", low=0.001, high=0.1, log=True)
    stepped = Param("units", low=16, high=64, step=16, is_int=True)
    choice = Param("opt", choices=["sgd", "adam", 1])
    assert fits(0.01, ranged) and not fits(0.2, ranged) and not fits(True, ranged) and not fits(float("nan"), ranged)
    assert fits(32, stepped) and not fits(40, stepped) and not fits(32.5, stepped)
    assert fits("adam", choice) and fits(1, choice) and not fits(True, choice) and not fits(1.0, choice)
    space = {"lr": ranged, "units": stepped}
    assert restrict({"units": 32, "lr": 0.01, "dropout": 0.5}, space) == {"lr": 0.01, "units": 32}  # space order
    assert restrict({"lr": 0.5}, space) is None and restrict({"dropout": 0.5}, space) is None
