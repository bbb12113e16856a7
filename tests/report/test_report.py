"""`hpsearch report`, `repeat` and `export`: on a constructed study (exact numbers in the report) and
on a real small study run by a worker process, opened in headless Chromium."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from scipy import stats
from test_report_data import CONFIGS, DISTS, build

from conftest import cli_env, run_cli, start_worker, tiny_spec, unique, write_spec
from hpsearch import space as space_mod
from hpsearch.queue import plan as plan_mod
from hpsearch.queue import study as study_mod
from hpsearch.report.build import ReportOptions, write_report
from hpsearch.report.export import trials_frame
from hpsearch.report.stats import summarize
from hpsearch.storage.backend import open_storage


def _png_ok(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
        return im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def _section(md: str, title: str) -> str:
    start = md.index(f"## {title}")
    end = md.find("\n## ", start + 1)
    return md[start:end if end > 0 else None]


# ---------------------------------------------------------------- constructed study, exact numbers


def test_report_of_a_constructed_study_shows_the_constructed_answers(tmp_path: Path) -> None:
    b = build(f"journal:{tmp_path / 'journal.log'}")
    opts = ReportOptions(where=["test_acc < 0.15", "val_acc > 0.95"], group_by="model", top=2)
    md_path, html_path, _ = write_report(b.study, tmp_path / "report", opts)
    md = md_path.read_text()

    best = _section(md, "Best configurations")
    vals = CONFIGS["C"][1]
    low, high = stats.t.interval(0.9, len(vals) - 1, loc=np.mean(vals), scale=stats.sem(vals))
    row = next(line for line in best.splitlines() if "1 ★" in line)
    assert f"{np.mean(vals):.4f} ± {(high - low) / 2:.4f}" in row and f"[{low:.4f}, {high:.4f}]" in row
    assert best.count("★") == 2  # the marked row, and the legend sentence
    # D has a queued second seed: counted as pending, shown, and no reason to demote it.
    assert "| 4 | cnn | md_cnn_lr_0.05_opt_sgd_mom_0.5 | 2 seeds, 1 pending | 0.8000 | n=1: no interval |" in best
    assert "*0.3333*" in best and "*0.3600*" in best and "*0.4000*" in best  # uniform, prior, majority (test)

    parallel = _section(md, "Parallel coordinates")
    assert "Filter 1: test_acc < 0.15 - 1 trial(s) match, 1 complete." in parallel
    assert "Filter 2: val_acc > 0.95 - 1 trial(s) match, 1 complete." in parallel

    curves = _section(md, "Learning curves")
    divergent, under = curves.split("Under-trained")
    assert {int(n) for n in _numbers(divergent)} == b.divergent
    assert {int(n) for n in _numbers(under)} == b.under_trained

    importance = _section(md, "Hyperparameter importance")
    assert "| parameter | fANOVA | PED-ANOVA | MDI |" in importance
    assert "Spearman rho" in importance and "eta^2" in importance

    confusion = _section(md, "Confusion matrix of the best configuration")
    assert "| cat | 80 | 74 | 0.9250 |" in confusion  # rows [20 - seed, seed, 0] summed over seeds 0-3

    cost = _section(md, "Cost of the search")
    assert "| epochs saved by pruning | 3 (60% of what the pruned trials would have trained) |" in cost
    # One definition of divergent: the curves section's list and the cost table count the same runs.
    n = len(b.divergent)
    assert f"Divergent ({n}):" in curves and f"| divergent trials | {n} |" in cost
    html_curves = (tmp_path / "report" / "figures" / "learning_curves.html").read_text()
    assert "validation val_acc" in html_curves and "validation val_loss" in html_curves  # val_loss beside val_acc
    assert "still running (1 running, 1 waiting): every number below is a snapshot" in md

    html = html_path.read_text()
    assert html.count('class="best"') == 1 and 'src="figures/plotly.min.js"' in html
    pngs = sorted((tmp_path / "report" / "figures").glob("*.png"))
    assert {p.stem for p in pngs} == {"class_histogram", "parallel_all", "parallel_where1", "parallel_where2",
                                      "history", "slice", "contour", "importance", "learning_curves", "confusion"}
    assert all(_png_ok(p) for p in pngs)


def _numbers(text: str) -> list[str]:
    return [cell.strip()[1:] for line in text.splitlines() if line.startswith("| #")
            for cell in [line.split("|")[1]]]


def test_report_of_a_study_without_results_says_so(tmp_path: Path) -> None:
    study = optuna.create_study(storage=open_storage(f"journal:{tmp_path / 'j.log'}", create=True),
                                study_name="empty")
    md, _, _ = write_report(study, tmp_path / "out", ReportOptions(where=["value > 1"]))
    text = md.read_text()
    assert "No complete trial yet." in text and "Class counts are not recorded" in text


# ---------------------------------------------------------------- a real small study


def _run_worker(name: str, url: str, log: Path, *args: str) -> None:
    proc = start_worker(name, url, "--device", "cpu", "--quiet", *args, log=log)
    assert proc.wait(timeout=300) == 0, log.read_text()


def _trials(name: str, url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)


def test_real_small_study_repeat_report_export_and_browser(tmp_path: Path, browser: Any) -> None:
    name, url = unique("rep"), f"journal:{tmp_path / 'journal.log'}"
    spec = tiny_spec(name, repeats=2, train={"epochs": 3, "batch_size": 128, "model": "dense", "hidden_size": 16,
                                             "hidden_layers": 1})
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", url, check=True)
    _run_worker(name, url, tmp_path / "w1.log")

    # --- repeat: the best configuration per optimizer gets 2 new seeds; a worker runs them ----------
    out = run_cli("repeat", name, "--storage", url, "--top", "1", "--seeds", "2", "--group-by", "optimizer",
                  check=True).stdout
    assert "queued 4 repeat trial(s) for 2 configuration(s)" in out
    queued = [t for t in _trials(name, url) if t.user_attrs.get("is_repeat")]
    assert len(queued) == 4 and all(t.state == TrialState.WAITING for t in queued)
    _run_worker(name, url, tmp_path / "w2.log")
    trials = _trials(name, url)
    assert all(t.state == TrialState.COMPLETE for t in trials) and len(trials) == 8 + 4
    by_config: dict[str, list[int]] = {}
    for t in trials:
        by_config.setdefault(t.user_attrs["config_id"], []).append(t.user_attrs["seed"])
        assert t.user_attrs["config"]["seed"] == t.user_attrs["seed"]  # the worker trained the queued seed
    assert sorted(len(s) for s in by_config.values()) == [2, 2, 4, 4]
    assert all(len(set(s)) == len(s) for s in by_config.values())  # no seed reused within a configuration

    # --- report ---------------------------------------------------------------------------------
    report = tmp_path / "report"
    done = run_cli("report", name, "--storage", url, "--out", str(report), "--group-by", "optimizer",
                   "--where", "test_acc < 0.5", "--where", "val_acc > 0.95", check=True)
    assert "wrote" in done.stdout and "12 trials" in done.stdout
    for f in ("report.md", "report.html", "figures/plotly.min.js"):
        assert (report / f).is_file(), f
    pngs = list((report / "figures").glob("*.png"))
    assert len(pngs) >= 6 and all(_png_ok(p) for p in pngs)
    md = (report / "report.md").read_text()
    assert "4 | " in md and "[" in md and " ± " in md  # configurations with 4 seeds have intervals

    browser.get((report / "report.html").as_uri())
    time.sleep(1.0)
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
    plots = browser.execute_script("return [...document.querySelectorAll('.js-plotly-plot')].map(d => d.id)")
    figures = ("class_histogram", "parallel_all", "history", "slice", "contour", "importance", "learning_curves",
               "confusion")
    assert {f"fig-{f}" for f in figures} <= set(plots)
    ids = browser.execute_script("return [...document.querySelectorAll('[id]')].map(e => e.id)")
    assert len(ids) == len(set(ids))  # a figure drawn into a section anchor would land in the wrong place
    headings = browser.execute_script("return [...document.querySelectorAll('h2')].map(h => h.textContent)")
    assert headings == ["Dataset and baselines", "Best configurations", "Parallel coordinates",
                        "Optimization history, slices and contours", "Hyperparameter importance", "Learning curves",
                        "Confusion matrix of the best configuration", "Cost of the search"]
    browser.save_screenshot(str(report / "screenshot.png"))

    # --- export -----------------------------------------------------------------------------------
    for fmt in ("csv", "json", "parquet"):
        path = tmp_path / f"trials.{fmt}"
        done = run_cli("export", name, "--storage", url, "--format", fmt, "--out", str(path), check=True)
        assert f"wrote 12 trials to {path}" in done.stderr and done.stdout == ""
    records = json.loads((tmp_path / "trials.json").read_text())
    assert sum(r["is_repeat"] for r in records) == 4 and {r["state"] for r in records} == {"complete"}
    assert run_cli("export", name, "--storage", url, "--format", "csv", "--out", "-", check=True).stdout.count("\n") == 13


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A created study that no worker has run (shared by the error cases: they never write to it)."""
    tmp = tmp_path_factory.mktemp("planned")
    name, url = unique("err"), f"journal:{tmp / 'journal.log'}"
    run_cli("create-study", str(write_spec(tmp, tiny_spec(name))), "--storage", url, check=True)
    return name, url


