"""Sampler and pruner from the spec: a plain name -> factory dict, options checked by signature."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import optuna

from hpsearch.errors import HpsearchError
from hpsearch.registry import unknown_name_message
from hpsearch.search.filters import FilteredSampler


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


# Grid points are all enqueued at create-study with fixed parameters; a worker only ever pops
# them, so its sampler is never asked for a value. RandomSampler is a harmless placeholder.
SAMPLERS: dict[str, tuple[Callable[..., optuna.samplers.BaseSampler], Any]] = {
    "grid": (_random, optuna.samplers.RandomSampler),
    "random": (_random, optuna.samplers.RandomSampler),
    "tpe": (_tpe, optuna.samplers.TPESampler),
    "qmc": (_qmc, optuna.samplers.QMCSampler),
}
EXTRA_OPTIONS = {"tpe": {"window"}}


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
    accepted = set(inspect.signature(table[name][1]).parameters) - {"self", "seed"}
    accepted |= EXTRA_OPTIONS.get(name, set())
    out = []
    for key in cfg:
        if key != "name" and key not in accepted:
            out.append((f"{kind}.{key}", f"is not an option of {kind} {name!r}; known: {', '.join(sorted(accepted)) or 'none'}"))
    return out


def check_sampler(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    return _check("sampler", SAMPLERS, cfg)


def check_pruner(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    return _check("pruner", PRUNERS, cfg)


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
    if cfg["name"] in ("hyperband", "successive_halving") and epochs and "max_resource" not in opts:
        if cfg["name"] == "hyperband":
            opts["max_resource"] = epochs
    try:
        return PRUNERS[cfg["name"]][0](**opts)
    except (TypeError, ValueError) as exc:
        raise HpsearchError(f"pruner {cfg['name']!r}: {exc}") from None
