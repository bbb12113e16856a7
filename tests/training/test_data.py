"""Datasets: torchvision's own classes on tiny files in the real formats, user files, plugins, the fast path."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
from hpsearch.errors import HpsearchError
from hpsearch.training.data import loading as data
from hpsearch.training.data import registry

sys.path.insert(0, str(ROOT / "tests" / "plugins"))
from hps_catalogue_formats import write_csv, write_npz, write_vision  # noqa: E402

VISION = {"mnist": (1, 28, 28, 10), "fashion_mnist": (1, 28, 28, 10), "cifar10": (3, 32, 32, 10),
          "cifar100": (3, 32, 32, 100)}


def _cfg(name: str, root: Path, **over: object) -> dict:
    cfg = {"name": name, "root": str(root), "val_fraction": 0.2}
    if name.startswith("cifar"):
        cfg["verify"] = False  # tiny files cannot match the published checksums
    return {**cfg, **over}


@pytest.mark.parametrize("name", sorted(VISION))
def test_torchvision_dataset_loads_from_its_real_format(tmp_path: Path, name: str) -> None:
    write_vision(tmp_path, name, n_train=60, n_test=16)
    d = data.load(_cfg(name, tmp_path))
    c, h, w, classes = VISION[name]
    assert d.input_shape == (c, h, w) and d.n_classes == classes
    assert len(d.x_train) + len(d.x_val) == 60 and len(d.x_val) == 12 and len(d.x_test) == 16
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert len(d.class_names) == classes
    # Normalised with training statistics, per channel.
    assert d.x_train.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert data.load(_cfg(name, tmp_path)) is d  # loaded once per worker, reused by later trials


def test_mnist_family_reads_the_original_gz_files(tmp_path: Path) -> None:
    raw = write_vision(tmp_path, "fashion_mnist", gz=True)
    d = data.load(_cfg("fashion_mnist", tmp_path))
    assert (raw / "train-images-idx3-ubyte").is_file() and d.class_names[0] == "T-shirt/top"


def test_cifar_archive_copied_by_hand_is_unpacked(tmp_path: Path) -> None:
    folder = write_vision(tmp_path / "src", "cifar10")
    (tmp_path / "root").mkdir()
    with tarfile.open(tmp_path / "root" / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    d = data.load(_cfg("cifar10", tmp_path / "root", download=False))
    assert d.input_shape == (3, 32, 32) and (tmp_path / "root" / "cifar-10-batches-py" / "test_batch").is_file()


def test_validation_split_is_seeded_and_separate_from_test(tmp_path: Path) -> None:
    write_vision(tmp_path, "mnist", n_train=60)
    a = data.load(_cfg("mnist", tmp_path, split_seed=1))
    b = data.split(registry.DATASETS.get("mnist")(_cfg("mnist", tmp_path)), _cfg("mnist", tmp_path, split_seed=1), "cpu")
    c = data.load(_cfg("mnist", tmp_path, split_seed=2))
    assert torch.equal(a.y_val, b.y_val) and torch.equal(a.x_val, b.x_val)
    assert not torch.equal(a.x_val, c.x_val)


def test_missing_files_name_the_files_and_the_directory(tmp_path: Path) -> None:
    with pytest.raises(HpsearchError) as exc:
        data.load({"name": "cifar100", "root": str(tmp_path / "empty"), "download": False})
    msg = str(exc.value)
    assert "train, test, meta" in msg and str(tmp_path / "empty" / "cifar-100-python") in msg
    assert "\n" not in msg and "dataset.root" in msg


def test_data_root_comes_from_hpsearch_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPSEARCH_DATA", str(tmp_path))
    write_vision(tmp_path, "mnist")
    assert registry.data_root({}) == tmp_path
    assert data.load({"name": "mnist", "val_fraction": 0.25}).input_shape == (1, 28, 28)


def test_cifar_checksums_are_verified_unless_turned_off(tmp_path: Path) -> None:
    write_vision(tmp_path, "cifar10")
    with pytest.raises(HpsearchError, match="must match torchvision's published checksums.*verify: false"):
        data.load({"name": "cifar10", "root": str(tmp_path)})


def test_a_truncated_idx_file_is_a_clear_error(tmp_path: Path) -> None:
    raw = write_vision(tmp_path, "mnist")
    blob = (raw / "train-images-idx3-ubyte").read_bytes()
    (raw / "train-images-idx3-ubyte").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(HpsearchError, match=r"dataset 'mnist': the files in .*MNIST/raw must be in torchvision's "
                                            r"format, but reading them failed"):
        data.load(_cfg("mnist", tmp_path))


def test_unknown_dataset_option_suggests_the_right_one(tmp_path: Path) -> None:
    with pytest.raises(HpsearchError, match=r"dataset.roots: dataset 'mnist' option 'roots' is not known.*did you mean 'root'"):
        data.load({"name": "mnist", "roots": str(tmp_path)})


@pytest.mark.parametrize("text_labels", [False, True])
def test_csv_file_with_label_column(tmp_path: Path, text_labels: bool) -> None:
    write_csv(tmp_path / "t.csv", n=100, text_labels=text_labels)
    d = data.load({"name": "file", "root": str(tmp_path), "path": "t.csv", "val_fraction": 0.25})
    assert d.input_shape == (6,) and d.n_classes == 3
    assert len(d.x_test) == 20 and len(d.x_val) == 20 and len(d.x_train) == 60
    assert d.class_names == (["kind0", "kind1", "kind2"] if text_labels else ["0", "1", "2"])


def test_npz_images_channels_last_become_channels_first(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "img.npz", images=True, n=96)
    d = data.load({"name": "file", "path": str(path), "val_fraction": 0.2})
    assert d.input_shape == (3, 16, 16) and d.n_classes == 4 and len(d.x_test) == 24


def test_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(HpsearchError, match="must find .*nope.csv, but it does not exist"):
        data.load({"name": "file", "root": str(tmp_path), "path": "nope.csv"})
    (tmp_path / "x.txt").write_text("a,b\n1,2\n")
    with pytest.raises(HpsearchError, match="format must be one of npz, csv, but got format='txt'"):
        data.load({"name": "file", "path": str(tmp_path / "x.txt")})
    np.savez(tmp_path / "bad.npz", features=np.zeros((4, 2)))
    with pytest.raises(HpsearchError, match=r"must hold x_train, y_train, x_test, y_test \(or x, y\)"):
        data.load({"name": "file", "path": str(tmp_path / "bad.npz")})


def test_plugin_dataset_returning_a_dict() -> None:
    d = data.load({"name": "hps_catalogue_plugins:blobs", "n": 80, "val_fraction": 0.25})
    assert d.input_shape == (5,) and d.n_classes == 2 and len(d.x_test) == 20


def test_plugin_dataset_with_bad_labels_is_refused() -> None:
    raw = registry.Raw(np.zeros((4, 2)), np.array([0.5, 1, 0, 1]), np.zeros((2, 2)), np.array([0, 1]))
    with pytest.raises(HpsearchError, match="y_train must hold class indices 0..K-1, but got dtype=float64"):
        data.split(raw, {"name": "mine"}, "cpu")


def test_batches_cover_every_example_in_a_seeded_order() -> None:
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    order = [yb.tolist() for _, yb in data.batches(x, y, 4, torch.Generator().manual_seed(3))]
    again = [yb.tolist() for _, yb in data.batches(x, y, 4, torch.Generator().manual_seed(3))]
    assert order == again and sorted(sum(order, [])) == list(range(10)) and [len(b) for b in order] == [4, 4, 2]
    assert [yb.tolist() for _, yb in data.batches(x, y, 4, shuffle=False)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # A trailing batch of one would break batch norm: it is left out of that epoch.
    assert [len(yb) for _, yb in data.batches(x[:9], y[:9], 4, torch.Generator().manual_seed(0))] == [4, 4]


@pytest.mark.parametrize("n", [10, 9, 3])
def test_stacked_batches_are_each_members_own_batches(n: int) -> None:
    """A fused group gathers K members' batches at once; row k is what member k alone would get."""
    x, y = torch.randn(n, 1, 2, 2), torch.arange(n)
    seeds = [3, 4, 3, 11]
    alone = [list(data.batches(x, y, 4, torch.Generator().manual_seed(s))) for s in seeds]
    stacked = list(data.stacked_batches(x, y, 4, [torch.Generator().manual_seed(s) for s in seeds]))
    assert len(stacked) == len(alone[0])
    for step, (xs, ys) in enumerate(stacked):
        assert xs.shape == (len(seeds), *alone[0][step][0].shape)
        for k in range(len(seeds)):
            assert torch.equal(xs[k], alone[k][step][0]) and torch.equal(ys[k], alone[k][step][1])


def test_augment_crops_each_image_on_its_own_and_keeps_shapes() -> None:
    x = torch.randn(64, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    out = data.augment(x, gen, "crop")
    assert out.shape == x.shape and torch.isfinite(out).all()
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    offsets = {next((dy, dx) for dy in range(9) for dx in range(9)
                    if torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32])) for i in range(64)}
    assert len(offsets) > 10  # every image gets its own offset, not one per batch
    flipped = data.augment(x, torch.Generator().manual_seed(0), "flip")
    assert all(torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2)) for i in range(64))
    assert torch.equal(data.augment(x, gen, False), x) and torch.equal(data.augment(x[:, 0, 0], gen), x[:, 0, 0])
    a = data.augment(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, data.augment(x, torch.Generator().manual_seed(5)))
