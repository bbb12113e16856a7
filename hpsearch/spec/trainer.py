"""The built-in trainer's part of spec validation: train: and space: against its settings.

Skipped for a user objective (objective: set), whose settings are its own. Names, defaults and
accepted values come from hpsearch.settings; registry names from hpsearch.spec.catalog.
"""

from __future__ import annotations

from typing import Any

from hpsearch.settings import ACCEPTS, TRAIN_KEYS
from hpsearch.spec import catalog
from hpsearch.spec.model import Param
from hpsearch.spec.problems import Problems, did_you_mean


def check_known_settings(train: dict[str, Any], space_raw: dict[str, Any], err: Problems) -> None:
    for key in list(train) + list(space_raw):
        where = "train" if key in train else "space"
        if key not in TRAIN_KEYS:
            err(f"{where}.{key}", "unknown training setting" + did_you_mean(key, TRAIN_KEYS)
                + f"; known: {', '.join(sorted(TRAIN_KEYS))}")


def check_accepted_values(train: dict[str, Any], space: dict[str, Param], err: Problems) -> None:
    """Fixed values, choices and both ends of ranges of the trainer's numeric settings (settings.ACCEPTS)."""
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


def check_registry_names(dataset: dict[str, Any], train: dict[str, Any], space: dict[str, Param],
                         err: Problems) -> None:
    """Names of models, optimizers, ... exist (imports the torch-side registries)."""
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
