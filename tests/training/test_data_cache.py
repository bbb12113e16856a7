"""The tensor cache the workers of a machine share: real IDX files, real fresh processes, real files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT
from hpsearch.training.data import cache, vision
from hpsearch.training.data import loading as data

sys.path.insert(0, str(ROOT / "tests" / "plugins"))
from hps_catalogue_formats import write_mnist, write_npz  # noqa: E402

CFG = {"name": "mnist", "val_fraction": 0.25}

# A worker's first step in a fresh process: what it loaded (hashed), and what that cost it.
WORKER = """
import hashlib, json, sys
from hpsearch.training.data import loading
d = loading.load({"name": "mnist", "val_fraction": 0.25})
print(json.dumps({
    "tensors": {k: [hashlib.sha256(getattr(d, k).numpy().tobytes()).hexdigest(), list(getattr(d, k).shape),
                    str(getattr(d, k).dtype)] for k in loading.TENSORS},
    "meta": [d.name, d.n_classes, list(d.input_shape), d.class_names],
    "torchvision": "torchvision" in sys.modules,
    "mapped": ".hpsearch-cache/" in open("/proc/self/maps").read(),
}))
"""


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny MNIST files under $HPSEARCH_DATA, a private HOME (the fallback directory) and a fresh
    in-process dataset memo, so every load here goes through the machine's cache."""
    monkeypatch.setenv("HPSEARCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(cache.ENV_DIR, raising=False)
    monkeypatch.delenv(cache.ENV_MAX_GB, raising=False)
    monkeypatch.setattr(data, "_CACHE", {})
    write_mnist(tmp_path / "data", n_train=64, n_test=16)
    return tmp_path / "data"


def _entries(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs if d.is_dir() for p in d.iterdir() if p.suffix in (".pt", ".tmp"))


def _digest(d: data.Data) -> dict[str, Any]:
    return {"tensors": {k: [hashlib.sha256(getattr(d, k).numpy().tobytes()).hexdigest(), list(getattr(d, k).shape),
                            str(getattr(d, k).dtype)] for k in data.TENSORS},
            "meta": [d.name, d.n_classes, list(d.input_shape), d.class_names]}


def _uncached(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What loading computes without any cache: the reference every cached load must equal bitwise."""
    with monkeypatch.context() as m:
        m.setenv(cache.ENV_DIR, "off")
        m.setattr(data, "_CACHE", {})
        return _digest(data.load(dict(CFG)))


def _fresh_load(*, wait: bool = True) -> Any:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HPSEARCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WORKER], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return _result(proc) if wait else proc


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_later_workers_map_the_first_ones_tensors_without_importing_torchvision(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = _uncached(monkeypatch)
    # Two workers starting together: one builds, the other waits for its file (or builds the same).
    first = [_fresh_load(wait=False) for _ in range(2)]
    cold = [_result(p) for p in first]
    warm = _fresh_load()
    for got in (*cold, warm):
        assert {"tensors": got["tensors"], "meta": got["meta"]} == want
    assert warm["torchvision"] is False and warm["mapped"] is True
    assert [p.suffix for p in _entries(root / ".hpsearch-cache")] == [".pt"]  # one entry, no temp left


def test_a_builder_killed_mid_build_holds_no_worker_up(root: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    builder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom hpsearch.training.data import loading\n"
         "loading._read = lambda cfg: print('building', flush=True) or time.sleep(600)\n"
         f"loading.load({CFG!r})"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert builder.stdout is not None and builder.stdout.readline().strip() == "building"  # it holds the lock
    builder.kill()  # kill -9: no cleanup runs, the kernel drops its lock
    builder.wait()
    monkeypatch.setattr(cache, "LOCK_WAIT_S", 120.0)
    with caplog.at_level("DEBUG", logger=cache.__name__):
        assert _digest(data.load(dict(CFG))) == _uncached(monkeypatch)
    assert "still locked" not in caplog.text and len(_entries(root / ".hpsearch-cache")) == 1


def test_without_sources_or_with_the_cache_off_nothing_is_written(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from hpsearch.training.data.registry import Raw, register

    @register("hps_test_no_sources")  # a loader that names no files (a plugin's): never cached
    def no_sources(cfg: dict[str, Any]) -> Raw:
        rng = np.random.default_rng(0)
        return Raw(rng.random((40, 4), dtype=np.float32), np.arange(40) % 2, rng.random((10, 4), dtype=np.float32),
                   np.arange(10) % 2, ["a", "b"])

    data.load({"name": "hps_test_no_sources", "val_fraction": 0.2})
    monkeypatch.setenv(cache.ENV_DIR, "off")
    data.load(dict(CFG))
    assert _entries(root / ".hpsearch-cache", root.parent / "home" / ".cache" / "hpsearch" / "tensors") == []


def test_a_user_file_is_cached_next_to_the_data(root: Path) -> None:
    write_npz(root / "img.npz", images=True, n=96)
    a = data.load({"name": "file", "path": "img.npz", "val_fraction": 0.2})
    assert len(_entries(root / ".hpsearch-cache")) == 1 and a.input_shape == (3, 16, 16)


def test_a_changed_source_file_is_a_new_entry(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _digest(data.load(dict(CFG)))
    write_mnist(root, n_train=64, n_test=16, seed=1)  # same sizes, other pixels
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    os.utime(images, ns=(images.stat().st_atime_ns, images.stat().st_mtime_ns + 1_000_000))
    monkeypatch.setattr(data, "_CACHE", {})
    after = _digest(data.load(dict(CFG)))
    assert after != before and after == _uncached(monkeypatch)
    assert len(_entries(root / ".hpsearch-cache")) == 2


def test_a_different_option_is_a_different_entry(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = data.load(dict(CFG))
    b = data.load({**CFG, "val_fraction": 0.5})
    assert len(a.x_val) == 16 and len(b.x_val) == 32
    assert len(_entries(root / ".hpsearch-cache")) == 2


def test_a_truncated_entry_or_a_dead_writers_temp_file_is_rebuilt(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = _digest(data.load(dict(CFG)))
    [entry] = _entries(root / ".hpsearch-cache")
    size = entry.stat().st_size
    # Truncated as a copy is, into a new file: truncating the mapped file in place would pull the
    # pages from under this process's own tensors.
    blob = entry.read_bytes()
    entry.unlink()
    entry.write_bytes(blob[: size // 2])
    # A writer killed by kill -9 leaves only its temporary file.
    dead = entry.with_name(f"{entry.stem}.999999.deadbeef.tmp")
    dead.write_bytes(blob[: size // 3])
    os.utime(dead, (time.time() - 2 * cache.STALE_TEMP_S,) * 2)
    monkeypatch.setattr(data, "_CACHE", {})
    assert _digest(data.load(dict(CFG))) == want
    assert entry.stat().st_size == size and not dead.exists()
    monkeypatch.setattr(data, "_CACHE", {})
    assert _digest(data.load(dict(CFG))) == want  # and the rebuilt entry reads back


def test_an_unwritable_cache_directory_falls_back_then_gives_up(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = root.parent / "not-a-dir"
    blocker.write_text("a file where the cache directory would be")
    monkeypatch.setenv(cache.ENV_DIR, str(blocker / "cache"))
    want = _digest(data.load(dict(CFG)))
    fallback = root.parent / "home" / ".cache" / "hpsearch" / "tensors"
    assert len(_entries(fallback)) == 1
    monkeypatch.setattr(data, "_CACHE", {})
    assert _digest(data.load(dict(CFG))) == want  # read back from the fallback
    # Nowhere to write at all: loaded as before, no error.
    monkeypatch.setenv("HOME", str(blocker))
    monkeypatch.setattr(data, "_CACHE", {})
    assert _digest(data.load({**CFG, "split_seed": 3}))["meta"] == want["meta"]
    assert len(_entries(fallback)) == 1


def test_a_dataset_above_the_cap_is_not_cached(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.ENV_MAX_GB, "0.00001")  # ~10 kB, below the tiny MNIST's 260 kB
    data.load(dict(CFG))
    assert _entries(root / ".hpsearch-cache") == []


def test_eviction_keeps_the_newest_entries_within_the_cap(tmp_path: Path) -> None:
    for i, name in enumerate(("old", "mid", "new")):
        (tmp_path / f"{name}.pt").write_bytes(b"x" * 100)
        os.utime(tmp_path / f"{name}.pt", (1000 + i,) * 2)
    cache.evict(tmp_path, keep="old.pt", limit=250)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.pt", "old.pt"]


def test_mapped_tensors_stay_private_to_their_process(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = _digest(data.load(dict(CFG)))
    data.load(dict(CFG)).x_train.add_(1.0)  # a careless in-place write reaches neither the file nor the next worker
    monkeypatch.setattr(data, "_CACHE", {})
    assert _digest(data.load(dict(CFG))) == want


@pytest.mark.parametrize("name", sorted(vision.FOLDERS))
def test_cache_keys_watch_the_folders_torchvision_reads(tmp_path: Path, name: str) -> None:
    cls = vision._classes()[name]
    assert vision.expected_files(cls, tmp_path)[0] == tmp_path / vision.FOLDERS[name]



def test_the_embedded_digits_are_cached_and_a_later_worker_does_not_import_scikit_learn(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing scikit-learn (SciPy, pandas) to read digits cost each worker as much as torch."""
    digits = WORKER.replace('"name": "mnist", "val_fraction": 0.25', '"name": "digits", "val_fraction": 0.2') \
                   .replace('"torchvision" in sys.modules', '"sklearn" in sys.modules')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HPSEARCH_THREADS": "1", "OMP_NUM_THREADS": "1"}

    def fresh() -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-c", digits], env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=300, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    first, second = fresh(), fresh()
    assert first["torchvision"]  # (the key holds "sklearn" in sys.modules) the first builds the entry ...
    assert not second["torchvision"] and second["mapped"]  # ... a later one maps it, never importing it
    with monkeypatch.context() as m:  # and equal, bitwise, to what loading computes without any cache
        m.setenv(cache.ENV_DIR, "off")
        m.setattr(data, "_CACHE", {})
        reference = _digest(data.load({"name": "digits", "val_fraction": 0.2}))
    assert {k: second[k] for k in ("tensors", "meta")} == reference == {k: first[k] for k in ("tensors", "meta")}
