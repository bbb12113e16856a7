"""The catalogue of what a spec can name, and its checks across the torch-side registries.

`catalogue()` lists every registered name by kind (`hpsearch catalog` prints it).

`name_checks()` maps a training key to a check of one fixed value or one choice: registry names
(model, optimizer, ...), flags and paths, so `model: resnt` fails at create-study with the field's
path instead of in the first trial on a GPU node. Numbers are checked against settings.ACCEPTS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hpsearch.registry import unknown_name_message
from hpsearch.settings import CHOICES

Check = Callable[[object], str | None]


def _fixed(kind: str, names: tuple[str, ...] | list[str]) -> Check:
    def check(name: object) -> str | None:
        return None if name in names else unknown_name_message(kind, name, names)

    return check


def _bool(key: str) -> Check:
    return lambda v: None if isinstance(v, bool) else f"must be true or false, but got {key}={v!r}"


def _augment(value: object) -> str | None:
    from hpsearch.training.data.registry import AUGMENTATIONS

    if isinstance(value, bool) or value in AUGMENTATIONS:
        return None
    return f"must be true, false or one of {', '.join(AUGMENTATIONS)}, but got augment={value!r}"


def _path_or_none(value: object) -> str | None:
    return None if value is None or isinstance(value, str) else f"must be a file path, but got weights={value!r}"


def _value_checks() -> dict[str, Check]:
    # Numbers (lr, dropout, widths, ...) are checked against settings.ACCEPTS by spec validation.
    return {"batch_norm": _bool("batch_norm"), "augment": _augment, "weights": _path_or_none}


# The built-in names of the torch-side registries (hpsearch.models, hpsearch.training.optim), so a
# create-study whose spec names only these does not import torch to check them (2.6 of its 3.9 s
# here). A name that is not one of them is checked against the registry itself (a plugin's, a
# package.module:function). tests/spec/test_spec.py holds these equal to the registries' own.
BUILTIN: dict[str, tuple[str, ...]] = {
    "model": ("cnn", "dense", "resnet18", "tabular"),
    "optimizer": ("adam", "adamw", "momentum", "nadam", "nag", "rmsprop", "sgd"),
    "loss": ("cross_entropy", "mean_squared_error"),
    "schedule": ("cosine", "none", "step"),
    "activation": ("gelu", "identity", "leaky_relu", "relu", "sigmoid", "tanh"),
}


def registries() -> dict[str, Check]:
    """The torch-side registries' own checks, by training key (imports torch)."""
    from hpsearch import models
    from hpsearch.training import optim

    return {"model": models.MODELS.check, "optimizer": optim.OPTIMIZERS.check, "loss": optim.LOSSES.check,
            "schedule": optim.SCHEDULES.check, "activation": _fixed("activation", list(models.ACTIVATIONS))}


def _builtin_or_registry(key: str) -> Check:
    def check(name: object) -> str | None:
        return None if name in BUILTIN[key] else registries()[key](name)

    return check


def name_checks() -> dict[str, Check]:
    """key -> check of one fixed value or choice; "dataset" checks the dataset's name."""
    from hpsearch.training.data import registry as data

    return {
        **_value_checks(),
        **{key: _builtin_or_registry(key) for key in BUILTIN},
        **{key: _fixed(key, names) for key, names in CHOICES.items()},  # init, mode, stem
        "dataset": data.DATASETS.check,
    }


def dataset_problems(dataset: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field path, message) for dataset: keys its built-in loader does not read."""
    from hpsearch.training.data import registry as data

    return [(f"dataset.{key}", msg) for key, msg in data.option_problems(dataset)]


def catalogue() -> dict[str, list[str]]:
    """Every name a spec can give, by kind (imports torch); plugins imported before are included.

    Models, optimizers and datasets also take a user's `package.module:function` (PLUGGABLE)."""
    from hpsearch import models
    from hpsearch.search.samplers import PRUNERS, SAMPLERS
    from hpsearch.training import optim
    from hpsearch.training.data import registry as data

    return {
        "models": models.MODELS.names(), "optimizers": optim.OPTIMIZERS.names(), "datasets": data.DATASETS.names(),
        "losses": optim.LOSSES.names(), "schedules": optim.SCHEDULES.names(),
        "activations": sorted(models.ACTIVATIONS), "samplers": sorted(SAMPLERS), "pruners": sorted(PRUNERS),
    }


PLUGGABLE = ("models", "optimizers", "datasets")  # kinds whose registry takes package.module:function
