"""StudySpec from a mapping: every field validated, every problem reported at once with its path.

parse_spec runs labelled phases in a fixed order (the order of the problems a user reads): the
identity and objective, the search (sampler, pruner, repeats, seed, budget), what is trained
(dataset, train:, space:), then tracking and fusion, and last the plugins and the names in
torch-side registries.

A spec read back from a study (`registries=False`) is checked structurally only: it was checked
against the registries when it was created, and reading it (status, list, report, a worker's
start) must not import torch or the user's plugins. The registry check is `check_registries`,
which create-study runs inside parse_spec and a worker runs once before its first claim.
"""

from __future__ import annotations

import re
from typing import Any

from hpsearch.errors import HpsearchError
from hpsearch.metrics import BUILTIN
from hpsearch.registry import import_plugin, is_plugin_ref
from hpsearch.search.samplers import (
    BUDGETED_SAMPLERS,
    check_objectives,
    check_pruner,
    check_sampler,
    fit_problems,
)
from hpsearch.space import grid_size
from hpsearch.spec import objectives, trainer, warm
from hpsearch.spec.model import (
    MAX_FUSE,
    MAX_NAME,
    MAX_PLAN,
    MAX_SEED,
    MAX_TRIAL_TIMEOUT,
    Param,
    SpecError,
    StudySpec,
)
from hpsearch.spec.params import check_conditions, parse_space
from hpsearch.spec.problems import Problems, did_you_mean, is_int, is_num, short

TOP_KEYS = {
    "name", "description", "metric", "direction", "metrics", "directions", "constraints", "sampler", "pruner",
    "repeats", "seed", "budget", "dataset", "train", "space", "objective", "tracking", "fuse", "trial_timeout",
    "plugins", "warm_start",
}
# fullmatch, not `$`: `$` also matches before a trailing newline ("name\n" would be stored).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
RESERVED = ("seed", "trial", "config_id")  # names a searched parameter cannot take
MODULE_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")  # a plugin: an importable module's dotted name


def spec_from_dict(raw: dict[str, Any], source: str = "<stored spec>", registries: bool = True) -> StudySpec:
    """A StudySpec from a mapping; `registries=False`: structurally only (no plugin imports, no torch)."""
    return parse_spec(dict(raw), source=source, registries=registries)


def parse_spec(raw: dict[str, Any], source: str, registries: bool = True) -> StudySpec:
    """Every field validated, every problem at once (SpecError); registry names too unless `registries=False`."""
    err = Problems(source)
    # --- identity and objective ----------------------------------------------------------
    _check_top_keys(raw, err)
    name = _name(raw, err)
    objective = _objective(raw, err)
    builtin = objective is None
    metrics, directions = objectives.parse(raw, builtin, err)
    constraints = objectives.parse_constraints(raw.get("constraints"), builtin, metrics, err)
    # --- the search: sampler, pruner, repeats and seeds, budget ---------------------------
    sampler = _named(raw.get("sampler", "tpe"), "sampler", err)
    pruner = _named(raw.get("pruner", "none"), "pruner", err)
    for where, msg in check_sampler(sampler) + check_pruner(pruner):
        err(where, msg)
    # A user objective reports each epoch itself: only the built-in trainer's once-per-trial metrics cannot prune.
    per_epoch = not builtin or metrics[0] not in BUILTIN or BUILTIN[metrics[0]].per_epoch
    for where, msg in check_objectives(sampler, pruner, metrics, per_epoch):
        err(where, msg)
    repeats, seed = _repeats_and_seed(raw, err)
    budget_trials, wall_clock = _budget_of(raw, sampler, repeats, err)
    # --- what is trained: dataset, fixed settings, searched parameters -------------------
    dataset = _dataset(raw, err)
    train, space_raw = _train_and_space(raw, builtin, err)
    space = parse_space(space_raw, err)
    check_conditions(space, err)
    if builtin:
        trainer.check_accepted_values(train, space, err)
    _check_grid(sampler, space, repeats, err)
    for where, msg in fit_problems(sampler, space, repeats, budget_trials):
        err(where, msg)
    warm_start = warm.parse(raw.get("warm_start"), sampler, budget_trials, space, err)
    # --- tracking and fusion; last, names in the registries (they import torch) ----------
    tracking = _tracking(raw.get("tracking"), err)
    fuse = _fuse(raw.get("fuse"), builtin, err)
    trial_timeout = _trial_timeout(raw.get("trial_timeout"), err)
    plugins = _plugins(raw.get("plugins"), err)
    if registries:
        # Even when other fields are wrong: every problem at once, a misspelled name included.
        _check_registries(plugins, dataset, train, space if builtin else None, err)
    if err:
        raise SpecError(err.lines)
    return StudySpec(
        name=name, metric=metrics[0], direction=directions[0], sampler=sampler, pruner=pruner,
        repeats=repeats, seed=seed, budget_trials=budget_trials, wall_clock=wall_clock,
        dataset=dataset, train=dict(train), space=space, objective=objective, tracking=tracking,
        description=str(raw.get("description", "") or ""), fuse=fuse, trial_timeout=trial_timeout,
        plugins=plugins, metrics=metrics, directions=directions, constraints=constraints, warm_start=warm_start,
    )


