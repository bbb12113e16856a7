"""The fast in-memory data path.

A loader returns the standard train and test splits as numpy arrays; `load()` carves a seeded
validation split from the training part, normalises with training statistics, moves everything
to the training device once and caches it for every later trial of the worker. Batches are then
cut by index from a seeded permutation and augmented as whole batches: no DataLoader, no
per-sample Python (see bench/data_path.py for what that buys).

Loaders and their registry live in registry.py, embedded.py, vision.py and files.py. The split
tensors of file-backed datasets are also kept in a cache the workers of a machine share
(cache.py): a later worker maps them instead of loading again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpsearch.errors import HpsearchError
from hpsearch.training.data import cache
from hpsearch.training.data.registry import DATASETS, Raw, option_problems


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


_CACHE: dict[str, Data] = {}


def load(cfg: dict[str, Any], device: torch.device | str = "cpu") -> Data:
    """Load (once per worker process; mapped from the machine's tensor cache when another worker
    already built it) and split a dataset, resident on `device`."""
    # $HPSEARCH_DATA is part of what the config means when it names no root.
    key = json.dumps(cfg, sort_keys=True, default=str) + f"@{device}@{os.environ.get('HPSEARCH_DATA')}"
    if key in _CACHE:
        return _CACHE[key]
    problems = option_problems(cfg)
    if problems:
        raise HpsearchError(f"dataset.{problems[0][0]}: {problems[0][1]}")
    data = _shared(cfg, device)
    _CACHE[key] = data
    return data


def _read(cfg: dict[str, Any]) -> Raw:
    raw = DATASETS.get(cfg["name"])(cfg)
    if isinstance(raw, Mapping):  # plugins may return a plain dict of the four arrays
        raw = Raw(**raw)
    if not isinstance(raw, Raw):
        raise HpsearchError(f"dataset {cfg['name']!r} must return hpsearch.training.data.registry.Raw, but got {type(raw).__name__}")
    return raw


TENSORS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def _shared(cfg: dict[str, Any], device: torch.device | str) -> Data:
    """The split tensors from the machine's cache, else built and saved there for the next worker."""
    loader = DATASETS.get(cfg["name"])
    code = (Path(__file__), Path(loader.__code__.co_filename)) if hasattr(loader, "__code__") else (Path(__file__),)
    slot = cache.slot(cfg, code)
    if slot is None:
        return split(_read(cfg), cfg, device)
    entry = cache.read(slot, TENSORS)
    if entry is None:
        with cache.exclusive(slot):  # workers that start together: one builds, the others then read
            entry = cache.read(slot, TENSORS)
            if entry is None:
                data = split(_read(cfg), cfg, "cpu")
                entry = _save(cfg, code, slot, data)
                if entry is None:
                    return _on(data, device)
    t = entry["tensors"]
    return Data(name=str(entry["name"]), **{k: t[k].to(device) for k in TENSORS}, n_classes=int(entry["n_classes"]),
                input_shape=tuple(entry["input_shape"]), class_names=[str(c) for c in entry["class_names"]])


def _save(cfg: dict[str, Any], code: tuple[Path, ...], slot: cache.Slot, data: Data) -> dict[str, Any] | None:
    """Save a built dataset and read it back mapped, so this worker's pages are the page cache's
    too, shared like the next workers'; None when it was not saved."""
    # Only if the files did not change while they were read (a download, an unpacked archive, an
    # edit): the key must describe exactly the files these tensors came from.
    if cache.slot(cfg, code) != slot:
        return None
    meta = {"name": data.name, "n_classes": data.n_classes, "input_shape": list(data.input_shape),
            "class_names": data.class_names}
    if cache.write(slot, {k: getattr(data, k) for k in TENSORS}, meta) is None:
        return None
    return cache.read(slot, TENSORS)


def _on(data: Data, device: torch.device | str) -> Data:
    return Data(name=data.name, **{k: getattr(data, k).to(device) for k in TENSORS}, n_classes=data.n_classes,
                input_shape=data.input_shape, class_names=data.class_names)


