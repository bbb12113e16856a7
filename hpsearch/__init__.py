"""hpsearch: hyperparameter search service on Optuna.

What plugin authors and scripts may import is listed in `__all__` and importable from here
(`from hpsearch import should_stop, Preempted`); everything under the subpackages is internal
and may move between releases. Names load on first use, so `import hpsearch` stays light: a
worker running a user objective never imports torch unless the objective does.

- specs: `load_spec(path)`, `spec_from_dict(raw)`, `StudySpec`, `SpecError`
- a user objective (hpsearch/objective.py): `should_stop()` (True once the worker was asked to
  stop) and `Preempted` (raise it to hand the trial back; it resumes from its checkpoint
  elsewhere), `Divergent` (raise it when the loss blew up)
- registries of the built-in trainer, each a `@REGISTRY.register("name")` decorator and a
  `build`: `MODELS`, `OPTIMIZERS`, `LOSSES`, `SCHEDULES`, `DATASETS` (datasets register with
  `register_dataset(name, options)` and return `Raw`); `reads(*keys)` declares the training
  settings a model or optimizer builder reads. A spec's `plugins: [mypkg.models]` imports such a
  module at create-study and in every worker, so its names work there (README: "Add your own")
- storage for scripts: `open_storage(url)` (None: $HPSEARCH_STORAGE or the embedded default)
- errors: `HpsearchError` (the one user-facing error type), `StudyNotFound`, `StorageUnavailable`
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "load_spec": "hpsearch.spec.loading",
    "spec_from_dict": "hpsearch.spec.parse",
    "StudySpec": "hpsearch.spec.model",
    "SpecError": "hpsearch.spec.model",
    "should_stop": "hpsearch.objective",
    "Preempted": "hpsearch.objective",
    "Divergent": "hpsearch.objective",
    "HpsearchError": "hpsearch.errors",
    "StudyNotFound": "hpsearch.errors",
    "StorageUnavailable": "hpsearch.errors",
    "MODELS": "hpsearch.models",
    "OPTIMIZERS": "hpsearch.training.optim",
    "LOSSES": "hpsearch.training.optim",
    "SCHEDULES": "hpsearch.training.optim",
    "DATASETS": "hpsearch.training.data.registry",
    "register_dataset": "hpsearch.training.data.registry:register",
    "Raw": "hpsearch.training.data.registry",
    "reads": "hpsearch.settings",
    "open_storage": "hpsearch.storage.backend",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")
    module, _, attr = _PUBLIC[name].partition(":")
    value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
