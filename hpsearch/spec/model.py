"""What a validated spec is: StudySpec and its searched Params, SpecError, and the bounds it keeps.

The resolved spec (defaults filled, overrides applied) is a plain JSON-able dict: it is what
create-study stores inside the study, hashes, and what workers rebuild a StudySpec from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from hpsearch.errors import HpsearchError

MAX_SEED = 2**32 - 1  # what numpy's and torch's seeding accept
MAX_PLAN = 1_000_000  # planned trials (grid points x repeats, or a trial budget)
MAX_FUSE = 64  # trials a worker trains as one fused model
MAX_TRIAL_TIMEOUT = 30 * 86400.0  # a trial's time limit, in seconds
# Study names: W&B takes a study's name as its runs' group, at most 128 characters, and every
# backend gets the same bound (Optuna's study_name column holds 512; the journal has none).
MAX_NAME = 128


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
    fuse: int | None = None  # trials a worker trains as one fused model (hpsearch.worker.fused); None: its default
    trial_timeout: float | None = None  # seconds a trial may run (hpsearch.worker.stopping); None: no limit
    plugins: list[str] = field(default_factory=list)  # modules every worker imports first (their @register)
    # Every objective in order (the first is `metric`/`direction`); one for a single-objective study.
    metrics: list[str] = field(default_factory=list)
    directions: list[str] = field(default_factory=list)
    # metric -> {min: X, max: Y}: bounds on any reported metric (hpsearch.metrics)
    constraints: dict[str, dict[str, float]] = field(default_factory=dict)
    # {from: STUDY, top: K, configs: [{params, trial, rank}]}: the plan's first entries (hpsearch.spec.warm)
    warm_start: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.metrics = list(self.metrics) or [self.metric]
        self.directions = list(self.directions) or [self.direction]

    @property
    def is_grid(self) -> bool:
        return self.sampler["name"] == "grid"

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

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
            **({"trial_timeout": self.trial_timeout} if self.trial_timeout is not None else {}),
            **({"plugins": list(self.plugins)} if self.plugins else {}),
            # Several objectives keep `metric`/`direction` (the first) for readers of one.
            **({"metrics": list(self.metrics), "directions": list(self.directions)} if self.multi_objective else {}),
            **({"constraints": {m: dict(b) for m, b in self.constraints.items()}} if self.constraints else {}),
            **({"warm_start": dict(self.warm_start)} if self.warm_start else {}),
        }

    def warm_configs(self) -> list[dict[str, Any]]:
        """The configurations a warm start puts first in the plan (chosen at create-study)."""
        return list((self.warm_start or {}).get("configs") or [])

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