def split(raw: Raw, cfg: dict[str, Any], device: torch.device | str) -> Data:
    x_train, y_train = _checked(raw.x_train, raw.y_train, "train", cfg)
    x_test, y_test = _checked(raw.x_test, raw.y_test, "test", cfg)
    limit = cfg.get("limit")  # a tiny subset for smoke runs: `dataset: {limit: 512}`
    if limit:
        x_train, y_train = x_train[: int(limit)], y_train[: int(limit)]
        x_test, y_test = x_test[: max(1, int(limit) // 4)], y_test[: max(1, int(limit) // 4)]
    # The validation split is the same for every trial (split_seed, not the trial's seed):
    # configurations are compared on the same held-out data.
    rng = np.random.default_rng(int(cfg.get("split_seed", 0)))
    order = rng.permutation(len(x_train))
    n_val = max(1, int(round(len(x_train) * float(cfg.get("val_fraction", 0.2)))))
    if n_val >= len(x_train):
        raise HpsearchError(f"dataset {cfg['name']!r}: val_fraction must leave training data, but got "
                            f"{len(x_train)} examples and val_fraction={cfg.get('val_fraction')}")
    val_idx, train_idx = order[:n_val], order[n_val:]
    # Fancy indexing copies, so the in-place normalisation below never touches a loader's arrays.
    x_val, y_val = x_train[val_idx], y_train[val_idx]
    x_train, y_train = x_train[train_idx], y_train[train_idx]
    if raw.normalize and cfg.get("normalize", True):
        axes = (0, 2, 3) if x_train.ndim == 4 else (0,)
        mean = x_train.mean(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
        std = (x_train.std(axis=axes, keepdims=True, dtype=np.float64) + 1e-6).astype(np.float32)
        for a in (x_train, x_val):
            a -= mean
            a /= std
        x_test = (x_test - mean) / std
    # The class count is the dataset's, not the largest label seen: a tiny subset of CIFAR-100
    # still has 100 outputs.
    n_classes = int(max(len(raw.class_names), y_train.max() + 1, y_val.max() + 1,
                        y_test.max() + 1 if len(y_test) else 0))
    names = list(raw.class_names) or [str(i) for i in range(n_classes)]

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return Data(
        name=str(cfg["name"]), x_train=t(x_train), y_train=t(y_train), x_val=t(x_val), y_val=t(y_val),
        x_test=t(x_test), y_test=t(y_test), n_classes=n_classes, input_shape=tuple(x_train.shape[1:]),
        class_names=names,
    )


def _checked(x: Any, y: Any, part: str, cfg: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    name = cfg["name"]
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    if x.ndim == 3:  # (N, H, W) grey images
        x = x[:, None]
    if x.ndim not in (2, 4):
        raise HpsearchError(f"dataset {name!r}: x_{part} must be (N, features) or (N, C, H, W), but got "
                            f"shape={x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise HpsearchError(f"dataset {name!r}: y_{part} must be one label per example, but got "
                            f"shape={y.shape} for {len(x)} examples")
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise HpsearchError(f"dataset {name!r}: y_{part} must hold class indices 0..K-1, but got "
                            f"dtype={y.dtype}" + (f", min={y.min()}" if np.issubdtype(y.dtype, np.number) else ""))
    if not np.isfinite(x).all():
        raise HpsearchError(f"dataset {name!r}: x_{part} must be finite, but got NaN or infinite values")
    return x, y.astype(np.int64)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None = None,
            shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Index batches from a seeded permutation, on whatever device the tensors live."""
    n = len(x)
    if not shuffle:  # evaluation: contiguous slices are views, no copy at all
        for i in range(0, n, batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]
        return
    order = torch.randperm(n, generator=generator).to(x.device)
    for i, j in _spans(n, batch_size):
        idx = order[i:j]
        yield x.index_select(0, idx), y.index_select(0, idx)


def stacked_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
                    generators: list[torch.Generator]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """K members' shuffled batches at once, (K, B, ...) and (K, B): row k holds the batch that
    batches(x, y, batch_size, generators[k]) yields, gathered by one index instead of K."""
    n = len(x)
    orders = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(x.device)
    for i, j in _spans(n, batch_size):
        idx = orders[:, i:j].reshape(-1)  # index_select: quicker than advanced indexing on CPU
        yield x.index_select(0, idx).view(len(generators), j - i, *x.shape[1:]), \
            y.index_select(0, idx).view(len(generators), j - i)


def _spans(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    stop = n
    if batch_size > 1 and n > batch_size and n % batch_size == 1:
        stop = n - 1  # a trailing batch of one breaks batch norm; it is reshuffled next epoch
    for i in range(0, stop, batch_size):
        yield i, min(i + batch_size, stop)


def augment(x: torch.Tensor, generator: torch.Generator, mode: bool | str = True) -> torch.Tensor:
    """Per-image random crop (reflect-padded) and/or horizontal flip, done on the whole batch.

    `mode` is the spec's `augment`: true means crop_flip; use `crop` where a mirror image is another
    class (digits, letters).
    """
    if x.ndim != 4 or mode in (False, None, "none"):
        return x
    mode = "crop_flip" if mode is True else str(mode)
    n, c, h, w = x.shape
    dev = x.device
    if "flip" in mode:
        flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if "crop" in mode:
        pad = max(1, min(h, w) // 8)  # 4 px on 32x32, as in the usual CIFAR recipe
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]  # (n, h, 1)
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]  # (n, 1, w)
        # One gather for the batch: every image gets its own offset. Indexing puts the
        # broadcast (n, h, w) first and channels last.
        x = padded[torch.arange(n, device=dev)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    return x.contiguous()