def check_registries(spec: StudySpec, source: str) -> None:
    """Import the spec's plugins and check its names in the registries (SpecError): what a worker
    runs once before its first claim, on the spec it read back structurally."""
    err = Problems(source)
    _check_registries(spec.plugins, spec.dataset, spec.train, spec.space if spec.objective is None else None, err)
    if err:
        raise SpecError(err.lines)


def _check_registries(plugins: list[str], dataset: dict[str, Any], train: dict[str, Any],
                      space: dict[str, Param] | None, err: Problems) -> None:
    """Plugins first (their @register lines fill the registries), then the built-in trainer's
    names (space None: a user objective's are its own). A plugin that does not import is its own
    line, and the names are not checked against registries it may have been meant to fill."""
    broken = False
    for i, module in enumerate(plugins):
        try:
            import_plugin(module)
        except HpsearchError as exc:
            err(f"plugins[{i}]", str(exc))
            broken = True
    if space is not None and not broken:
        trainer.check_registry_names(dataset, train, space, err)


# ---------------------------------------------------------------- identity and objective


def _check_top_keys(raw: dict[str, Any], err: Problems) -> None:
    for key in raw:
        if key not in TOP_KEYS:
            err(str(key), "unknown field" + did_you_mean(str(key), TOP_KEYS) + f"; known: {', '.join(sorted(TOP_KEYS))}")


def _name(raw: dict[str, Any], err: Problems) -> str:
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        err("name", f"must be a name of letters, digits, '_', '.', '-', but got name={short(name)}")
        return str(name)[:100]
    if len(name) > MAX_NAME:
        err("name", f"must be at most {MAX_NAME} characters, but got a name of {len(name):,} characters "
                    f"({name[:20]}...)")
        return name[:MAX_NAME]
    return name


def _objective(raw: dict[str, Any], err: Problems) -> str | None:
    objective = raw.get("objective")
    if objective is not None and not is_plugin_ref(objective):
        err("objective", f"must be 'package.module:function', but got {objective=}")
    return objective


# ---------------------------------------------------------------- the search


def _named(value: Any, where: str, err: Problems) -> dict[str, Any]:
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return dict(value)
    err(where, f"must be a name or a mapping with 'name', but got {where}={value!r}")
    return {"name": "none" if where == "pruner" else "random"}


def _repeats_and_seed(raw: dict[str, Any], err: Problems) -> tuple[int, int]:
    repeats = raw.get("repeats", 1)
    if not is_int(repeats) or repeats < 1:
        err("repeats", f"must be an integer >= 1, but got repeats={short(repeats)}")
        repeats = 1
    elif repeats > MAX_PLAN:
        err("repeats", f"must be at most {MAX_PLAN:,} (planned trials), but got {repeats=}")
        repeats = 1
    seed = raw.get("seed", 0)
    if not is_int(seed) or not 0 <= seed <= MAX_SEED:
        err("seed", f"must be an integer in [0, 2**32-1], but got seed={short(seed)}")
        seed = 0
    elif seed + repeats - 1 > MAX_SEED:
        # Repeat r trains with seed + r: the last one must still be a valid seed.
        err("seed", f"must leave room for the repeat seeds (seed + repeats - 1 <= 2**32-1), but got {seed=}, "
            f"{repeats=}")
    return int(repeats), int(seed)


