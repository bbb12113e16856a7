"""StudySpec: load and validate a YAML study spec, reporting every error at once with its path.

The resolved spec (defaults filled, overrides applied) is a plain JSON-able dict: it is what
create-study stores inside the study, hashes, and what workers rebuild a StudySpec from.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpsearch.errors import HpsearchError
from hpsearch.registry import is_plugin_ref
from hpsearch.training.settings import ACCEPTS, TRAIN_KEYS

TOP_KEYS = {
    "name", "description", "metric", "direction", "sampler", "pruner", "repeats", "seed",
    "budget", "dataset", "train", "space", "objective", "tracking", "fuse",
}
PARAM_KEYS = {"choices", "low", "high", "log", "step", "type", "when"}
BUILTIN_METRICS = {"val_acc", "val_loss"}
# fullmatch, not `$`: `$` also matches before a trailing newline ("name\n" would be stored).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
MAX_SEED = 2**32 - 1  # what numpy's and torch's seeding accept
# Bounds that keep a hostile or mistyped spec from exhausting memory before it is even validated:
MAX_SPEC_BYTES = 1_000_000  # real specs are a few hundred bytes
MAX_YAML_NODES = 100_000  # nodes after expanding aliases (a 677-byte alias bomb expands to 10^9)
MAX_PLAN = 1_000_000  # planned trials (grid points x repeats, or a trial budget)
MAX_FUSE = 64  # trials a worker trains as one fused model
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


class SpecError(HpsearchError):
    """All problems of one spec; str() is one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Param:
    """One searched parameter."""

    name: str
    choices: list[Any] | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    is_int: bool = False
    when: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def is_categorical(self) -> bool:
        return self.choices is not None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.choices is not None:
            d["choices"] = list(self.choices)
        else:
            d.update(low=self.low, high=self.high, log=self.log, type="int" if self.is_int else "float")
            if self.step is not None:
                d["step"] = self.step
        if self.when:
            d["when"] = {k: list(v) for k, v in self.when.items()}
        return d


@dataclass
class StudySpec:
    name: str
    metric: str
    direction: str
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    repeats: int
    seed: int
    budget_trials: int | None
    wall_clock: float | None
    dataset: dict[str, Any]
    train: dict[str, Any]
    space: dict[str, Param]
    objective: str | None
    tracking: dict[str, Any] | None
    description: str = ""
    fuse: int | None = None  # trials a worker trains as one fused model (hpsearch.training.fused); None: its default

    @property
    def is_grid(self) -> bool:
        return self.sampler["name"] == "grid"

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec: stored in the study and hashed."""
        return {
            "name": self.name,
            "description": self.description,
            "metric": self.metric,
            "direction": self.direction,
            "sampler": dict(self.sampler),
            "pruner": dict(self.pruner),
            "repeats": self.repeats,
            "seed": self.seed,
            "budget": {"trials": self.budget_trials, "wall_clock": self.wall_clock},
            "dataset": dict(self.dataset),
            "train": dict(self.train),
            "space": {n: p.to_dict() for n, p in self.space.items()},
            "objective": self.objective,
            "tracking": self.tracking,
            # Only when set: a spec without it keeps the hash it had before the field existed.
            **({"fuse": self.fuse} if self.fuse is not None else {}),
        }

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------- loading


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents whose aliases expand beyond MAX_YAML_NODES nodes.

    PyYAML builds aliased nodes once and shares them, so a "billion laughs" spec loads quickly but
    anything that walks it (validation, repr in a message, JSON for the storage) runs out of memory.
    The composed graph is measured before anything is constructed from it.
    """

    def compose_document(self) -> yaml.Node:  # type: ignore[override]
        node = super().compose_document()
        _check_expansion(node)
        return node


class _AliasBomb(yaml.YAMLError):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = None


