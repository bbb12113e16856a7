"""The optimization-history, slice and contour views of `hpsearch report`."""

from __future__ import annotations

import datetime
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from test_report_data import build

from hpsearch.report import views
from hpsearch.report.build import ReportOptions, write_report

T0 = datetime.datetime(2026, 1, 1)
LR = FloatDistribution(1e-4, 1e-1, log=True)
OPT = CategoricalDistribution(("sgd", "adam"))


def _trial(number: int, value: float, lr: float, opt: str, finished_at: int,
           state: TrialState = TrialState.COMPLETE) -> FrozenTrial:
    t = create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                     params={"lr": lr, "opt": opt}, distributions={"lr": LR, "opt": OPT},
                     user_attrs={"config_id": f"{lr}-{opt}"})
    t.number = number
    t.datetime_complete = T0 + datetime.timedelta(seconds=finished_at)
    if state == TrialState.PRUNED:
        t.values = [0.99]  # what Optuna stores for a pruned trial: its last intermediate value
    return t


def test_history_runs_in_finishing_order_and_its_line_is_the_best_configuration_mean() -> None:
    trials = [
        _trial(0, 0.90, 0.01, "sgd", finished_at=30),  # a lucky seed of a configuration whose mean is 0.7
        _trial(1, 0.80, 0.1, "adam", finished_at=20),
        _trial(2, 0.50, 0.01, "sgd", finished_at=40),
        _trial(3, 0.99, 0.001, "sgd", finished_at=10, state=TrialState.PRUNED),  # not a result
    ]
    h = views.history(trials, maximize=True)
    assert h.numbers == [1, 0, 2]  # trial 1 finished first
    assert h.best == [0.80, 0.90, 0.80]  # after seed 2, the 0.9 configuration's mean is 0.7: 0.8 leads again
    assert h.seeds
    assert views.history(trials, maximize=False).best == [0.80, 0.80, 0.70]


def test_contour_cells_are_the_mean_of_the_trials_in_them_and_empty_where_none_ran() -> None:
    trials = [_trial(0, 0.9, 0.01, "sgd", 1), _trial(1, 0.5, 0.01, "sgd", 2), _trial(2, 0.8, 0.1, "adam", 3)]
    (cells,) = views.contours(trials, ["lr", "opt"])
    assert (cells.x, cells.y, cells.x_labels, cells.y_labels) == ("lr (log)", "opt", ["0.01", "0.1"], ["sgd", "adam"])
    assert cells.mean == [[0.7, None], [None, 0.8]] and cells.count == [[2, 0], [0, 1]]


def test_a_continuous_parameter_is_binned_with_a_cell_for_inactive() -> None:
    dist = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}
    trials = []
    for i in range(30):
        params = {"x": i / 29} | ({"y": (i * 7 % 30) / 29} if i % 3 else {})  # y inactive on every third
        t = create_trial(value=float(i), params=params, distributions={k: dist[k] for k in params})
        t.number = i
        trials.append(t)
    (cells,) = views.contours(trials, ["x", "y"])
    assert len(cells.x_labels) == views.BINS and cells.y_labels[0] == "inactive"
    assert len(cells.y_labels) == views.BINS + 1
    assert sum(map(sum, cells.count)) == 30 and sum(cells.count[0]) == 10


def test_the_report_shows_history_slice_and_contour(tmp_path: Path) -> None:
    b = build(f"journal:{tmp_path / 'journal.log'}")
    md_path, html_path, _ = write_report(b.study, tmp_path / "report", ReportOptions())
    md = md_path.read_text()
    start = md.index("## Optimization history, slices and contours")
    section = md[start:md.index("\n## ", start + 1)]
    for stem in ("history", "slice", "contour"):
        assert f"(figures/{stem}.png)" in section, section
        assert (tmp_path / "report" / "figures" / f"{stem}.png").stat().st_size > 10_000
        assert f'id="fig-{stem}"' in html_path.read_text()
    assert "best configuration's mean over its complete seeds" in section  # the study has seeds


def test_a_report_without_complete_trials_says_so_in_the_views(tmp_path: Path) -> None:
    from hpsearch.storage.backend import open_storage

    study = optuna.create_study(storage=open_storage(f"journal:{tmp_path / 'j.log'}", create=True))
    md, _, _ = write_report(study, tmp_path / "out", ReportOptions())
    text = md.read_text()
    start = text.index("## Optimization history, slices and contours")
    assert "No complete trial yet." in text[start:text.index("\n## ", start + 1)]