@pytest.mark.parametrize(("args", "code", "message"), [
    (["report", "nope", "--out", "{tmp}/r"], 3, "study 'nope' does not exist"),
    (["report", "{name}", "--out", "{tmp}/r", "--where", "lr >> 1"], 2, "--where 'lr >> 1': expected a value"),
    (["report", "{name}", "--out", "{tmp}/r", "--group-by", "optimzer"], 2, "did you mean 'optimizer'"),
    (["report", "{name}", "--out", "{tmp}/r", "--level", "95"], 2, "--level must be a confidence level"),
    (["repeat", "{name}", "--top", "1", "--seeds", "1"], 2, "has no complete trial yet"),
    (["export", "{name}", "--format", "parquet", "--out", "-"], 2, "binary"),
])
def test_cli_errors_are_one_line_without_traceback(planned: tuple[str, str], tmp_path: Path, args: list[str],
                                                   code: int, message: str) -> None:
    name, url = planned
    argv = [a.format(tmp=tmp_path, name=name) for a in args]
    proc = run_cli(*argv, "--storage", url, env=cli_env())
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing written on bad input


# ---------------------------------------------------------------- pruned and failed seeds


SEEDED = {  # configuration -> its seed runs: (state, value, fail_reason); a "retry" continues the run before it
    "lucky": [("complete", 0.97, None), ("pruned", 0.30, None)],
    "crashy": [("complete", 0.95, None), ("fail", None, "RuntimeError: CUDA error")],
    "steady": [("complete", 0.90, None), ("complete", 0.92, None)],
    "handed": [("fail", None, "preempted: stopped during epoch 2"), ("retry", 0.88, None), ("complete", 0.89, None)],
    "ok": [("complete", 0.85, None), ("complete", 0.86, None)],
    "queued": [("complete", 0.80, None), ("waiting", None, None)],
    "gone": [("pruned", 0.2, None), ("pruned", 0.25, None)],
}


