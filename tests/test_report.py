"""`hpsearch report`, `repeat` and `export`: on a constructed study (exact numbers in the report) and
on a real small study run by a worker process, opened in headless Chromium."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from scipy import stats
from test_report_data import CONFIGS, build

from conftest import cli_env, run_cli, start_worker, tiny_spec, unique, write_spec
from hpsearch.report import ReportOptions, write_report
from hpsearch.storage import open_storage


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
    assert "| 4 | cnn | md_cnn_lr_0.05_opt_sgd_mom_0.5 | 1 | 0.8000 | n=1: no interval |" in best
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
    assert "still running (1 running, 1 waiting): every number below is a snapshot" in md

    html = html_path.read_text()
    assert html.count('class="best"') == 1 and 'src="figures/plotly.min.js"' in html
    pngs = sorted((tmp_path / "report" / "figures").glob("*.png"))
    assert {p.stem for p in pngs} == {"class_histogram", "parallel_all", "parallel_where1", "parallel_where2",
                                      "importance", "learning_curves", "confusion"}
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


def _run_worker(name: str, url: str, log: Path) -> None:
    proc = start_worker(name, url, "--device", "cpu", "--quiet", log=log)
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
    figures = ("class_histogram", "parallel_all", "importance", "learning_curves", "confusion")
    assert {f"fig-{f}" for f in figures} <= set(plots)
    ids = browser.execute_script("return [...document.querySelectorAll('[id]')].map(e => e.id)")
    assert len(ids) == len(set(ids))  # a figure drawn into a section anchor would land in the wrong place
    headings = browser.execute_script("return [...document.querySelectorAll('h2')].map(h => h.textContent)")
    assert headings == ["Dataset and baselines", "Best configurations", "Parallel coordinates",
                        "Hyperparameter importance", "Learning curves", "Confusion matrix of the best configuration",
                        "Cost of the search"]
    browser.save_screenshot(str(report / "screenshot.png"))

    # --- export -----------------------------------------------------------------------------------
    for fmt in ("csv", "json", "parquet"):
        path = tmp_path / f"trials.{fmt}"
        assert f"wrote 12 trials to {path}" in run_cli("export", name, "--storage", url, "--format", fmt,
                                                      "--out", str(path), check=True).stdout
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
