"""Which parameters matter: optuna's importance evaluators and a per-parameter correlation summary.

Importances (each normalized to sum to 1 over the parameters it could judge):
- fANOVA: variance of a random-forest surrogate explained by each parameter (needs scikit-learn);
  only parameters present in every complete trial (conditional ones are left out by optuna).
- PED-ANOVA: how differently a parameter is distributed in the top 10% of trials than overall.
- MDI: mean decrease in impurity of a random forest fitted to the trials.

The unit of every reading is the configuration: each contributes its parameters and the mean of
its complete seeds (hpsearch.report.stats.config_points), so n counts configurations, not seeds,
which are repeated measurements of one point, not independent ones.

Correlations: Spearman's rank correlation for numeric parameters (rank based, so a log-scaled
parameter needs no transform); for categorical ones the correlation ratio eta^2 (share of the
metric's variance explained by the category) with a Kruskal-Wallis p-value. A reading ("lower lr
is better") is stated only where its test is significant at the report's level (p < 1 - level,
0.1 for the default 90%); otherwise it says "no evidence of an effect (p = ..., n = ...)".
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial

MIN_TRIALS = 4  # below this every evaluator returns noise (fANOVA even returns equal shares)
MAX_TRIALS = 5000
FANOVA_MAX_TRIALS = 500


@dataclass
class Importances:
    by_method: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def params(self) -> list[str]:
        """Parameters, most important first by the mean importance over methods."""
        names = {p for imp in self.by_method.values() for p in imp}
        mean = {p: sum(imp.get(p, 0.0) for imp in self.by_method.values()) / len(self.by_method) for p in names}
        return sorted(names, key=lambda p: -mean[p])


def _evaluators() -> dict[str, Any]:
    from optuna.importance import (
        FanovaImportanceEvaluator,
        MeanDecreaseImpurityImportanceEvaluator,
        PedAnovaImportanceEvaluator,
    )

    return {
        "fANOVA": FanovaImportanceEvaluator(seed=0),
        "PED-ANOVA": PedAnovaImportanceEvaluator(),
        "MDI": MeanDecreaseImpurityImportanceEvaluator(seed=0),
    }


def complete(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """One point per configuration with a complete seed (the mean of its complete seeds)."""
    from hpsearch.report.stats import config_points

    return config_points(trials)


def snapshot_study(trials: Sequence[FrozenTrial], maximize: bool) -> optuna.Study:
    """An in-memory study of these points: evaluators see the report's snapshot, never a later state."""
    study = optuna.create_study(direction="maximize" if maximize else "minimize")
    study.add_trials(trials)
    return study


def importances(trials: Sequence[FrozenTrial], maximize: bool) -> Importances:
    from optuna.importance import get_param_importances

    result = Importances()
    done = complete(trials)
    varied = {p for p in {p for t in done for p in t.params} if len({repr(t.params.get(p)) for t in done}) > 1}
    if len(done) < MIN_TRIALS or not varied:
        result.notes.append(f"not computed: needs at least {MIN_TRIALS} configurations with a complete seed and "
                            f"a parameter that varies (have {len(done)}, {len(varied)} varying)")
        return result
    done = sorted(done, key=lambda t: t.number)
    studies: dict[int, optuna.Study] = {}
    for method, evaluator in _evaluators().items():
        # fANOVA's cost grows faster than linearly (14 s at 1,000 trials, 47 s at 2,000 here); the
        # most recent trials describe the region being searched now.
        cap = FANOVA_MAX_TRIALS if method == "fANOVA" else MAX_TRIALS
        if len(done) > cap:
            result.notes.append(f"{method}: computed on the {cap} most recent of {len(done)} configurations")
        n = min(cap, len(done))
        if n not in studies:
            studies[n] = snapshot_study(done[-n:], maximize)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                imp = get_param_importances(studies[n], evaluator=evaluator)
            except Exception as exc:  # noqa: BLE001 - one method failing must not sink the report
                result.notes.append(f"{method}: not computable ({type(exc).__name__}: {exc})")
                continue
        result.by_method[method] = {k: float(v) for k, v in imp.items()}
        for w in caught:
            if "experimental" not in str(w.message):
                result.notes.append(f"{method}: {w.message}")
    return result


# ---------------------------------------------------------------- correlations


@dataclass(frozen=True)
class Correlation:
    param: str
    kind: str  # "numeric" | "categorical"
    statistic: str  # "Spearman rho" | "eta^2"
    value: float | None
    p_value: float | None
    n: int
    best: str  # the direction or level that goes with a better metric, where the test supports one


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def correlations(trials: Sequence[FrozenTrial], maximize: bool, level: float = 0.9) -> list[Correlation]:
    """One row per parameter; `level` is the report's confidence level (alpha = 1 - level)."""
    done = complete(trials)
    names = sorted({p for t in done for p in t.params})
    out = []
    for name in names:
        pairs = [(t.params[name], float(t.value)) for t in done if name in t.params]  # type: ignore[arg-type]
        if all(_is_number(x) for x, _ in pairs):
            out.append(_spearman(name, pairs, maximize, 1 - level))
        else:
            out.append(_eta(name, pairs, maximize, 1 - level))
    return out


def reading(effect: str, p: float | None, n: int, alpha: float) -> str:
    """The effect only where the test rejects "no effect" at `alpha`; a large p is no evidence either way."""
    if p is None:
        return f"not tested (a level has fewer than 2 trials; n = {n})"
    if p < alpha:
        return effect
    return f"no evidence of an effect (p = {p:.3g}, n = {n})"


def _spearman(name: str, pairs: list[tuple[Any, float]], maximize: bool, alpha: float) -> Correlation:
    from scipy import stats

    xs, ys = [float(x) for x, _ in pairs], [y for _, y in pairs]
    if len(set(xs)) < 2 or len(set(ys)) < 2 or len(pairs) < 3:
        return Correlation(name, "numeric", "Spearman rho", None, None, len(pairs), "not enough variation")
    res = stats.spearmanr(xs, ys)
    rho, p = float(res.statistic), float(res.pvalue)
    better = "higher" if (rho > 0) == maximize else "lower"
    return Correlation(name, "numeric", "Spearman rho", rho, p, len(pairs),
                       reading(f"{better} {name} is better", p, len(pairs), alpha))


def _eta(name: str, pairs: list[tuple[Any, float]], maximize: bool, alpha: float) -> Correlation:
    from scipy import stats

    levels: dict[str, list[float]] = defaultdict(list)
    for x, y in pairs:
        levels[str(x)].append(y)
    ys = [y for _, y in pairs]
    mean = sum(ys) / len(ys)
    total = sum((y - mean) ** 2 for y in ys)
    if len(levels) < 2 or total == 0:
        return Correlation(name, "categorical", "eta^2", None, None, len(pairs), "not enough variation")
    between = sum(len(v) * (sum(v) / len(v) - mean) ** 2 for v in levels.values())
    p = None
    if all(len(v) >= 2 for v in levels.values()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(stats.kruskal(*levels.values()).pvalue)
    pick = max if maximize else min
    best = pick(levels, key=lambda k: sum(levels[k]) / len(levels[k]))
    p = p if p == p else None  # kruskal gives nan when every value ties
    return Correlation(name, "categorical", "eta^2", between / total, p, len(pairs),
                       reading(f"{name}={best} has the best mean", p, len(pairs), alpha))
