"""Sampler and pruner from the spec: a plain name -> factory dict, options checked by signature."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna

from hpsearch.errors import HpsearchError
from hpsearch.registry import unknown_name_message
from hpsearch.search.filters import FilteredSampler

if TYPE_CHECKING:
    pass


def _tpe(seed: int | None, **kw: Any) -> optuna.samplers.BaseSampler:
    # constant_liar: running trials count as bad guesses, so parallel workers spread out.
    kw.setdefault("constant_liar", True)
    kw.setdefault("multivariate", True)
    kw.setdefault("group", True)  # conditional spaces: model each sub-space on its own
    kw.setdefault("n_startup_trials", 10)
    # TPE's cost per trial grows with the finished trials it models: with the newest 5,000 it was
    # 2.3x its cost at 1k trials at 50k, with 2,000 it stays within 2x, and a window as small as
    # 200 found as good optima on the benchmark function (bench/scale.py). `window: 0` keeps all.
    window = kw.pop("window", 2000)
    return FilteredSampler(optuna.samplers.TPESampler(seed=seed, **kw), int(window) if window else None)


def _random(seed: int | None, **kw: Any) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed, **kw)  # learns nothing: no filtering needed


def _qmc(seed: int | None, **kw: Any) -> optuna.samplers.BaseSampler:
    return FilteredSampler(optuna.samplers.QMCSampler(seed=seed, **kw))


# The learning samplers below are wrapped in FilteredSampler without a window. The filter hides
# `hpsearch repeat` seeds (fixed parameters the sampler did not choose; GP would fit each as a new
# observation). A window would break CMA-ES and NSGA-II/III: they keep their state across trials
# (CMA-ES's pickled optimizer, NSGA's generations and cached parent ids), which a window cuts off.


def _gp(seed: int | None, **kw: Any) -> optuna.samplers.BaseSampler:
    # Optuna's GP already treats running trials as pending points, so parallel workers spread out.
    return FilteredSampler(optuna.samplers.GPSampler(seed=seed, **kw))


def _cmaes(seed: int | None, **kw: Any) -> optuna.samplers.BaseSampler:
    return FilteredSampler(optuna.samplers.CmaEsSampler(seed=seed, **kw))


CROSSOVERS: dict[str, Callable[[], Any]] = {
    "uniform": optuna.samplers.nsgaii.UniformCrossover,
    "blxalpha": optuna.samplers.nsgaii.BLXAlphaCrossover,
    "sbx": optuna.samplers.nsgaii.SBXCrossover,
    "spx": optuna.samplers.nsgaii.SPXCrossover,
    "undx": optuna.samplers.nsgaii.UNDXCrossover,
    "vsbx": optuna.samplers.nsgaii.VSBXCrossover,
}


def _ga_options(kw: dict[str, Any]) -> dict[str, Any]:
    """The spec names a crossover; Optuna takes an instance."""
    if "crossover" in kw:
        kw["crossover"] = CROSSOVERS[kw["crossover"]]()
    return kw


def _nsga2(seed: int | None, **kw: Any) -> optuna.samplers.BaseSampler:
    return FilteredSampler(optuna.samplers.NSGAIISampler(seed=seed, **_ga_options(kw)))


def _nsga3(seed: int | None, **kw: Any) -> optuna.samplers.BaseSampler:
    return FilteredSampler(optuna.samplers.NSGAIIISampler(seed=seed, **_ga_options(kw)))


# Grid points are all enqueued at create-study with fixed parameters; a worker only ever pops
# them, so its sampler is never asked for a value. RandomSampler is a harmless placeholder.
SAMPLERS: dict[str, tuple[Callable[..., optuna.samplers.BaseSampler], Any]] = {
    "grid": (_random, optuna.samplers.RandomSampler),
    "random": (_random, optuna.samplers.RandomSampler),
    "tpe": (_tpe, optuna.samplers.TPESampler),
    "qmc": (_qmc, optuna.samplers.QMCSampler),
    "gp": (_gp, optuna.samplers.GPSampler),
    "cmaes": (_cmaes, optuna.samplers.CmaEsSampler),
    "nsga2": (_nsga2, optuna.samplers.NSGAIISampler),
    "nsga3": (_nsga3, optuna.samplers.NSGAIIISampler),
}
EXTRA_OPTIONS = {"tpe": {"window"}}
# Several objectives: Optuna 5's CmaEsSampler refuses them (BaseSampler._raise_error_if_multi_objective);
# every other sampler here takes them (GP since 4.4, with log-EHVI).
MULTI_OBJECTIVE = frozenset(SAMPLERS) - {"cmaes"}
# Samplers that steer by each finished trial's constraint values (Trial.set_constraint, which
# Optuna 5 reads in place of the deprecated constraints_func): infeasible trials count against the
# region they came from. The others sample as if unconstrained; `best` ranks by feasibility alike.
CONSTRAINED = frozenset({"tpe", "gp", "nsga2", "nsga3"})
# Every sampler but grid fills in parameterless tickets, so its study needs a trial budget.
BUDGETED_SAMPLERS = frozenset(SAMPLERS) - {"grid"}


# ---------------------------------------------------------------- option values


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_at_least(low: int) -> Callable[[Any], str | None]:
    return lambda v: None if _is_int(v) and v >= low else f"must be an integer >= {low}, but got {v!r}"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, but got {v!r}"


def _positive(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return None if ok else f"must be a number > 0, but got {v!r}"


def _probability(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
    return None if ok else f"must be a number in [0, 1], but got {v!r}"


def _mapping(v: Any) -> str | None:
    return None if isinstance(v, dict) else f"must be a mapping of parameter: value, but got {v!r}"


def _crossover(v: Any) -> str | None:
    return None if v in CROSSOVERS else unknown_name_message("crossover", v, CROSSOVERS)


_GA_OPTIONS = {"population_size": _int_at_least(2), "mutation_prob": _probability, "crossover": _crossover,
               "crossover_prob": _probability, "swapping_prob": _probability}
# The options a spec may give the newer samplers, each with its check. Optuna's other arguments take
# Python objects (callables, trials, arrays) a YAML spec cannot hold, or are deprecated
# (CMA-ES's restart_strategy falls back to none since Optuna 4.4).
OPTIONS: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "gp": {"n_startup_trials": _int_at_least(1), "deterministic_objective": _bool},
    "cmaes": {"n_startup_trials": _int_at_least(1), "sigma0": _positive, "x0": _mapping, "popsize": _int_at_least(2),
              "use_separable_cma": _bool, "with_margin": _bool, "lr_adapt": _bool, "consider_pruned_trials": _bool},
    "nsga2": _GA_OPTIONS,
    "nsga3": {**_GA_OPTIONS, "dividing_parameter": _int_at_least(1)},
}


def _nop(**kw: Any) -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner()


def _median(**kw: Any) -> optuna.pruners.BasePruner:
    kw.setdefault("n_startup_trials", 5)
    kw.setdefault("n_warmup_steps", 1)
    return optuna.pruners.MedianPruner(**kw)


def _percentile(**kw: Any) -> optuna.pruners.BasePruner:
    kw.setdefault("percentile", 25.0)
    kw.setdefault("n_startup_trials", 5)
    kw.setdefault("n_warmup_steps", 1)
    return optuna.pruners.PercentilePruner(**kw)


def _sha(**kw: Any) -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(**kw)


def _hyperband(**kw: Any) -> optuna.pruners.BasePruner:
    kw.setdefault("min_resource", 1)
    return optuna.pruners.HyperbandPruner(**kw)


def _threshold(**kw: Any) -> optuna.pruners.BasePruner:
    return optuna.pruners.ThresholdPruner(**kw)


PRUNERS: dict[str, tuple[Callable[..., optuna.pruners.BasePruner], Any]] = {
    "none": (_nop, optuna.pruners.NopPruner),
    "median": (_median, optuna.pruners.MedianPruner),
    "percentile": (_percentile, optuna.pruners.PercentilePruner),
    "successive_halving": (_sha, optuna.pruners.SuccessiveHalvingPruner),
    "hyperband": (_hyperband, optuna.pruners.HyperbandPruner),
    "threshold": (_threshold, optuna.pruners.ThresholdPruner),
}


def _check(kind: str, table: dict[str, Any], cfg: dict[str, Any]) -> list[tuple[str, str]]:
    name = cfg.get("name")
    if name not in table:
        return [(f"{kind}", unknown_name_message(kind, name, table))]
    if kind == "sampler" and name in OPTIONS:
        accepted = set(OPTIONS[name])
    else:
        accepted = set(inspect.signature(table[name][1]).parameters) - {"self", "seed"}
        accepted |= EXTRA_OPTIONS.get(name, set())
    out = []
    for key in cfg:
        if key != "name" and key not in accepted:
            out.append((f"{kind}.{key}", f"is not an option of {kind} {name!r}; known: {', '.join(sorted(accepted)) or 'none'}"))
    return out


def check_sampler(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """Name, option names, option values, then what Optuna's constructor refuses (e.g. a
    population smaller than its crossover's parents): each as (where, message)."""
    problems = _check("sampler", SAMPLERS, cfg)
    if problems:
        return problems
    name = cfg["name"]
    for key, check in OPTIONS.get(name, {}).items():
        msg = check(cfg[key]) if key in cfg else None
        if msg:
            problems.append((f"sampler.{key}", msg))
    if problems or name not in OPTIONS:
        return problems
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-argument notices; the worker shows them
            SAMPLERS[name][0](0, **{k: v for k, v in cfg.items() if k != "name"})
    except (TypeError, ValueError) as exc:
        text = str(exc).strip().strip("'\"") or repr(exc)
        problems.append(("sampler", f"{name}: {text.splitlines()[0]}"))
    return problems


