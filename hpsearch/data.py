"""Dataset registry and the fast in-memory data path.

A loader returns the standard train and test splits as tensors; `load()` carves a seeded
validation split from the training part, normalises with training statistics, moves everything
to the training device once and caches it for every later trial of the worker. Batches are then
cut by index from a seeded permutation: no DataLoader, no per-sample Python.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hpsearch.errors import HpsearchError
from hpsearch.registry import Registry

DATASETS: Registry[Any] = Registry("dataset")


@dataclass
class Raw:
    """What a loader returns: numpy arrays of the standard splits; images as (N, C, H, W)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str] = field(default_factory=list)
    normalize: bool = True


@dataclass
class Data:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str]

    def class_counts(self) -> dict[str, list[int]]:
        def hist(y: torch.Tensor) -> list[int]:
            return torch.bincount(y.cpu(), minlength=self.n_classes).tolist()

        return {"train": hist(self.y_train), "val": hist(self.y_val), "test": hist(self.y_test)}


@DATASETS.register("digits")
def digits(cfg: dict[str, Any]) -> Raw:
    """scikit-learn's 8x8 digits (1,797 images): ships inside the package, no download."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, d.target, test_size=float(cfg.get("test_fraction", 0.2)), random_state=0, stratify=d.target
    )
    return Raw(x_tr, y_tr, x_te, y_te, [str(i) for i in range(10)])


_CACHE: dict[str, Data] = {}


def load(cfg: dict[str, Any], device: torch.device | str = "cpu") -> Data:
    """Load (once per worker process) and split a dataset, resident on `device`."""
    key = json.dumps(cfg, sort_keys=True, default=str) + f"@{device}"
    if key in _CACHE:
        return _CACHE[key]
    raw = DATASETS.get(cfg["name"])(cfg)
    if not isinstance(raw, Raw):
        raise HpsearchError(f"dataset {cfg['name']!r} must return hpsearch.data.Raw, but got {type(raw).__name__}")
    data = split(raw, cfg, device)
    _CACHE[key] = data
    return data


def split(raw: Raw, cfg: dict[str, Any], device: torch.device | str) -> Data:
    x_train = np.asarray(raw.x_train, dtype=np.float32)
    y_train = np.asarray(raw.y_train).astype(np.int64)
    x_test = np.asarray(raw.x_test, dtype=np.float32)
    y_test = np.asarray(raw.y_test).astype(np.int64)
    limit = cfg.get("limit")  # a tiny subset for smoke runs: `dataset: {limit: 512}`
    if limit:
        x_train, y_train = x_train[: int(limit)], y_train[: int(limit)]
        x_test, y_test = x_test[: max(1, int(limit) // 4)], y_test[: max(1, int(limit) // 4)]
    # The validation split is the same for every trial (split_seed, not the trial's seed):
    # configurations are compared on the same held-out data.
    rng = np.random.default_rng(int(cfg.get("split_seed", 0)))
    order = rng.permutation(len(x_train))
    n_val = max(1, int(round(len(x_train) * float(cfg.get("val_fraction", 0.2)))))
    val_idx, train_idx = order[:n_val], order[n_val:]
    x_val, y_val = x_train[val_idx], y_train[val_idx]
    x_train, y_train = x_train[train_idx], y_train[train_idx]
    if raw.normalize and cfg.get("normalize", True):
        axes = (0, 2, 3) if x_train.ndim == 4 else (0,)
        mean = x_train.mean(axis=axes, keepdims=True)
        std = x_train.std(axis=axes, keepdims=True) + 1e-6
        x_train, x_val, x_test = ((a - mean) / std for a in (x_train, x_val, x_test))
    n_classes = int(max(y_train.max(), y_val.max(), y_test.max()) + 1)
    names = raw.class_names or [str(i) for i in range(n_classes)]

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return Data(
        name=str(cfg["name"]), x_train=t(x_train), y_train=t(y_train), x_val=t(x_val), y_val=t(y_val),
        x_test=t(x_test), y_test=t(y_test), n_classes=n_classes, input_shape=tuple(x_train.shape[1:]),
        class_names=names,
    )


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None = None,
            shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Index batches from a seeded permutation, on whatever device the tensors live."""
    n = len(x)
    if shuffle:
        order = torch.randperm(n, generator=generator).to(x.device)
    else:
        order = torch.arange(n, device=x.device)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        yield x.index_select(0, idx), y.index_select(0, idx)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flip and 4-pixel-padded random crop on a whole batch of images (N, C, H, W)."""
    if x.ndim != 4:
        return x
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator).to(x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = max(1, min(h, w) // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx, dy = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
    return padded[:, :, dy : dy + h, dx : dx + w]
