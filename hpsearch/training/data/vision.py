"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 through torchvision's own dataset classes.

The files are where torchvision keeps them under the data root (dataset.root, $HPSEARCH_DATA or
~/.cache/hpsearch/data): MNIST/raw/train-images-idx3-ubyte ..., cifar-10-batches-py/data_batch_1
.... The published archives (MNIST's .gz files, cifar-*-python.tar.gz) copied there are unpacked.
Missing files are downloaded when the internet is reachable (or `download: true`); otherwise the
error names the files and the directory, so a cluster user knows what to copy where. `verify:
false` loads CIFAR files that do not match the published checksums (a subset, a re-packed copy).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from hpsearch.errors import HpsearchError
from hpsearch.training.data.registry import Raw, Sources, data_root, register

OPTIONS = ("root", "download", "verify")
# Where torchvision's classes keep each dataset under the root, spelled out so that a hit in the
# tensor cache (keyed by these folders' files) never imports torchvision; tests compare them with
# expected_files().
FOLDERS = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py",
           "cifar100": "cifar-100-python"}


def _sources(name: str) -> Sources:
    return lambda cfg: [data_root(cfg) / FOLDERS[name]]


def _classes() -> dict[str, Any]:
    from torchvision import datasets as tvd

    return {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}


def _is_mnist_family(cls: type) -> bool:
    from torchvision.datasets import MNIST

    return issubclass(cls, MNIST)


def expected_files(cls: type, root: Path) -> tuple[Path, list[str]]:
    """The directory torchvision reads and the files it needs there (from the class itself)."""
    if _is_mnist_family(cls):
        return root / cls.__name__ / "raw", [os.path.splitext(f)[0] for f, _ in cls.resources]  # type: ignore[attr-defined]
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]  # type: ignore[attr-defined]
    return root / cls.base_folder, files  # type: ignore[attr-defined]


def _download_url(cls: type) -> str:
    return cls.mirrors[0] if _is_mnist_family(cls) else cls.url  # type: ignore[attr-defined]


