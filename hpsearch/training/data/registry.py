"""The dataset registry: `@register(name, options)`, what a loader returns (Raw), where data lives.

The built-in loaders register on import of the package: embedded.py (scikit-learn's digits),
vision.py (torchvision's MNIST/CIFAR classes) and files.py (a user's NPZ/CSV file); a user loader
is reachable as `package.module:function`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.registry import Registry

DATASETS: Registry[Any] = Registry("dataset")

# Options every dataset understands; a loader declares its own on registration.
COMMON_OPTIONS = {"name", "val_fraction", "split_seed", "limit", "normalize"}
DATASET_OPTIONS: dict[str, set[str]] = {}
AUGMENTATIONS = ("crop_flip", "crop", "flip", "none")
# The files or folders a loader reads, for the loaders whose split tensors the machine's cache
# (cache.py) may keep: their sizes and mtimes key it. A loader without them is never cached (a
# plugin's sources cannot be known).
Sources = Callable[[Mapping[str, Any]], list[Path]]
DATASET_SOURCES: dict[str, Sources] = {}


def register(name: str, options: tuple[str, ...] = (), sources: Sources | None = None) -> Callable[[Any], Any]:
    """`@register("mnist", ("root", ...), sources)`: a loader, the dataset: keys it reads besides the
    common ones and, to be cached, where its files are."""
    DATASET_OPTIONS[name] = COMMON_OPTIONS | set(options)
    if sources is not None:
        DATASET_SOURCES[name] = sources
    return DATASETS.register(name)


@dataclass
class Raw:
    """What a loader returns: numpy arrays of the standard splits; images as (N, C, H, W)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str] = field(default_factory=list)
    normalize: bool = True



def data_root(cfg: Mapping[str, Any]) -> Path:
    """dataset.root, else $HPSEARCH_DATA, else ~/.cache/hpsearch/data (the same on every node)."""
    root = cfg.get("root") or os.environ.get("HPSEARCH_DATA") or "~/.cache/hpsearch/data"
    return Path(os.path.expandvars(str(root))).expanduser()


def option_problems(cfg: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, message) for each dataset: key a built-in loader does not read (plugins take any)."""
    from hpsearch.registry import unknown_name_message

    known = DATASET_OPTIONS.get(str(cfg.get("name")))
    if known is None:
        return []
    return [(str(k), unknown_name_message(f"dataset {cfg['name']!r} option", k, known).replace(
        "is not registered", "is not known")) for k in cfg if k not in known]
