"""A user's own data file: NPZ (arrays) or CSV (a table of features and a label column).

NPZ holds x_train, y_train, x_test, y_test (the file's own test split), or just x and y, in which
case a seeded `test_fraction` is held out as the test split. x is (N, features) for tabular data
or (N, H, W) / (N, C, H, W) / (N, H, W, C) for images. A CSV has a header row; `target` names the
label column (default: `label`, `target` or `class`, else the last column); text feature columns
are one-hot encoded. Labels that are not already 0..K-1 are mapped to class indices in sorted order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.errors import HpsearchError
from hpsearch.training.data.registry import Raw, data_root, register

FORMATS = ("npz", "csv")
TARGET_GUESSES = ("label", "target", "class", "y")
TEST_SPLIT_SEED = 1_000_003  # fixed: changing split_seed reshuffles validation, never the test split


def resolve_path(cfg: dict[str, Any]) -> Path:
    """Relative paths are under the data root, so a spec says `path: tabular.csv` on every node."""
    raw = cfg.get("path")
    if not isinstance(raw, str) or not raw:
        raise HpsearchError(f"dataset 'file' must have path: a .npz or .csv file, but got path={raw!r}")
    path = Path(os.path.expandvars(raw)).expanduser()
    if not path.is_absolute():
        path = data_root(cfg) / path
    if not path.is_file():
        raise HpsearchError(f"dataset 'file' must find {path}, but it does not exist "
                            f"(relative paths are under dataset.root / HPSEARCH_DATA: {data_root(cfg)})")
    return path


@register("file", ("root", "path", "format", "target", "test_fraction"), lambda cfg: [resolve_path(dict(cfg))])
def data_file(cfg: dict[str, Any]) -> Raw:
    path = resolve_path(cfg)
    fmt = cfg.get("format") or path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise HpsearchError(f"dataset.format must be one of {', '.join(FORMATS)}, but got format={fmt!r} "
                            f"(from {path.name}; set dataset.format for other suffixes)")
    x, y, x_test, y_test = (_npz if fmt == "npz" else _csv)(path, cfg)
    if x_test is None or y_test is None:
        x, y, x_test, y_test = _hold_out(x, y, cfg)
    y_all, names = _class_indices(np.concatenate([y, y_test]))
    return Raw(_images_first(x), y_all[: len(y)], _images_first(x_test), y_all[len(y):], names)


def _npz(path: Path, cfg: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            return f["x_train"], f["y_train"], f["x_test"], f["y_test"]
        if {"x", "y"} <= keys:
            return f["x"], f["y"], None, None
    raise HpsearchError(f"dataset 'file': {path.name} must hold x_train, y_train, x_test, y_test (or x, y), "
                        f"but got keys={sorted(keys)}")


def _csv(path: Path, cfg: dict[str, Any]) -> tuple[Any, Any, None, None]:
    import pandas as pd

    table = pd.read_csv(path)
    target = cfg.get("target") or next((c for c in table.columns if str(c).lower() in TARGET_GUESSES),
                                       table.columns[-1])
    if target not in table.columns:
        raise HpsearchError(f"dataset.target must be a column of {path.name}, but got target={target!r}; "
                            f"columns: {', '.join(map(str, table.columns))}")
    features = table.drop(columns=[target])
    empty = [str(c) for c in features.columns if features[c].isna().any()]
    if empty or table[target].isna().any():
        raise HpsearchError(f"dataset 'file': {path.name} must have no missing values, but got some in "
                            f"{', '.join(empty or [str(target)])}")
    features = pd.get_dummies(features, dtype=np.float32)  # text columns become one-hot columns
    return features.to_numpy(np.float32), table[target].to_numpy(), None, None


def _hold_out(x: Any, y: Any, cfg: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """A file without a test split: hold out a seeded test_fraction (never seen by selection)."""
    frac = float(cfg.get("test_fraction", 0.2))
    if not 0 < frac < 1:
        raise HpsearchError(f"dataset.test_fraction must be in (0, 1), but got test_fraction={frac}")
    order = np.random.default_rng(TEST_SPLIT_SEED).permutation(len(x))
    n_test = max(1, int(round(len(x) * frac)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _class_indices(y: np.ndarray) -> tuple[np.ndarray, list[str]]:
    if np.issubdtype(y.dtype, np.integer) and len(y) and y.min() >= 0:
        return y.astype(np.int64), [str(i) for i in range(int(y.max()) + 1)]
    values, index = np.unique(y, return_inverse=True)
    return index.astype(np.int64), [str(v) for v in values]


def _images_first(x: Any) -> np.ndarray:
    """(N, H, W, C) images to (N, C, H, W); uint8 pixels to [0, 1]."""
    x = np.asarray(x)
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if scale != 1.0:
        x /= scale
    return x