def seeded_study(url: str) -> tuple[optuna.Study, dict[str, str]]:
    study = optuna.create_study(storage=open_storage(url, create=True), study_name=unique("seeds"),
                                direction="maximize")
    cids = {}
    for i, (key, runs) in enumerate(SEEDED.items()):
        params = {"model": "dense", "lr": 0.001 * (i + 1), "optimizer": "adam"}
        cids[key] = space_mod.config_id(params)
        seed, previous = 0, None
        for state, value, reason in runs:
            attrs: dict[str, Any] = {"config_id": cids[key], "name": key, "val_acc": value, "fail_reason": reason}
            if state == "retry":
                attrs |= {"seed": seed - 1, "retry_of": previous}
            else:
                attrs["seed"], seed = seed, seed + 1
            kind = {"retry": TrialState.COMPLETE, "fail": TrialState.FAIL}.get(state) or TrialState[state.upper()]
            if kind == TrialState.WAITING:
                study.add_trial(optuna.trial.create_trial(state=kind, system_attrs={"fixed_params": params},
                                                          user_attrs=attrs))
            else:
                study.add_trial(optuna.trial.create_trial(
                    state=kind, value=value if kind == TrialState.COMPLETE else None, params=params,
                    distributions={k: DISTS[k] for k in params}, user_attrs={k: v for k, v in attrs.items() if v is not None},
                    intermediate_values={1: value} if kind == TrialState.PRUNED else {}))
            previous = len(study.get_trials(deepcopy=False)) - 1
    return study, cids