def check_pruner(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    return _check("pruner", PRUNERS, cfg)


def check_objectives(sampler: dict[str, Any], pruner: dict[str, Any], metrics: list[str],
                     per_epoch: bool) -> list[tuple[str, str]]:
    """What the sampler and pruner cannot do with the spec's objectives: several metrics with
    CMA-ES or with any pruner (Optuna's Trial.report and should_prune refuse a multi-objective
    study), or a pruner on a metric measured once per trial (`per_epoch` False)."""
    out = []
    name, pruned = sampler.get("name"), pruner.get("name", "none")
    if len(metrics) > 1:
        if name in SAMPLERS and name not in MULTI_OBJECTIVE:
            out.append(("sampler", f"{name} optimizes one metric (Optuna's CmaEsSampler refuses a multi-objective "
                        f"study), but the spec has {len(metrics)}: {', '.join(metrics)}; use "
                        f"{', '.join(sorted(MULTI_OBJECTIVE - {'grid', 'qmc'}))} (or grid)"))
        if pruned != "none":
            out.append(("pruner", f"must be none with several metrics (Optuna prunes on one: Trial.report and "
                        f"should_prune refuse a multi-objective study), but got pruner={pruned!r}"))
    elif pruned != "none" and not per_epoch:
        out.append(("pruner", f"compares the metric epoch by epoch, but {metrics[0]} is measured once per trial; "
                    "use pruner none, or val_acc or val_loss as the metric"))
    return out


def build_sampler(cfg: dict[str, Any], seed: int | None) -> optuna.samplers.BaseSampler:
    problems = check_sampler(cfg)
    if problems:
        raise HpsearchError("; ".join(f"{w}: {m}" for w, m in problems))
    opts = {k: v for k, v in cfg.items() if k != "name"}
    try:
        return SAMPLERS[cfg["name"]][0](seed, **opts)
    except (TypeError, ValueError) as exc:
        raise HpsearchError(f"sampler {cfg['name']!r}: {exc}") from None


def build_pruner(cfg: dict[str, Any], epochs: int | None = None) -> optuna.pruners.BasePruner:
    problems = check_pruner(cfg)
    if problems:
        raise HpsearchError("; ".join(f"{w}: {m}" for w, m in problems))
    opts = {k: v for k, v in cfg.items() if k != "name"}
    if cfg["name"] == "hyperband" and epochs and "max_resource" not in opts:
        opts["max_resource"] = epochs  # successive halving takes no max_resource: it halves by rung
    try:
        return PRUNERS[cfg["name"]][0](**opts)
    except (TypeError, ValueError) as exc:
        raise HpsearchError(f"pruner {cfg['name']!r}: {exc}") from None


# ---------------------------------------------------------------- the sampler against the space


def _default_popsize(space: dict[str, Any]) -> int:
    """CMA-ES's default population, as the cmaes package computes it: 4 + floor(3 ln n)."""
    n = sum(1 for p in space.values() if not p.is_categorical and p.low != p.high)
    return 4 + math.floor(3 * math.log(max(n, 1)))


def _cmaes_fits(cfg: dict[str, Any], space: dict[str, Any]) -> list[tuple[str, str]]:
    """CMA-ES samples a fixed vector of numbers: no choices, no conditions, x0 inside the ranges."""
    out = []
    for p in space.values():
        if p.is_categorical:
            out.append((f"space.{p.name}", "CMA-ES samples numeric ranges only, but this parameter has `choices` "
                        "(Optuna would sample it at random); fix it under train:, or use sampler gp or tpe"))
        elif p.when:
            out.append((f"space.{p.name}", "CMA-ES needs every parameter in every trial, but this one has a "
                        "`when:` condition (Optuna would sample it at random); use sampler gp or tpe"))
    if not out and not any(p.low != p.high for p in space.values()):
        out.append(("space", "CMA-ES needs at least one numeric range to search, but the space has none"))
    for key, value in (cfg.get("x0") or {}).items():
        p = space.get(key)
        if p is None or p.is_categorical:
            out.append((f"sampler.x0.{key}", f"must name a numeric parameter of the space; known: "
                        f"{', '.join(sorted(n for n, q in space.items() if not q.is_categorical)) or 'none'}"))
        elif not (isinstance(value, (int, float)) and not isinstance(value, bool) and p.low <= value <= p.high):
            out.append((f"sampler.x0.{key}", f"must be a number in [{p.low}, {p.high}], but got {value!r}"))
    return out


def _budget_fits(cfg: dict[str, Any], space: dict[str, Any], budget: int | None) -> list[tuple[str, str]]:
    """A learning phase the budget never reaches would quietly make the study a random search."""
    name = cfg["name"]
    if budget is None:
        return []
    if name in ("nsga2", "nsga3"):
        key, what = "population_size", "its first generation"
    elif name == "cmaes":
        key, what = "popsize", "one generation"
    elif name == "gp":
        key, what = "n_startup_trials", "its random start-up trials"
    else:
        return []
    default = inspect.signature(SAMPLERS[name][1]).parameters[key].default  # Optuna's own default
    size = cfg.get(key, _default_popsize(space) if default is None else default)
    if budget > size:
        return []
    return [(f"sampler.{key}", f"must be below the budget (budget.trials={budget}), but got {key}={size}: "
             f"{name} would never get past {what}, a random search; raise the budget or lower {key}")]


def fit_problems(cfg: dict[str, Any], space: dict[str, Any], repeats: int,
                 budget: int | None) -> list[tuple[str, str]]:
    """What the sampler cannot do with the space, budget and repeats: (field, message) for the
    spec's validation, listed with its other problems (check_sampler sees the options alone)."""
    if cfg.get("name") not in SAMPLERS:
        return []  # check_sampler already said so
    problems = _cmaes_fits(cfg, space) if cfg["name"] == "cmaes" else []
    if cfg.get("deterministic_objective") and repeats > 1:
        problems.append(("sampler.deterministic_objective", f"must be false with repeats={repeats}: each "
                         "repeat trains with another seed, so one configuration gives different values"))
    return problems + _budget_fits(cfg, space, budget)