def _online(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    try:
        port = parsed.port or (80 if parsed.scheme == "http" else 443)
        socket.create_connection((parsed.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _gunzip_missing(folder: Path, files: list[str]) -> None:
    """The MNIST family is often copied as the original .gz files: unpack them next to themselves."""
    for name in files:
        target, packed = folder / name, folder / f"{name}.gz"
        if not target.is_file() and packed.is_file():
            tmp = target.with_suffix(f".{os.getpid()}.tmp")  # workers on one node may race here
            with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)


@contextlib.contextmanager
def _download_lock(root: Path) -> Iterator[None]:
    """One download per node, however many workers start at once on a fresh data root."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".hpsearch-download.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fetch(name: str, cls: type, root: Path, cfg: dict[str, Any]) -> None:
    folder, files = expected_files(cls, root)
    missing = [f for f in files if not (folder / f).is_file()]
    archive = root / getattr(cls, "filename", "")
    if missing and not _is_mnist_family(cls) and archive.is_file():
        # The published archive, copied by hand: unpack it where torchvision looks.
        from torchvision.datasets.utils import extract_archive

        with _download_lock(root):
            extract_archive(str(archive), str(root))
        missing = [f for f in files if not (folder / f).is_file()]
    if not missing:
        return
    mode = cfg.get("download", "auto")
    url = _download_url(cls)
    why = ""
    if mode is False:
        why = "downloading is off (dataset.download: false)"
    elif mode != "auto" and mode is not True:
        raise HpsearchError(f"dataset.download must be true, false or auto, but got download={mode!r}")
    elif mode == "auto" and not _online(url):
        why = f"{urlparse(url).hostname} is not reachable to download them"
    else:
        try:
            with _download_lock(root):
                cls(str(root), train=True, download=True)
        except Exception as exc:  # noqa: BLE001 - any download failure becomes the same clear message
            why = f"the download failed ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
    if why:
        raise HpsearchError(
            f"dataset {name!r} must find {', '.join(missing)} in {folder}, but they are missing and {why}; "
            "copy the files there or point dataset.root / HPSEARCH_DATA at where they are"
        )


def _unverified(cls: type) -> type:
    """The same class with its md5 checks off: for subsets or re-packed copies of CIFAR."""
    if _is_mnist_family(cls):
        return cls  # torchvision does not checksum the unpacked MNIST files anyway
    attrs = {
        "train_list": [[f, None] for f, _ in cls.train_list],  # type: ignore[attr-defined]
        "test_list": [[f, None] for f, _ in cls.test_list],  # type: ignore[attr-defined]
        "meta": {**cls.meta, "md5": None},  # type: ignore[attr-defined]
    }
    return type(cls.__name__, (cls,), attrs)


def _to_images(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """torchvision keeps MNIST as a uint8 (N, H, W) tensor and CIFAR as a uint8 (N, H, W, C) array."""
    data = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
    if data.ndim == 3:
        x = data[:, None].astype(np.float32)
    else:
        x = np.ascontiguousarray(data.transpose(0, 3, 1, 2), dtype=np.float32)
    x /= 255.0
    targets = ds.targets.numpy() if hasattr(ds.targets, "numpy") else np.asarray(ds.targets)
    return x, targets.astype(np.int64)


def load_torchvision(name: str, cfg: dict[str, Any]) -> Raw:
    cls = _classes()[name]
    root = data_root(cfg)
    folder, files = expected_files(cls, root)
    if _is_mnist_family(cls):
        _gunzip_missing(folder, files)
    _fetch(name, cls, root, cfg)
    verified = bool(cfg.get("verify", True)) and not _is_mnist_family(cls)
    reader = cls if cfg.get("verify", True) else _unverified(cls)
    try:
        train = reader(str(root), train=True, download=False)
        test = reader(str(root), train=False, download=False)
    except Exception as exc:  # noqa: BLE001 - a checksum mismatch, a truncated or foreign file
        if verified and isinstance(exc, RuntimeError):  # torchvision's "not found or corrupted"
            raise HpsearchError(
                f"dataset {name!r}: the files in {folder} must match torchvision's published checksums, but "
                "they do not; a subset or re-packed copy loads with dataset.verify: false") from None
        raise HpsearchError(f"dataset {name!r}: the files in {folder} must be in torchvision's format, "
                            f"but reading them failed: {type(exc).__name__}: {exc}") from None
    x_train, y_train = _to_images(train)
    x_test, y_test = _to_images(test)
    return Raw(x_train, y_train, x_test, y_test, [str(c) for c in train.classes])


@register("mnist", OPTIONS, _sources("mnist"))
def mnist(cfg: dict[str, Any]) -> Raw:
    """MNIST: 60,000 + 10,000 grey 28x28 digits (files under ROOT/MNIST/raw)."""
    return load_torchvision("mnist", cfg)


@register("fashion_mnist", OPTIONS, _sources("fashion_mnist"))
def fashion_mnist(cfg: dict[str, Any]) -> Raw:
    """Fashion-MNIST: 60,000 + 10,000 grey 28x28 clothes (files under ROOT/FashionMNIST/raw)."""
    return load_torchvision("fashion_mnist", cfg)


@register("cifar10", OPTIONS, _sources("cifar10"))
def cifar10(cfg: dict[str, Any]) -> Raw:
    """CIFAR-10: 50,000 + 10,000 colour 32x32 images, 10 classes (ROOT/cifar-10-batches-py)."""
    return load_torchvision("cifar10", cfg)


@register("cifar100", OPTIONS, _sources("cifar100"))
def cifar100(cfg: dict[str, Any]) -> Raw:
    """CIFAR-100: 50,000 + 10,000 colour 32x32 images, 100 fine classes (ROOT/cifar-100-python)."""
    return load_torchvision("cifar100", cfg)
