"""Tiny datasets written in the real on-disk formats torchvision reads (and the user-file formats).

IDX (MNIST, Fashion-MNIST): a big-endian header (magic 0x0803 images / 0x0801 labels, then the
sizes) followed by uint8 values. CIFAR: pickled dicts of uint8 rows (1024 red, 1024 green, 1024
blue) with `labels` (CIFAR-10) or `fine_labels`/`coarse_labels` (CIFAR-100), plus a meta pickle.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def _idx(path: Path, array: np.ndarray, gz: bool) -> None:
    magic = 0x0800 | array.ndim  # 0x08: unsigned byte
    blob = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        blob = gzip.compress(blob)
    path.write_bytes(blob)


def write_mnist(root: Path, name: str = "mnist", n_train: int = 64, n_test: int = 16, gz: bool = False,
                seed: int = 0) -> Path:
    """ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] with learnable labels."""
    rng = np.random.default_rng(seed)
    raw = root / MNIST_FOLDERS[name] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):  # a bright stripe whose row is the label
            images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 250
        _idx(raw / f"{prefix}-images-idx3-ubyte", images, gz)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return raw


def _cifar_rows(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    images = rng.integers(0, 80, (len(labels), 3, 32, 32))
    for i, label in enumerate(labels):
        images[i, label % 3, :, (label * 3) % 30 : (label * 3) % 30 + 2] = 255
    return images.reshape(len(labels), 3072).astype(np.uint8)


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the published files are protocol-2 pickles


def write_cifar(root: Path, name: str = "cifar10", n_train: int = 60, n_test: int = 16, seed: int = 0) -> Path:
    """ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} or ROOT/cifar-100-python/{train,test,meta}."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        per = max(1, n_train // 5)
        for b in range(1, 6):
            labels = (np.arange(per) + b) % 10
            _dump(folder / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5",
                                                "labels": labels.tolist(), "data": _cifar_rows(rng, labels),
                                                "filenames": [f"img{b}_{i}.png" for i in range(per)]})
        labels = np.arange(n_test) % 10
        _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": labels.tolist(),
                                       "data": _cifar_rows(rng, labels), "filenames": []})
        _dump(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072,
                                         "num_cases_per_batch": per})
        return folder
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", n_train), ("test", n_test)):
        fine = np.arange(n) % 100
        _dump(folder / part, {"filenames": [], "batch_label": part, "fine_labels": fine.tolist(),
                              "coarse_labels": (fine // 5).tolist(), "data": _cifar_rows(rng, fine)})
    _dump(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                            "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return folder


def write_vision(root: Path, name: str, **kw: int) -> Path:
    return write_cifar(root, name, **kw) if name.startswith("cifar") else write_mnist(root, name, **kw)


def tabular_arrays(n: int = 120, features: int = 6, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: separable enough that one epoch beats chance."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centers = rng.normal(0, 3, (classes, features))
    return (centers[y] + rng.normal(0, 1, (n, features))).astype(np.float32), y


def write_csv(path: Path, n: int = 120, features: int = 6, classes: int = 3, text_labels: bool = False) -> Path:
    x, y = tabular_arrays(n, features, classes)
    labels = [f"kind{v}" for v in y] if text_labels else [str(v) for v in y]
    lines = [",".join([*(f"f{i}" for i in range(features)), "label"])]
    lines += [",".join([*(f"{v:.5f}" for v in row), lab]) for row, lab in zip(x, labels, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_npz(path: Path, images: bool = False, n: int = 96) -> Path:
    """x, y (the loader holds out a test split) for tabular; x_train .. y_test for images (N, H, W, C) uint8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if images:
        rng = np.random.default_rng(1)
        y = np.arange(n) % 4
        x = rng.integers(0, 50, (n, 16, 16, 3)).astype(np.uint8)
        for i, label in enumerate(y):
            x[i, 4 * label : 4 * label + 3] = 255
        np.savez(path, x_train=x[: n * 3 // 4], y_train=y[: n * 3 // 4], x_test=x[n * 3 // 4 :], y_test=y[n * 3 // 4 :])
    else:
        x, y = tabular_arrays(n)
        np.savez(path, x=x, y=y)
    return path
