"""One snapshot of a study that every report section reads, so their numbers agree."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch import schema
from hpsearch.errors import HpsearchError
from hpsearch.queue import study as study_mod
from hpsearch.report.curves import DEFAULT_MIN_GAIN, DEFAULT_WINDOW
from hpsearch.report.export import PARAM_PREFIX, trials_frame
from hpsearch.report.objectives import Goals, first_objective
from hpsearch.report.render import Figure
from hpsearch.report.stats import ConfigSummary, check_group_by, check_level, rank
from hpsearch.spec.model import StudySpec
from hpsearch.storage import bulk
from hpsearch.storage.backend import open_storage

if TYPE_CHECKING:
    import pandas as pd


def open_study(name: str, storage: str | None) -> tuple[optuna.Study, StudySpec | None]:
    """The study and its stored spec, for reading (status, best, report, launch)."""
    study = study_mod.load(name, open_storage(storage))
    if schema.SPEC_ATTR not in study.user_attrs:
        return study, None  # a plain Optuna study still gets a status
    # Structural and torch-free (no plugin is imported): a stored spec that does not read is one line.
    return study, study_mod.stored_spec(study)


@dataclass
class ReportOptions:
    where: list[str] = field(default_factory=list)
    group_by: str | None = None
    top: int = 5  # configurations per group in the table
    level: float = 0.9  # confidence level of the t-intervals
    window: int = DEFAULT_WINDOW  # under-trained: epochs looked back over
    min_gain: float = DEFAULT_MIN_GAIN  # under-trained: improvement over the window that counts as clear
    max_curves: int = 300  # learning curves drawn besides the flagged ones (figures stay readable)


@dataclass
class Snapshot:
    """Everything the sections read, taken once."""

    name: str
    spec: StudySpec | None
    trials: list[FrozenTrial]
    attrs: dict[str, Any]
    maximize: bool
    metric: str
    opts: ReportOptions
    out: Path
    taken: float = field(default_factory=time.time)
    goals: Goals | None = None  # the spec's objectives and constraints (None: from the spec, or one `value`)
    frame: pd.DataFrame = field(init=False)  # the trial table (filters, states)
    complete: list[FrozenTrial] = field(init=False)
    configs: list[ConfigSummary] = field(init=False)  # ranked, best first
    figures: Path = field(init=False)

    def __post_init__(self) -> None:
        self.goals = self.goals or Goals.of(self.spec, self.maximize)
        self.frame = trials_frame(self.trials, self.goals.metrics)
        self.configs = rank(self.trials, self.goals, self.opts.level)
        if self.goals.multi:
            # Every view but the Pareto front reads one value per trial: the first objective's.
            self.trials = [first_objective(t) for t in self.trials]
        self.complete = [t for t in self.trials if t.state == TrialState.COMPLETE and t.value is not None]
        self.figures = self.out / "figures"

    @property
    def curve_metric(self) -> tuple[str, bool]:
        """The per-epoch metric the learning curves show, and whether higher is better: the first
        objective, unless the built-in trainer measures it once per trial (n_params, latency_ms, ...):
        then the metric its best epoch was chosen by."""
        from hpsearch.metrics import BUILTIN, epoch_metric

        spec = self.spec
        if spec is None or spec.objective is not None or BUILTIN[self.metric].per_epoch:
            return self.metric, self.maximize
        metric = epoch_metric(spec.metrics)
        given = dict(zip(spec.metrics, spec.directions, strict=True))
        return metric, given.get(metric, BUILTIN[metric].direction) == "maximize"

    @property
    def params(self) -> list[str]:
        """Searched parameters in the spec's order (then any others the trials have)."""
        names = list(self.spec.space) if self.spec is not None else []
        for t in self.trials:
            names += [p for p in t.params if p not in names]
        return names

    def figure(self, stem: str, caption: str, png: Callable[[Path], Any], interactive: Callable[[], Any] | None) -> Figure:
        """Write one figure as PNG and, when given, as interactive HTML; return its block."""
        self.figures.mkdir(parents=True, exist_ok=True)
        png(self.figures / f"{stem}.png")
        block = Figure(png=f"figures/{stem}.png", caption=caption)
        if interactive is not None:
            from hpsearch.report.interactive import write

            path, div = write(interactive(), self.figures / f"{stem}.html")
            block.html, block.div = f"figures/{path.name}", div
        return block


def take_snapshot(study: optuna.Study, out: Path, opts: ReportOptions) -> Snapshot:
    check_level(opts.level)
    if opts.top < 1:
        raise HpsearchError(f"--top must be >= 1, but got top={opts.top}")
    if opts.window < 1:
        raise HpsearchError(f"--window must be >= 1 epoch, but got window={opts.window}")
    try:
        spec: StudySpec | None = study_mod.stored_spec(study)
    except HpsearchError:
        spec = None  # a plain optuna study still gets a report (without the spec's extras)
    trials = bulk.full_trials(study)
    # The first objective's direction (Study.direction refuses a multi-objective study).
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    snap = Snapshot(study.study_name, spec, trials, dict(study.user_attrs), maximize,
                    spec.metric if spec is not None else "value", opts, out)
    check_group_by(opts.group_by, trials, snap.params)
    _check_filters(snap)
    return snap


def _check_filters(snap: Snapshot) -> None:
    """Bad --where expressions fail before any figure is drawn."""
    from hpsearch.report.where import parse, validate

    for p in snap.params:  # a parameter no trial has yet is known, and simply matches nothing
        if PARAM_PREFIX + p not in snap.frame.columns:
            snap.frame[PARAM_PREFIX + p] = None
    for expr in snap.opts.where:
        validate(parse(expr), list(snap.frame.columns))