def _check_expansion(root: yaml.Node) -> None:
    """Count the nodes of the fully expanded document (memoised per node: linear in the graph)."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise _AliasBomb("an alias refers to a node that contains it (recursive YAML)")
        visiting.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        visiting.discard(key)
        if total > MAX_YAML_NODES:
            raise _AliasBomb(f"must expand to at most {MAX_YAML_NODES:,} YAML nodes, but its aliases (*name) "
                             f"expand to more")
        sizes[key] = total
        return total

    size(root)


def safe_load(text: str) -> Any:
    """yaml.safe_load with alias expansion bounded (see _BoundedLoader)."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None, sets: list[str] | None = None) -> StudySpec:
    """Read a YAML file and validate it; `overrides` are top-level keys and `sets` KEY.PATH=VALUE from the CLI."""
    path = Path(path)
    if not path.is_file():
        raise HpsearchError(f"{path}: spec file not found")
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise HpsearchError(f"{path}: must be a spec of at most {MAX_SPEC_BYTES:,} bytes, but got {size:,} bytes")
    try:
        raw = safe_load(path.read_text())
    except UnicodeDecodeError as exc:
        raise HpsearchError(f"{path}: must be UTF-8 text, but got byte {exc.object[exc.start]:#04x} at offset "
                            f"{exc.start}") from None
    except RecursionError:
        raise HpsearchError(f"{path}: malformed YAML: nested too deeply") from None
    except _AliasBomb as exc:
        raise HpsearchError(f"{path}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise HpsearchError(f"{path}:{where}: malformed YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError([f"{path}: must be a mapping of spec fields, but got {type(raw).__name__}"])
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    for assignment in sets or []:
        apply_set(raw, assignment, str(path))
    return parse_spec(raw, source=str(path))


def apply_set(raw: dict[str, Any], assignment: str, source: str = "--set") -> None:
    """`--set dataset.root=/data` or `--set space.lr.choices=[0.1,0.01]` (values parsed as YAML)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise HpsearchError(f"--set must be KEY.PATH=VALUE, but got {assignment!r}")
    try:
        value = safe_load(text)
    except (yaml.YAMLError, RecursionError):
        raise HpsearchError(f"--set {key}: value {text!r} is not valid YAML") from None
    node: Any = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if isinstance(node.get(part), str) and part in ("dataset", "sampler", "pruner"):
            node[part] = {"name": node[part]}
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise HpsearchError(f"{source}: --set {key}: {part!r} is not a mapping")
    node[parts[-1]] = value


def spec_from_dict(raw: dict[str, Any], source: str = "<stored spec>") -> StudySpec:
    return parse_spec(dict(raw), source=source)


def parse_spec(raw: dict[str, Any], source: str) -> StudySpec:
    problems: list[str] = []

    def err(where: str, msg: str) -> None:
        problems.append(f"{source}: {where}: {msg}")

    for key in raw:
        if key not in TOP_KEYS:
            err(str(key), "unknown field" + _suggest(str(key), TOP_KEYS) + f"; known: {', '.join(sorted(TOP_KEYS))}")

    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        err("name", f"must be a name of letters, digits, '_', '.', '-', but got name={_short(name)}")
        name = str(name)[:100]

    objective = raw.get("objective")
    if objective is not None and not is_plugin_ref(objective):
        err("objective", f"must be 'package.module:function', but got {objective=}")
    builtin = objective is None

    metric = raw.get("metric", "val_acc")
    if not isinstance(metric, str) or (builtin and metric not in BUILTIN_METRICS):
        err("metric", f"must be one of {', '.join(sorted(BUILTIN_METRICS))}, but got {metric=}"
            + (" (the test set is never used for selection)" if str(metric).startswith("test") else ""))
    default_dir = "minimize" if str(metric).endswith("loss") else "maximize"
    direction = raw.get("direction", default_dir)
    if direction not in ("maximize", "minimize"):
        err("direction", f"must be maximize or minimize, but got {direction=}")

    sampler = _named(raw.get("sampler", "tpe"), "sampler", err)
    pruner = _named(raw.get("pruner", "none"), "pruner", err)
    _check_sampler_pruner(sampler, pruner, err)

    repeats = raw.get("repeats", 1)
    if not _is_int(repeats) or repeats < 1:
        err("repeats", f"must be an integer >= 1, but got repeats={_short(repeats)}")
        repeats = 1
    elif repeats > MAX_PLAN:
        err("repeats", f"must be at most {MAX_PLAN:,} (planned trials), but got {repeats=}")
        repeats = 1
    seed = raw.get("seed", 0)
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        err("seed", f"must be an integer in [0, 2**32-1], but got seed={_short(seed)}")
        seed = 0
    elif seed + repeats - 1 > MAX_SEED:
        # Repeat r trains with seed + r: the last one must still be a valid seed.
        err("seed", f"must leave room for the repeat seeds (seed + repeats - 1 <= 2**32-1), but got {seed=}, "
            f"{repeats=}")

    # Only a known non-grid sampler needs a budget (an unknown name is already reported).
    needs_budget = sampler.get("name") in ("random", "tpe", "qmc")
    budget_trials, wall_clock = _budget(raw.get("budget"), not needs_budget, err)
    if budget_trials is not None and budget_trials * repeats > MAX_PLAN:
        # Each budgeted configuration is repeated with repeats - 1 more seeds.
        err("budget.trials", f"must plan at most {MAX_PLAN:,} trials (trials x repeats), but got "
            f"trials={budget_trials:,} x repeats={repeats:,}")

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

    train = raw.get("train", {}) or {}
    if not isinstance(train, dict):
        err("train", f"must be a mapping of fixed settings, but got {type(train).__name__}")
        train = {}
    space_raw = raw.get("space", {}) or {}
    if not isinstance(space_raw, dict):
        err("space", f"must be a mapping of parameters, but got {type(space_raw).__name__}")
        space_raw = {}

    if builtin:
        for key in list(train) + list(space_raw):
            where = "train" if key in train else "space"
            if key not in TRAIN_KEYS:
                err(f"{where}.{key}", "unknown training setting" + _suggest(key, TRAIN_KEYS)
                    + f"; known: {', '.join(sorted(TRAIN_KEYS))}")
    for key in set(train) & set(space_raw):
        # Allowed for a conditional parameter: train: holds the value used where it is inactive.
        if not (isinstance(space_raw[key], dict) and space_raw[key].get("when")):
            err(f"space.{key}", "is also fixed under train:; a setting is either fixed or searched "
                "(or give the searched one a `when:` condition)")
    for key in ("seed", "trial", "config_id"):
        if key in space_raw:
            err(f"space.{key}", "is reserved (seeds come from `repeats:`)")

    space = {str(k): _param(str(k), v, err) for k, v in space_raw.items()}
    space = {k: p for k, p in space.items() if p is not None}
    _check_conditions(space, err)
    if builtin:
        _check_accepted_values(train, space, err)
    finite_grid = True
    if sampler.get("name") == "grid":
        for p in space.values():
            if not p.is_categorical and not p.is_int and p.step is None:
                err(f"space.{p.name}", "grid search needs a finite set: give `step` or `choices` for a continuous range")
                finite_grid = False
        if finite_grid and not problems:
            _check_plan_size(space, int(repeats), err)

    tracking = raw.get("tracking")
    if tracking in ("none", None, False):
        tracking = None
    elif tracking == "wandb":
        tracking = {"backend": "wandb"}
    elif isinstance(tracking, dict):
        tracking = {"backend": "wandb", **tracking}
    else:
        err("tracking", f"must be none, wandb or a mapping, but got {tracking=}")
        tracking = None

    fuse = raw.get("fuse")
    if fuse is not None and (not _is_int(fuse) or not 1 <= fuse <= MAX_FUSE):
        err("fuse", f"must be an integer in [1, {MAX_FUSE}] (trials trained as one fused model), but got "
            f"fuse={_short(fuse)}")
    elif fuse is not None and fuse > 1 and not builtin:
        err("fuse", f"must be 1 or absent with a user objective (only the built-in trainer fuses trials), but got {fuse=}")

    if builtin and not problems:
        _check_registry_names(dataset, train, space, err)

    if problems:
        raise SpecError(problems)
    return StudySpec(
        name=name, metric=metric, direction=direction, sampler=sampler, pruner=pruner,
        repeats=int(repeats), seed=int(seed), budget_trials=budget_trials, wall_clock=wall_clock,
        dataset=dataset, train=dict(train), space=space, objective=objective, tracking=tracking,
        description=str(raw.get("description", "") or ""), fuse=fuse,
    )


# ---------------------------------------------------------------- pieces


def _short(value: Any, limit: int = 80) -> str:
    """repr for a message: a hostile value (a huge list, a control character) stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _suggest(word: str, known: Any) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _named(value: Any, where: str, err: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return dict(value)
    err(where, f"must be a name or a mapping with 'name', but got {where}={value!r}")
    return {"name": "none" if where == "pruner" else "random"}


def _check_sampler_pruner(sampler: dict[str, Any], pruner: dict[str, Any], err: Any) -> None:
    from hpsearch.search.samplers import check_pruner, check_sampler  # torch-free

    for where, msg in check_sampler(sampler) + check_pruner(pruner):
        err(where, msg)


def parse_duration(value: Any) -> float | None:
    if _is_num(value) and value > 0:
        return float(value)
    if isinstance(value, str):
        m = DURATION_RE.match(value)
        if m and float(m.group(1)) > 0:
            return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return None


def _budget(value: Any, is_grid: bool, err: Any) -> tuple[int | None, float | None]:
    if value is None:
        if not is_grid:
            err("budget", "random and TPE studies need a trial budget, e.g. `budget: 50` or `budget: {trials: 50}`")
        return None, None
    if _is_int(value):
        value = {"trials": value}
    if not isinstance(value, dict):
        err("budget", f"must be a number of trials or a mapping with trials/wall_clock, but got {value=}")
        return None, None
    for key in value:
        if key not in ("trials", "wall_clock"):
            err(f"budget.{key}", "unknown field; known: trials, wall_clock")
    trials = value.get("trials")
    if trials is not None and (not _is_int(trials) or trials < 1):
        err("budget.trials", f"must be an integer >= 1, but got trials={_short(trials)}")
        trials = None
    elif trials is not None and trials > MAX_PLAN:
        err("budget.trials", f"must be at most {MAX_PLAN:,} (planned trials), but got {trials=}")
        trials = None
    if trials is None and not is_grid and "trials" not in value:
        err("budget.trials", "random and TPE studies need a number of trials")
    wall = value.get("wall_clock")
    seconds = None
    if wall is not None:
        seconds = parse_duration(wall)
        if seconds is None:
            err("budget.wall_clock", f"must be seconds or a duration like '2h', but got wall_clock={wall!r}")
    if is_grid and trials is not None:
        err("budget.trials", "a grid runs every point; drop `trials` (wall_clock is allowed)")
    return trials, seconds


def _param(name: str, value: Any, err: Any) -> Param | None:
    where = f"space.{name}"
    if isinstance(value, list):
        value = {"choices": value}
    if not isinstance(value, dict):
        err(where, f"must be a mapping with choices or low/high (fixed values go under train:), but got {value!r}")
        return None
    ok = True
    for key in value:
        if key not in PARAM_KEYS:
            err(f"{where}.{key}", "unknown field" + _suggest(str(key), PARAM_KEYS) + f"; known: {', '.join(sorted(PARAM_KEYS))}")
            ok = False
    when = _when(value.get("when"), where, err)
    if "choices" in value:
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            err(f"{where}.choices", f"must be a non-empty list, but got choices={choices!r}")
            return None
        if any(not isinstance(c, (str, int, float, bool)) and c is not None for c in choices):
            err(f"{where}.choices", "must hold only strings, numbers, booleans or null")
            return None
        if any(isinstance(c, float) and not math.isfinite(c) for c in choices):
            err(f"{where}.choices", f"must hold finite numbers, but got choices={_short(choices)}")
            return None
        same = _first_repeat(choices)
        if same is not None:
            # Python equality, as Optuna's categorical index lookup uses: 1, 1.0 and true are one
            # value, so the grid would store one point several times.
            err(f"{where}.choices", f"must not repeat a value (1, 1.0 and true are equal), but got "
                f"{same[0]!r} and {same[1]!r} in choices={_short(choices)}")
            return None
        extra = {"low", "high", "log", "step"} & set(value)
        if extra:
            err(where, f"choices cannot be combined with {', '.join(sorted(extra))}")
            return None
        return Param(name=name, choices=list(choices), when=when) if ok else None
    low, high = value.get("low"), value.get("high")
    if not _is_num(low) or not _is_num(high):
        err(where, f"must have numeric low and high (or choices), but got low={low!r}, high={high!r}")
        return None
    log = value.get("log", False)
    if not isinstance(log, bool):
        err(f"{where}.log", f"must be true or false, but got log={log!r}")
        return None
    step = value.get("step")
    kind = value.get("type")
    if kind not in (None, "int", "float"):
        err(f"{where}.type", f"must be int or float, but got type={kind!r}")
        return None
    is_int = kind == "int" or (kind is None and _is_int(low) and _is_int(high) and (step is None or _is_int(step)))
    if low > high:
        err(where, f"must have low <= high, but got low={low}, high={high}")
        ok = False
    if log and low <= 0:
        err(f"{where}.low", f"must be > 0 for a log range, but got low={low}")
        ok = False
    if step is not None:
        if not _is_num(step) or step <= 0:
            err(f"{where}.step", f"must be a positive number, but got step={step!r}")
            ok = False
        elif log and not (is_int and step == 1):
            err(f"{where}.step", "cannot be combined with log: true (use choices for a log grid)")
            ok = False
    if is_int and (not float(low).is_integer() or not float(high).is_integer()):
        err(where, f"must have integer low and high for an int range, but got low={low}, high={high}")
        ok = False
    if not ok:
        return None
    if is_int:
        return Param(name=name, low=int(low), high=int(high), log=log,
                     step=int(step) if step is not None else None, is_int=True, when=when)
    return Param(name=name, low=float(low), high=float(high), log=log,
                 step=float(step) if step is not None else None, when=when)


def _first_repeat(choices: list[Any]) -> tuple[Any, Any] | None:
    """The first pair of choices equal under Python equality (quadratic: choices lists are short)."""
    for i, a in enumerate(choices):
        for b in choices[:i]:
            if a == b:
                return b, a
    return None


def _check_accepted_values(train: dict[str, Any], space: dict[str, Param], err: Any) -> None:
    """Fixed values, choices and both ends of ranges of the trainer's numeric settings (config.ACCEPTS)."""
    for key, value in train.items():
        accepts = ACCEPTS.get(key)
        msg = accepts.problem(key, value) if accepts else None
        if msg:
            err(f"train.{key}", msg)
    for key, p in space.items():
        accepts = ACCEPTS.get(key)
        if accepts is None:
            continue
        if p.is_categorical:
            msg = next(filter(None, (accepts.problem(key, c) for c in p.choices or [])), None)
            if msg:
                err(f"space.{key}.choices", msg)
        elif accepts.many:
            err(f"space.{key}", f"must be searched with choices (each {accepts.describe()}), but got a range")
        elif accepts.integer and not p.is_int:
            err(f"space.{key}", f"must be an integer range (type: int), but got a float range low={p.low}, high={p.high}")
        else:
            for end, value in (("low", p.low), ("high", p.high)):
                msg = accepts.problem(end, value)
                if msg:
                    err(f"space.{key}.{end}", msg)


def _check_plan_size(space: dict[str, Param], repeats: int, err: Any) -> None:
    """Grid points x repeats, counted without enumerating, bounded before anything is stored."""
    from hpsearch.spec.space import grid_size  # space.py imports this module

    points = grid_size(space, limit=MAX_PLAN)
    if points * repeats > MAX_PLAN:
        size = f"{points:,} points" if points <= MAX_PLAN else f"more than {MAX_PLAN:,} points"
        err("space", f"must plan at most {MAX_PLAN:,} trials (grid points x repeats), but the grid has {size}"
            + (f" x {repeats:,} repeats" if repeats > 1 else "") + "; narrow it, or use sampler tpe/random with a budget")


def _when(value: Any, where: str, err: Any) -> dict[str, list[Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        err(f"{where}.when", f"must map a parameter to its value(s), but got when={value!r}")
        return {}
    return {str(k): (list(v) if isinstance(v, list) else [v]) for k, v in value.items()}


def _check_conditions(space: dict[str, Param], err: Any) -> None:
    for p in space.values():
        for other, values in p.when.items():
            if other == p.name:
                err(f"space.{p.name}.when", "a parameter cannot depend on itself")
            elif other not in space:
                err(f"space.{p.name}.when.{other}", "conditions must name a parameter of space:"
                    + _suggest(other, space) + f"; known: {', '.join(sorted(space)) or 'none'}")
            elif space[other].is_categorical:
                bad = [v for v in values if v not in space[other].choices]
                if bad:
                    err(f"space.{p.name}.when.{other}", f"must be among {space[other].choices}, but got {bad}")
    # Cycles would make the order of suggestion undefined.
    state: dict[str, int] = {}

    def visit(n: str) -> bool:
        if state.get(n) == 1:
            return False
        if state.get(n) == 2 or n not in space:
            return True
        state[n] = 1
        ok = all(visit(o) for o in space[n].when)
        state[n] = 2
        return ok

    for n in space:
        if not visit(n):
            err(f"space.{n}.when", "conditions form a cycle")
            return


def _check_registry_names(dataset: dict[str, Any], train: dict[str, Any], space: dict[str, Param],
                          err: Any) -> None:
    """Names of models, optimizers, ... exist (imports the torch-side registries)."""
    from hpsearch.spec import catalog

    for key, registry_check in catalog.name_checks().items():
        if key == "dataset":
            msg = registry_check(dataset.get("name"))
            if msg:
                err("dataset.name", msg)
            for where, problem in [] if msg else catalog.dataset_problems(dataset):
                err(where, problem)
            continue
        if key in train:
            msg = registry_check(train[key])
            if msg:
                err(f"train.{key}", msg)
        if key in space and space[key].is_categorical:
            for choice in space[key].choices or []:
                msg = registry_check(choice)
                if msg:
                    err(f"space.{key}.choices", msg)