def _budget_of(raw: dict[str, Any], sampler: dict[str, Any], repeats: int,
               err: Problems) -> tuple[int | None, float | None]:
    # Only a known non-grid sampler needs a budget (an unknown name is already reported).
    needs_budget = sampler.get("name") in BUDGETED_SAMPLERS
    budget_trials, wall_clock = _budget(raw.get("budget"), not needs_budget, err)
    if budget_trials is not None and budget_trials * repeats > MAX_PLAN:
        # Each budgeted configuration is repeated with repeats - 1 more seeds.
        err("budget.trials", f"must plan at most {MAX_PLAN:,} trials (trials x repeats), but got "
            f"trials={budget_trials:,} x repeats={repeats:,}")
    return budget_trials, wall_clock


def _budget(value: Any, is_grid: bool, err: Problems) -> tuple[int | None, float | None]:
    if value is None:
        if not is_grid:
            err("budget", "sampled studies (every sampler but grid) need a trial budget, e.g. `budget: 50` or `budget: {trials: 50}`")
        return None, None
    if is_int(value):
        value = {"trials": value}
    if not isinstance(value, dict):
        err("budget", f"must be a number of trials or a mapping with trials/wall_clock, but got {value=}")
        return None, None
    for key in value:
        if key not in ("trials", "wall_clock"):
            err(f"budget.{key}", "unknown field; known: trials, wall_clock")
    trials = _budget_trials(value, is_grid, err)
    wall = value.get("wall_clock")
    seconds = None
    if wall is not None:
        seconds = parse_duration(wall)
        if seconds is None:
            err("budget.wall_clock", f"must be seconds or a duration like '2h', but got wall_clock={wall!r}")
    if is_grid and trials is not None:
        err("budget.trials", "a grid runs every point; drop `trials` (wall_clock is allowed)")
    return trials, seconds


def _budget_trials(value: dict[str, Any], is_grid: bool, err: Problems) -> int | None:
    trials = value.get("trials")
    if trials is not None and (not is_int(trials) or trials < 1):
        err("budget.trials", f"must be an integer >= 1, but got trials={short(trials)}")
        trials = None
    elif trials is not None and trials > MAX_PLAN:
        err("budget.trials", f"must be at most {MAX_PLAN:,} (planned trials), but got {trials=}")
        trials = None
    if trials is None and not is_grid and "trials" not in value:
        err("budget.trials", "sampled studies need a number of trials")
    return trials


def parse_duration(value: Any) -> float | None:
    if is_num(value) and value > 0:
        return float(value)
    if isinstance(value, str):
        m = DURATION_RE.match(value)
        if m and float(m.group(1)) > 0:
            return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return None


# ---------------------------------------------------------------- what is trained


def _dataset(raw: dict[str, Any], err: Problems) -> dict[str, Any]:
    dataset = raw.get("dataset", {"name": "digits"})
    if isinstance(dataset, str):
        dataset = {"name": dataset}
    if not isinstance(dataset, dict) or "name" not in dataset:
        err("dataset", f"must be a name or a mapping with 'name', but got {dataset=}")
        dataset = {"name": "digits"}
    dataset = dict(dataset)
    vf = dataset.setdefault("val_fraction", 0.2)
    if not isinstance(vf, (int, float)) or isinstance(vf, bool) or not 0 < vf < 1:
        err("dataset.val_fraction", f"must be a number in (0, 1), but got val_fraction={vf!r}")
    return dataset