@pytest.mark.parametrize("backend", ["journal", "postgres"])
def test_configurations_with_a_pruned_or_failed_seed_rank_after_every_clean_one(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from hpsearch.report.best import best_data
    from hpsearch.report.stats import set_aside

    url = request.getfixturevalue("pg_session_db") if backend == "postgres" else f"journal:{tmp_path / 'j.log'}"
    study, cid = seeded_study(url)
    rows = summarize(study.get_trials(deepcopy=False), maximize=True)
    order = {v: k for k, v in cid.items()}
    # Clean first by mean (a hand-back and its retry are one seed; a pending seed does not demote);
    # then "lucky" and "crashy" on their surviving seed alone; "gone" has no complete seed at all.
    assert [order[r.config_id] for r in rows] == ["steady", "handed", "ok", "queued", "lucky", "crashy"]
    assert [order[r.config_id] for r in sorted(rows, key=lambda r: r.survivor_rank)][:3] == ["lucky", "crashy", "steady"]
    by = {order[r.config_id]: r for r in rows}
    assert by["lucky"].runs.text() == "2 seeds, 1 pruned" and not by["lucky"].clean
    assert by["lucky"].value.mean == 0.97 and by["lucky"].value.n == 1  # the pruned value is not averaged in
    assert by["crashy"].runs.text() == "2 seeds, 1 failed"
    assert by["handed"].runs.text() == "2 seeds" and by["handed"].clean
    assert by["queued"].runs.text() == "2 seeds, 1 pending" and by["queued"].clean
    assert [order[r.config_id] for _, rs in set_aside(rows, None, 3) for r in rs] == ["lucky", "crashy"]

    data = best_data(study, None, top=3)  # `best --json`: on PostgreSQL through the bulk reader
    assert [c["name"] for c in data["configurations"]] == ["steady", "handed", "ok"]
    assert [(c["name"], c["seeds"]["pruned"], c["seeds"]["failed"], c["clean"]) for c in data["set_aside"]] == [
        ("lucky", 1, 0, False), ("crashy", 0, 1, False)]
    assert (data["n_configurations"], data["n_flagged"]) == (6, 2)

    frame = trials_frame(study.get_trials(deepcopy=False)).set_index("name")
    assert frame.loc["lucky", "config_pruned"].tolist() == [1, 1] and not frame.loc["lucky", "config_clean"].any()
    assert frame.loc["handed", "config_seeds"].tolist() == [2, 2, 2] and frame.loc["handed", "config_clean"].all()


def test_report_shows_seed_counts_and_sets_flagged_configurations_apart(tmp_path: Path) -> None:
    study, _ = seeded_study(f"journal:{tmp_path / 'j.log'}")
    md = write_report(study, tmp_path / "r", ReportOptions(top=3))[0].read_text()
    best = _section(md, "Best configurations")
    table, aside = best.split("Set aside: a seed was pruned or failed")
    assert "| **1 ★** | **steady** | **2 seeds** |" in table and "lucky" not in table and "crashy" not in table
    assert "2 of 6 configurations have a pruned or failed seed and rank after the 4 clean one(s)" in table
    assert "| 1 (ranked 5) | lucky | 2 seeds, 1 pruned | 0.9700 | n=1: no interval |" in aside
    assert "| 2 (ranked 6) | crashy | 2 seeds, 1 failed | 0.9500 |" in aside


# ---------------------------------------------------------------- readings and their p-values


def test_readings_state_a_direction_only_where_the_test_is_significant(tmp_path: Path) -> None:
    from hpsearch.report.importance import correlations

    # x and opt drive the value; z and colour are noise. The p-values come from scipy, here.
    rng = np.random.default_rng(1)
    study = optuna.create_study(direction="maximize")
    dists = {"x": FloatDistribution(0, 1), "z": FloatDistribution(0, 1),
             "opt": CategoricalDistribution(["a", "b"]), "colour": CategoricalDistribution(["red", "blue"])}
    for i in range(40):
        params = {"x": rng.uniform(0, 1), "z": rng.uniform(0, 1), "opt": "ab"[i % 2], "colour": ("red", "blue")[i // 2 % 2]}
        value = params["x"] + 0.5 * (params["opt"] == "a") + rng.normal(0, 0.05)
        study.add_trial(optuna.trial.create_trial(value=value, params=params, distributions=dists))
    trials = study.get_trials()
    values = [t.value for t in trials]

    def kruskal(name: str) -> float:
        levels = {t.params[name] for t in trials}
        return stats.kruskal(*[[t.value for t in trials if t.params[name] == k] for k in levels]).pvalue

    p = {"x": stats.spearmanr([t.params["x"] for t in trials], values).pvalue,
         "z": stats.spearmanr([t.params["z"] for t in trials], values).pvalue,
         "opt": kruskal("opt"), "colour": kruskal("colour")}
    assert p["x"] < 0.01 and p["opt"] < 0.01 and p["z"] > 0.5 and p["colour"] > 0.5  # the construction holds

    rows = {c.param: c.best for c in correlations(trials, maximize=True, level=0.9)}
    assert rows["x"] == "higher x is better" and rows["opt"] == "opt=a has the best mean"
    assert rows["z"] == f"no evidence of an effect (p = {p['z']:.3g}, n = 40)"
    assert rows["colour"] == f"no evidence of an effect (p = {p['colour']:.3g}, n = 40)"
    # The report's level sets the bar: with alpha above z's p-value, z's direction is stated.
    loose = {c.param: c.best for c in correlations(trials, maximize=True, level=1 - (p["z"] + 1) / 2)}
    assert loose["z"].endswith("z is better")

    md = write_report(study, tmp_path / "r", ReportOptions())[0].read_text()
    importance = _section(md, "Hyperparameter importance")
    assert "z is better" not in importance and "colour=" not in importance
    assert f"no evidence of an effect (p = {p['z']:.3g}, n = 40)" in importance
    assert "higher x is better" in importance and "p < 0.1" in importance


# ---------------------------------------------------------------- a real study with pruned seeds


def test_real_study_with_pruned_seeds_ranks_them_apart_and_repeats_run_unpruned(tmp_path: Path) -> None:
    from hpsearch.spec.loading import load_spec

    name, url = unique("pruned"), f"journal:{tmp_path / 'journal.log'}"
    spec = tiny_spec(name, sampler="random", budget=8, repeats=2, seed=6,
                     pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
                     train={"epochs": 3, "batch_size": 64, "model": "dense", "hidden_layers": 1},
                     space={"lr": {"low": 1e-3, "high": 0.3, "log": True}, "optimizer": {"choices": ["sgd", "adam"]},
                            "hidden_size": {"choices": [2, 3, 4]}, "dropout": {"choices": [0.0, 0.5]}})
    study, _ = plan_mod.create(load_spec(str(write_spec(tmp_path, spec)), {}, []), open_storage(url, create=True))
    # After the plan (the journal keeps queue order): one configuration at chance level after
    # epoch 1, once as an ordinary trial (the pruner judges it) and once as `hpsearch repeat` queues it.
    bad = {"lr": 0.001, "optimizer": "sgd", "hidden_size": 2, "dropout": 0.5}
    stored = study_mod.stored_spec(study)
    source = study.get_trials(deepcopy=False)[0]
    plan_mod.enqueue_repeats(study, source, stored, bad, [101])
    plan_mod.enqueue_repeats(study, source, stored, bad, [100], mark_repeat=True)
    # The worker's sampler seed fixed: with a random one, the first wave sometimes held mostly
    # chance-level configurations, their median fell below the bad one's, and it was not pruned.
    _run_worker(name, url, tmp_path / "w.log", "--seed", "1")

    trials = _trials(name, url)
    by_seed = {t.user_attrs.get("seed"): t for t in trials if t.user_attrs.get("config_id") == space_mod.config_id(bad)}
    assert by_seed[101].state == TrialState.PRUNED
    assert by_seed[100].state == TrialState.COMPLETE and sorted(by_seed[100].intermediate_values) == [1, 2, 3]

    # --- the truth, from the raw trials: configurations with a complete and a pruned seed ----------
    states: dict[str, list[TrialState]] = {}
    for t in trials:
        states.setdefault(t.user_attrs["config_id"], []).append(t.state)
    flagged = {c for c, s in states.items() if TrialState.COMPLETE in s and TrialState.PRUNED in s}
    assert space_mod.config_id(bad) in flagged
    # A complete `repeat` seed (unpruned, so not selected by the pruner) settles a flagged configuration:
    # it is ranked with the clean ones on its repeat seeds alone (issue 21).
    repeats = {t.user_attrs["config_id"] for t in trials if t.user_attrs.get("is_repeat")
               and t.state == TrialState.COMPLETE}
    assert space_mod.config_id(bad) in repeats

    best = json.loads(run_cli("best", name, "--storage", url, "--top", "100", "--json", check=True).stdout)
    ranked = best["configurations"]
    assert len(ranked) == sum(TrialState.COMPLETE in s for s in states.values())
    assert best["n_flagged"] == len(flagged - repeats)
    assert [c["clean"] for c in ranked] == sorted((c["clean"] for c in ranked), reverse=True)  # clean ones first
    for c in ranked:
        s = states[c["config_id"]]
        assert c["clean"] == (c["config_id"] not in flagged - repeats)
        assert (c["seeds"]["complete"], c["seeds"]["pruned"]) == (s.count(TrialState.COMPLETE), s.count(TrialState.PRUNED))
        settled = c["config_id"] in flagged & repeats
        assert c["settled_by_repeats"] == (1 if settled else 0)
        assert c["value"]["n"] == (1 if settled else s.count(TrialState.COMPLETE))


def test_export_without_out_writes_the_data_to_stdout_and_nothing_else(planned: tuple[str, str],
                                                                       tmp_path: Path) -> None:
    name, url = planned
    out = tmp_path / "trials.csv"
    with open(out, "w") as fh:  # `hpsearch export NAME --format csv > trials.csv`
        proc = subprocess.run([sys.executable, "-m", "hpsearch", "export", name, "--storage", url, "--format", "csv"],
                              stdout=fh, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and {r["state"] for r in rows} == {"waiting"}  # the 2 x 2 grid, nothing run yet
    assert [p.name for p in tmp_path.iterdir()] == ["trials.csv"]  # no NAME.csv written beside it
    data = run_cli("export", name, "--storage", url, "--format", "json", cwd=tmp_path, check=True)
    assert len(json.loads(data.stdout)) == 4 and data.stderr == ""
