"""Epoch time of the in-memory index-batched data path against a plain DataLoader loop, MNIST-sized.

    .venv/bin/python bench/data_path.py [--device auto] [--batch-size 64] [--segment 25] [--models dense cnn]

Both loops train the same models with the same step (zero_grad, forward, loss, backward, step,
plus the trainer's per-step loss/accuracy bookkeeping) over the same 60,000 28x28 images, written
as IDX files and read by torchvision's own MNIST class:
  - dataloader: torchvision.datasets.MNIST with ToTensor + Normalize, a shuffling
    torch.utils.data.DataLoader (num_workers 0, as the seed scripts ran it), batches moved to the device;
  - hpsearch: hpsearch.training.data.loading.load (once, tensors resident on the device) and hpsearch.training.data.loading.batches
    (a seeded permutation, index_select per batch).
Models: the dense MLP of studies/mnist-grid.yaml (input handling dominates) and its small CNN
(compute dominates on a CPU). The two paths train in turns of --segment batches through one
epoch each, so load from other processes on a shared machine hits both alike; the epoch time is
the median time per batch over the turns x the batches of an epoch. Printed: each path's epoch
time, the ratio measured in the same run, and the share of the epoch spent outside
forward/backward/step (fetching, collating, copying, bookkeeping).

What to expect on a GPU: forward/backward/step of these models takes well under a millisecond
per batch there, so the DataLoader loop runs at the speed of its per-sample Python (PIL image,
ToTensor, Normalize, collate, a host-to-device copy per batch) and the GPU mostly waits: the share
outside compute approaches 90% and the ratio grows beyond the CPU's for the MLP, and the CNN, no
longer compute-bound, gains several-fold too. The in-memory path has no per-sample work and no
copies, so its epoch is GPU-bound (its remaining overhead is the trainer's per-step .item() syncs).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpsearch import settings as config  # noqa: E402
from hpsearch.models import build_model  # noqa: E402
from hpsearch.training.data import loading as data  # noqa: E402

MODELS = {
    "dense": ("dense MLP 784-256-128-10", {"model": "dense", "widths": [256, 128]}),
    "cnn": ("CNN 32-64 conv, 128 fc", {"model": "cnn", "filters": [32, 64], "fc_sizes": [128]}),
}


def write_mnist_sized(root: Path, n_train: int = 60_000, n_test: int = 10_000) -> None:
    """IDX files as MNIST ships them (uncompressed), with noisy digit-like stripes."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28), dtype=np.uint8)
        for k in range(10):
            images[labels == k, 2 + 2 * k : 4 + 2 * k, 4:24] = 250
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x0803, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x0801, n) + labels.tobytes())


def sync(device: torch.device) -> None:
    """On CUDA, wait for queued kernels so that time lands where the work is."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def segment(model: nn.Module, opt: torch.optim.Optimizer, batches: Iterator[Any], n: int,
            device: torch.device) -> tuple[float, float, int]:
    """Up to n training steps from `batches`: (seconds, seconds inside forward/backward/step, steps)."""
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    compute, steps = 0.0, 0
    sync(device)
    start = time.perf_counter()
    for xb, yb in itertools.islice(batches, n):
        sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model(xb)
        loss = loss_fn(out, yb)
        loss.backward()
        opt.step()
        sync(device)
        compute += time.perf_counter() - t0
        # The trainer's per-step bookkeeping, as in hpsearch/objective.py.
        _ = float(loss.detach()), int((out.detach().argmax(1) == yb).sum())
        steps += 1
    sync(device)
    return time.perf_counter() - start, compute, steps


def interleaved_epoch(model: nn.Module, opt: torch.optim.Optimizer, paths: dict[str, Iterator[Any]],
                      n_batches: int, device: torch.device, seg: int) -> dict[str, tuple[float, float]]:
    """One epoch of every path, alternating `seg` batches at a time, so that load from other
    processes on a shared machine falls on both paths alike. Returns, per path, the epoch time
    (median seconds per batch over the segments x batches per epoch, robust to load spikes) and
    the median share of a segment spent outside forward/backward/step."""
    segments: dict[str, list[tuple[float, float, int]]] = {p: [] for p in paths}
    active = dict(paths)
    while active:
        for path, batches in list(active.items()):
            secs, compute, steps = segment(model, opt, batches, seg, device)
            if steps < seg:
                del active[path]
            if steps:
                segments[path].append((secs, compute, steps))
    out = {}
    for path, segs in segments.items():
        full = [s for s in segs if s[2] == seg] or segs
        per_batch = statistics.median(secs / steps for secs, _, steps in full)
        outside = statistics.median(1 - compute / secs for secs, compute, _ in full)
        out[path] = (per_batch * n_batches, outside)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="epochs per path; the best counts")
    ap.add_argument("--segment", type=int, default=25, help="batches per turn when interleaving the paths")
    ap.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (0: the seed scripts)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)

    from torchvision import datasets, transforms

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_mnist_sized(root)
        # --- the two data paths over the same files ------------------------------------------
        tv = datasets.MNIST(str(root), train=True, download=False, transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]))
        gen = torch.Generator().manual_seed(0)
        loader = torch.utils.data.DataLoader(tv, batch_size=args.batch_size, shuffle=True, generator=gen,
                                             num_workers=args.num_workers, pin_memory=device.type == "cuda")
        t0 = time.perf_counter()
        # val_fraction: the smallest split, so both paths train on (almost) the same 60,000 images.
        d = data.load({"name": "mnist", "root": str(root), "val_fraction": 1e-4}, device)
        load_s = time.perf_counter() - t0

        def via_loader() -> Any:
            for xb, yb in loader:
                yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)

        def via_memory() -> Any:
            return data.batches(d.x_train, d.y_train, args.batch_size, gen)

        print(f"MNIST-sized: {len(tv):,} train images 1x28x28, batch {args.batch_size}, device {device}, "
              f"torch threads {torch.get_num_threads()}, DataLoader workers {args.num_workers}")
        print(f"in-memory load (once per worker, reused by every trial): {load_s:.2f}s\n")
        print(f"{'model':<26} {'path':<11} {'epoch s':>8} {'img/s':>9} {'outside f/b/step':>17}")
        ratios = {}
        n_batches = -(-len(tv) // args.batch_size)
        for label, over in (MODELS[m] for m in args.models):
            torch.manual_seed(0)
            model = build_model({**config.defaults(), **over}, (1, 28, 28), 10).to(device)
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            segment(model, opt, via_memory(), 20, device)  # warm-up: allocator, kernels, threads
            runs = [interleaved_epoch(model, opt, {"dataloader": via_loader(), "hpsearch": via_memory()},
                                      n_batches, device, args.segment) for _ in range(args.repeats)]
            best = {p: min((r[p] for r in runs), key=lambda v: v[0]) for p in runs[0]}
            for path, (secs, outside) in best.items():
                print(f"{label:<26} {path:<11} {secs:>8.2f} {len(tv) / secs:>9,.0f} {outside:>16.0%}")
            ratios[label] = best["dataloader"][0] / best["hpsearch"][0]
        print()
        for label, ratio in ratios.items():
            print(f"ratio dataloader/hpsearch epoch time, {label}: {ratio:.1f}x")
        print("goals: >= 5x for the dense MLP; >= 1.0x (no slower) for the CNN on CPU")


if __name__ == "__main__":
    main()