def _train_and_space(raw: dict[str, Any], builtin: bool, err: Problems) -> tuple[dict[str, Any], dict[str, Any]]:
    """train: and space: as mappings, each setting either fixed or searched, no reserved names."""
    train = raw.get("train", {}) or {}
    if not isinstance(train, dict):
        err("train", f"must be a mapping of fixed settings, but got {type(train).__name__}")
        train = {}
    space_raw = raw.get("space", {}) or {}
    if not isinstance(space_raw, dict):
        err("space", f"must be a mapping of parameters, but got {type(space_raw).__name__}")
        space_raw = {}
    if builtin:
        trainer.check_known_settings(train, space_raw, err)
    for key in set(train) & set(space_raw):
        # Allowed for a conditional parameter: train: holds the value used where it is inactive.
        if not (isinstance(space_raw[key], dict) and space_raw[key].get("when")):
            err(f"space.{key}", "is also fixed under train:; a setting is either fixed or searched "
                "(or give the searched one a `when:` condition)")
    for key in RESERVED:
        if key in space_raw:
            err(f"space.{key}", "is reserved (seeds come from `repeats:`)")
    return train, space_raw


def _check_grid(sampler: dict[str, Any], space: dict[str, Param], repeats: int, err: Problems) -> None:
    """A grid is finite, and its points x repeats are bounded before anything is stored."""
    if sampler.get("name") != "grid":
        return
    finite_grid = True
    for p in space.values():
        if not p.is_categorical and not p.is_int and p.step is None:
            err(f"space.{p.name}", "grid search needs a finite set: give `step` or `choices` for a continuous range")
            finite_grid = False
    if finite_grid and not err:
        _check_plan_size(space, repeats, err)


def _check_plan_size(space: dict[str, Param], repeats: int, err: Problems) -> None:
    """Grid points x repeats, counted without enumerating."""
    points = grid_size(space, limit=MAX_PLAN)
    if points * repeats > MAX_PLAN:
        size = f"{points:,} points" if points <= MAX_PLAN else f"more than {MAX_PLAN:,} points"
        err("space", f"must plan at most {MAX_PLAN:,} trials (grid points x repeats), but the grid has {size}"
            + (f" x {repeats:,} repeats" if repeats > 1 else "") + "; narrow it, or use sampler tpe/random with a budget")


# ---------------------------------------------------------------- tracking and fusion


def _tracking(tracking: Any, err: Problems) -> dict[str, Any] | None:
    if tracking in ("none", None, False):
        return None
    if tracking == "wandb":
        return {"backend": "wandb"}
    if isinstance(tracking, dict):
        return {"backend": "wandb", **tracking}
    err("tracking", f"must be none, wandb or a mapping, but got {tracking=}")
    return None


def _trial_timeout(value: Any, err: Problems) -> float | None:
    if value is None:
        return None
    if not is_num(value) or not 0 < float(value) <= MAX_TRIAL_TIMEOUT:
        err("trial_timeout", f"must be a number of seconds in (0, {MAX_TRIAL_TIMEOUT:g}] (a trial's time limit), "
            f"but got trial_timeout={short(value)}")
        return None
    return float(value)


def _plugins(value: Any, err: Problems) -> list[str]:
    """Modules a worker imports before its first trial, so their @MODELS.register (and optimizers',
    datasets') run there too: a module name or a list of them."""
    if value is None:
        return []
    modules = [value] if isinstance(value, str) else value
    if not isinstance(modules, list) or not all(isinstance(m, str) and MODULE_RE.fullmatch(m) for m in modules):
        err("plugins", f"must be a list of module names like mypkg.models, but got plugins={short(value)}")
        return []
    return list(dict.fromkeys(modules))


def _fuse(fuse: Any, builtin: bool, err: Problems) -> int | None:
    if fuse is not None and (not is_int(fuse) or not 1 <= fuse <= MAX_FUSE):
        err("fuse", f"must be an integer in [1, {MAX_FUSE}] (trials trained as one fused model), but got "
            f"fuse={short(fuse)}")
    elif fuse is not None and fuse > 1 and not builtin:
        err("fuse", f"must be 1 or absent with a user objective (only the built-in trainer fuses trials), but got {fuse=}")
    return fuse
