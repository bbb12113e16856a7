"""Configurations over seeds: mean and t-interval, ranking per group, and the dataset baselines.

A configuration is a set of parameter values without the seed (the worker's `config_id`); its
seeds are independent training runs, so the interval for its mean metric is Student's t:
scipy.stats.t.interval(level, n - 1, loc=mean, scale=sem). One seed has no interval and the
report says so instead of inventing one.

Pruned and failed seeds: a configuration is *clean* when none of its seed runs was pruned or
failed. Clean configurations are ranked first; a configuration with a pruned or failed seed is
ranked after every clean one, on the mean of its complete seeds, and always shown with what
happened to the others ("2 seeds, 1 pruned"). A pruned seed adds nothing to the mean: its last
reported value is a partial-training number, neither a lower nor an upper bound on the finished
run, and the seed that survived the pruner is, by that very selection, the luckier one, so its
value alone overstates the configuration. Seeds still waiting or running have no outcome yet:
they are counted as pending and do not demote (a snapshot of a running study says it is one).

More seeds settle a flagged configuration: once `hpsearch repeat` seeds of it have completed (none
pruned or failed), it is ranked with the clean ones on the mean of those repeat seeds alone, which
the pruner did not select, and says so ("3 seeds, 1 pruned; ranked on its 2 repeat seeds").
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpsearch import schema
from hpsearch.errors import HpsearchError
from hpsearch.metrics import bounds_of, format_value
from hpsearch.report.export import METRICS, SeedRuns, config_id, seed_runs, trial_name
from hpsearch.report.objectives import Goals, pareto_ranks

NO_GROUP = "all configurations"
INACTIVE = "(inactive)"


@dataclass(frozen=True)
class Interval:
    """Mean of n runs with its t-interval at `level`; low/high are None when n < 2."""

    mean: float
    n: int
    level: float
    low: float | None = None
    high: float | None = None
    clipped: bool = False  # an end was cut back to the metric's range (see bounds_of)

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def text(self, digits: int = 4, metric: str | None = None) -> str:
        """"0.9512 ± 0.0031"; a count or a time as its metric reads (`metric`): "4,810 ± 0"."""
        def f(x: float) -> str:
            return f"{x:.{digits}f}" if metric is None else format_value(metric, x, digits)

        if self.half_width is None:
            return f"{f(self.mean)} (1 seed: no CI)"
        if self.clipped:  # no longer symmetric: show both ends
            return f"{f(self.mean)} [{f(self.low)}, {f(self.high)}] (clipped)"  # type: ignore[arg-type]
        return f"{f(self.mean)} ± {f(self.half_width)}"


def check_level(level: float) -> float:
    if not 0 < level < 1:
        raise HpsearchError(f"--level must be a confidence level in (0, 1), e.g. 0.9, but got {level=}")
    return level


def mean_ci(values: Iterable[float | None], level: float = 0.9,
            bounds: tuple[float, float] | None = None) -> Interval | None:
    """Mean and t-interval of the finite values; None when there is none.

    With `bounds`, an end past the metric's range is clipped to it: a 2-seed t-interval of an
    accuracy can reach below 0, which no run can score. Clipping keeps the t-interval's coverage
    (the true mean is inside the range anyway) and marks the interval `clipped`."""
    from scipy import stats

    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None
    mean = math.fsum(xs) / len(xs)
    if len(xs) < 2:
        return Interval(mean, 1, level)
    sem = float(stats.sem(xs))
    if sem == 0.0:
        # Identical runs: the t-interval's width is t * 0 = 0 (scipy returns nan for scale=0).
        return Interval(mean, len(xs), level, mean, mean)
    low, high = (float(x) for x in stats.t.interval(level, len(xs) - 1, loc=mean, scale=sem))
    if bounds is not None and (low < bounds[0] or high > bounds[1]):
        return Interval(mean, len(xs), level, max(low, bounds[0]), min(high, bounds[1]), clipped=True)
    return Interval(mean, len(xs), level, low, high)


# ---------------------------------------------------------------- configurations


@dataclass
class ConfigSummary:
    config_id: str
    name: str
    params: dict[str, Any]
    trials: list[int]
    seeds: list[int]
    value: Interval
    metrics: dict[str, Interval | None] = field(default_factory=dict)
    representative: int = -1  # the configuration's best trial (what `repeat` links repeats to)
    group: Any = NO_GROUP
    rank: int = 0  # 1 = best overall: clean configurations first, then by the validation metric
    runs: SeedRuns = field(default_factory=SeedRuns)  # its seed runs by outcome, pending ones included
    survivor_rank: int = 0  # its rank by the mean of its complete seeds alone (pruned seeds ignored)
    settled_by: int = 0  # flagged, but ranked on this many complete `repeat` seeds alone (see summarize)
    objectives: dict[str, Interval] = field(default_factory=dict)  # each objective's, with several
    violations: list[str] = field(default_factory=list)  # bounds a seed broke: "n_params 4,810 > 2,000"

    @property
    def feasible(self) -> bool:
        """No complete seed broke a constraint (the spec's `constraints:`)."""
        return not self.violations

    @property
    def clean(self) -> bool:
        return self.runs.clean or self.settled_by > 0

    def seeds_text(self) -> str:
        return self.runs.text() + (f"; ranked on its {self.settled_by} repeat seed{'s' if self.settled_by != 1 else ''}"
                                   if self.settled_by else "")


def rank(trials: Sequence[Any], goals: Goals, level: float = 0.9) -> list[ConfigSummary]:
    """Configurations ranked as `best` ranks them: direction and bounds are the first objective's."""
    return summarize(trials, goals.maximize[0], level, bounds_of(goals.metrics[0]), goals)


def summarize(trials: Sequence[Any], maximize: bool, level: float = 0.9,
              bounds: tuple[float, float] | None = None, goals: Goals | None = None) -> list[ConfigSummary]:
    """Configurations with a complete seed, ranked: feasible before infeasible, clean before flagged,
    each part by mean validation metric (several objectives: by Pareto front, see _rank_fronts).

    `trials` should hold every trial of the study (any state): pruned, failed and pending seeds
    are counted from them (see the module docstring for what they contribute). `goals` names the
    objectives and constraints (hpsearch.report.objectives); without it, one objective, no bounds.
    """
    goals = goals or Goals(("value",), (maximize,))
    groups: dict[str, list[Any]] = defaultdict(list)
    for t in trials:
        if t.state == TrialState.COMPLETE and goals.values(t) is not None:
            groups[config_id(t)].append(t)
    runs = seed_runs(trials)
    repeat_runs = seed_runs([t for t in trials if t.user_attrs.get(schema.IS_REPEAT)])
    rows = []
    for cid, ts in groups.items():
        ts = sorted(ts, key=lambda t: t.number)
        settled = _settling_repeats(ts, runs.get(cid), repeat_runs.get(cid))
        if settled:
            ts = settled
        told = [goals.values(t) or [] for t in ts]
        value = mean_ci([v[0] for v in told], level, bounds)
        assert value is not None  # every trial in a group has finite values
        best = (max if maximize else min)(range(len(ts)), key=lambda i: told[i][0])
        rows.append(ConfigSummary(
            config_id=cid, name=trial_name(ts[0]), params=dict(ts[0].params), trials=[t.number for t in ts],
            seeds=[int(t.user_attrs.get(schema.SEED, 0)) for t in ts], value=value,
            metrics={m: mean_ci([_number(t.user_attrs.get(m)) for t in ts], level, bounds_of(m)) for m in METRICS},
            representative=ts[best].number, runs=runs.get(cid) or SeedRuns(complete=len(ts)), settled_by=len(settled),
            objectives={m: mean_ci([v[i] for v in told], level, bounds_of(m))  # type: ignore[misc]
                        for i, m in enumerate(goals.metrics)} if goals.multi else {},
            violations=_violations([goals.broken(t) for t in ts]),
        ))
    if goals.multi:
        _rank_fronts(rows, goals)
        return rows
    sign = -1.0 if maximize else 1.0
    # More seeds break ties: the better-measured configuration comes first.
    rows.sort(key=lambda r: (not r.feasible, sign * r.value.mean, -r.value.n, r.name))
    for i, r in enumerate(rows, 1):
        r.survivor_rank = i
    rows.sort(key=lambda r: (not r.feasible, not r.clean))  # stable: each part keeps its order by the metric
    for i, r in enumerate(rows, 1):
        r.rank = i
    return rows


def _violations(broken: list[list[tuple[str, str, float, float]]]) -> list[str]:
    """Each bound some seed broke, with the worst seed's value: "n_params 4,810 > 2,000 (1 of 2 seeds)"."""
    worst: dict[tuple[str, str, float], list[float]] = {}
    for seed in broken:
        for metric, side, value, bound in seed:
            worst.setdefault((metric, side, bound), []).append(value)
    out = []
    for (metric, side, bound), values in worst.items():
        v = max(values) if side == "max" else min(values)
        text = f"{metric} {format_value(metric, v)} {'>' if side == 'max' else '<'} {format_value(metric, bound)}"
        out.append(text + (f" ({len(values)} of {len(broken)} seeds)" if len(values) < len(broken) else ""))
    return out


def _rank_fronts(rows: list[ConfigSummary], goals: Goals) -> None:
    """Several objectives: a configuration's rank is its Pareto front over the means of its seeds.

    Tiers come first, as with one objective: feasible clean configurations, then feasible flagged
    ones, then infeasible ones; each tier is sorted into fronts numbered after the previous tier's,
    so rank 1 is the Pareto-optimal set of the feasible clean configurations. survivor_rank is the
    front with the clean tiers merged (what a flagged one's surviving seeds alone would give it)."""
    def fronts(tier: Any) -> list[int]:
        ranks, offset = [0] * len(rows), 0
        for level in sorted({tier(r) for r in rows}):
            index = [i for i, r in enumerate(rows) if tier(r) == level]
            points = [[rows[i].objectives[m].mean for m in goals.metrics] for i in index]
            ranked = pareto_ranks(points, goals.maximize)
            for i, k in zip(index, ranked, strict=True):
                ranks[i] = offset + k
            offset += max(ranked)
        return ranks

    survivor, final = fronts(lambda r: not r.feasible), fronts(lambda r: (not r.feasible, not r.clean))
    for r, s, f in zip(rows, survivor, final, strict=True):
        r.survivor_rank, r.rank = s, f
    sign = -1.0 if goals.maximize[0] else 1.0
    rows.sort(key=lambda r: (r.rank, sign * r.value.mean, -r.value.n, r.name))


def _settling_repeats(complete: list[Any], runs: SeedRuns | None, repeats: SeedRuns | None) -> list[Any]:
    """The complete `hpsearch repeat` seeds a flagged configuration is ranked on instead, or [].

    A configuration with a pruned or failed seed is ranked on its repeat seeds alone once one has
    completed and none was pruned or failed: repeats run unpruned, so unlike the seed that survived
    the pruner they were not selected by it, and their mean is a fair measure of the configuration.
    The surviving ordinary seeds stay out of that mean (their selection is what flagged it)."""
    if runs is None or runs.clean or repeats is None or repeats.pruned or repeats.failed:
        return []
    return [t for t in complete if t.user_attrs.get(schema.IS_REPEAT)]


def config_points(trials: Sequence[Any]) -> list[FrozenTrial]:
    """One point per configuration for the readings (correlations, importances): its parameters and
    the mean of its complete seeds. Seeds of one configuration are not independent samples of the
    parameters' effect, so counting each would multiply n by the seeds and overstate significance.
    A point's number is its newest seed's (the most recent configurations come last)."""
    import optuna

    groups: dict[str, list[Any]] = defaultdict(list)
    for t in trials:
        if t.state == TrialState.COMPLETE and t.values and math.isfinite(t.values[0]):
            groups[config_id(t)].append(t)
    points = []
    for ts in groups.values():
        ts = sorted(ts, key=lambda t: t.number)
        point = optuna.trial.create_trial(value=math.fsum(t.values[0] for t in ts) / len(ts), params=dict(ts[0].params),
                                          distributions=dict(ts[0].distributions),
                                          user_attrs={schema.CONFIG_ID: config_id(ts[0]), "seeds": len(ts)})
        point.number = ts[-1].number
        points.append(point)
    return sorted(points, key=lambda p: p.number)


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def params_text(params: dict[str, Any]) -> str:
    """Parameters as `best` prints them, "optimizer=sgd, lr=0.1" (and `repeat --config` reads them)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def check_group_by(group_by: str | None, trials: Sequence[FrozenTrial], space: Iterable[str] = ()) -> None:
    if group_by is None:
        return
    known = set(space) | {p for t in trials for p in t.params}
    if group_by not in known:
        from hpsearch.registry import unknown_name_message

        raise HpsearchError("--group-by: " + unknown_name_message("parameter", group_by, known or ["(none)"])
                            .replace("is not registered", "is not a parameter of this study"))


def best_per_group(rows: Sequence[ConfigSummary], group_by: str | None,
                   top: int) -> list[tuple[Any, list[ConfigSummary]]]:
    """The `top` best configurations of each value of `group_by` (rows come ranked), best group first."""
    if top < 1:
        raise HpsearchError(f"--top must be >= 1, but got {top=}")
    groups: dict[Any, list[ConfigSummary]] = {}
    for r in rows:
        r.group = NO_GROUP if group_by is None else r.params.get(group_by, INACTIVE)
        bucket = groups.setdefault(_key(r.group), [])
        if len(bucket) < top:
            bucket.append(r)
    return [(bucket[0].group, bucket) for bucket in groups.values()]


def set_aside(rows: Sequence[ConfigSummary], group_by: str | None,
              top: int) -> list[tuple[Any, list[ConfigSummary]]]:
    """Configurations with a pruned or failed seed that their surviving seeds alone would have put
    in the `top` of their group, but that the clean-first ranking leaves out of it: shown apart."""
    shown = {r.config_id for _, rs in best_per_group(rows, group_by, top) for r in rs}
    groups: dict[str, tuple[Any, list[ConfigSummary]]] = {}
    for r in sorted(rows, key=lambda r: r.survivor_rank):
        group = NO_GROUP if group_by is None else r.params.get(group_by, INACTIVE)
        _, bucket = groups.setdefault(_key(group), (group, []))
        if len(bucket) < top:
            bucket.append(r)
    return [(group, hidden) for group, bucket in groups.values()
            if (hidden := [r for r in bucket if not r.clean and r.config_id not in shown])]


def _key(value: Any) -> str:
    # Parameter values may be lists (unhashable); their text is a faithful key.
    return repr(value)


# ---------------------------------------------------------------- baselines


@dataclass(frozen=True)
class Baseline:
    name: str
    definition: str
    val_acc: float | None
    test_acc: float | None


def _shares(counts: Sequence[int]) -> list[float]:
    total = sum(counts)
    return [c / total for c in counts] if total else [0.0] * len(counts)


def uniform_accuracy(n_classes: int) -> float:
    """Guessing every class with probability 1/K is right 1/K of the time, whatever the labels."""
    return 1.0 / n_classes


def prior_accuracy(train: Sequence[int], evaluated: Sequence[int]) -> float:
    """Guessing class k with its training share p_train(k): sum_k p_train(k) * p_eval(k)."""
    return math.fsum(a * b for a, b in zip(_shares(train), _shares(evaluated), strict=True))


def majority_accuracy(train: Sequence[int], evaluated: Sequence[int]) -> float:
    """Always answering the most frequent training class (first on ties), scored on another split."""
    k = max(range(len(train)), key=lambda i: (train[i], -i))
    return _shares(evaluated)[k]


def baselines(class_counts: dict[str, Any]) -> list[Baseline]:
    train = list(class_counts["train"])
    val, test = class_counts.get("val"), class_counts.get("test")
    names = class_counts.get("classes") or [str(i) for i in range(len(train))]
    k = max(range(len(train)), key=lambda i: (train[i], -i))

    def on(split: Sequence[int] | None, fn: Any) -> float | None:
        return fn(train, split) if split and sum(split) else None

    return [
        Baseline("random (uniform)", f"guess each of the {len(train)} classes with probability 1/{len(train)}",
                 uniform_accuracy(len(train)) if val else None, uniform_accuracy(len(train)) if test else None),
        Baseline("random (training prior)", "guess class k with its training share: sum_k p_train(k) p_split(k)",
                 on(val, prior_accuracy), on(test, prior_accuracy)),
        Baseline(f"majority class ({names[k]!r})", f"always answer the most frequent training class, {names[k]!r}",
                 on(val, majority_accuracy), on(test, majority_accuracy)),
    ]
