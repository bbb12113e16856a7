"""Fused trials vs one trial at a time: trials per hour, a whole grid study, peak memory per member.

    .venv/bin/python bench/fusion.py [--ks 1 4 8 16] [--samples 2000] [--epochs 1] [--rounds 4] [--shapes dense cnn]
                                     [--study-samples 1200] [--study-k 8] [--skip-throughput|study|memory]

Synthetic MNIST-sized data (1x28x28 images, 10 classes; --samples training images, scaled down
from 60,000 so the bench runs in minutes). A trial's fixed costs (building it, its test, its
bookkeeping) weigh more on a short epoch, so part 1 at 2,000 images understates the ratio of
longer epochs: run the dense shape with --samples 10000 to see it (--shapes dense).

1. Trials per hour for the seed grid's two shapes, the dense MLP 784-256-128-10 and the two-block
   CNN (32-64 conv, 128 fc), SGD and Adam members with dropout 0..0.5 as in studies/mnist-grid.yaml:
   K trials trained one after another (trainer.run, what a worker does without fusion) against
   the same K trials fused (hpsearch.worker.fused.run_group). Alone and fused runs alternate for --rounds
   rounds and the fastest round of each counts, so load from other processes on a shared machine
   hits both alike. Ratio = alone time / fused time = trials/hour fused / trials/hour alone.
2. The whole studies/mnist-grid.yaml shape (80 configurations x 5 seeds = 400 trials, 2 epochs)
   on --study-samples synthetic images, run by 2 real worker processes (1 thread each) on a
   journal file: wall time with HPSEARCH_FUSE=1 against HPSEARCH_FUSE=--study-k.
3. Peak resident memory per member (a fresh process per measurement): training K members fused,
   (peak - peak before training) / K, against one trial alone.
1c. One optimizer step (SGD, momentum, Adam) over the MLP's parameters: torch's default
   implementation against hpsearch's (fused kernels where torch has them, CPU and CUDA), and
   hpsearch's called directly as a fused epoch steps its members (training/fused_steps.py).
On CUDA (when present) part 1 is printed again on the GPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {
    "dense": ("dense MLP 784-256-128-10", {"model": "dense", "widths": [256, 128]}),
    "cnn": ("CNN 32-64 conv, 128 fc", {"model": "cnn", "filters": [32, 64], "fc_sizes": [128]}),
}
GRID = {"lr": [0.1, 0.01, 0.001, 0.0001, 0.00001], "optimizer": ["sgd", "adam"], "dropout": [0.0, 0.1, 0.3, 0.5]}


def mnist_like(cfg: dict[str, Any]) -> Any:
    """Dataset plugin (`bench.fusion:mnist_like`): noisy class templates, MNIST's shapes."""
    from hpsearch.training.data.registry import Raw

    n = int(cfg.get("n", 6000))
    rng = np.random.default_rng(0)
    templates = rng.normal(0, 1, (10, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, n + n // 6)
    x = templates[y] + rng.normal(0, 2.0, (len(y), 1, 28, 28)).astype(np.float32)
    return Raw(x[:n], y[:n], x[n:], y[n:], [str(i) for i in range(10)])


def _spec(shape: str, samples: int, epochs: int, **over: Any) -> Any:
    from hpsearch.spec.parse import spec_from_dict

    return spec_from_dict({
        "name": "fusion-bench", "metric": "val_acc", "sampler": "grid", "pruner": "none",
        "dataset": {"name": "bench.fusion:mnist_like", "n": samples, "val_fraction": 0.1},
        "train": {"epochs": epochs, "batch_size": 64, **SHAPES[shape][1]},
        "space": {k: {"choices": v} for k, v in GRID.items()}, **over,
    })


def _members(k: int) -> list[dict[str, Any]]:
    """K grid points of one shape, as a fused group gets them: seeds of sgd/adam x dropout configurations."""
    points = [{"lr": 0.01, "optimizer": o, "dropout": d} for o in ("sgd", "adam") for d in GRID["dropout"]]
    return [{**points[i % len(points)], "seed": i} for i in range(k)]


def _study(members: list[dict[str, Any]]) -> Any:
    import optuna

    study = optuna.create_study(direction="maximize")
    for m in members:
        study.enqueue_trial({k: v for k, v in m.items() if k != "seed"}, user_attrs={"seed": m["seed"]})
    return study


def time_alone(spec: Any, members: list[dict[str, Any]], device: Any) -> float:
    from hpsearch.training import trainer

    study = _study(members)
    t0 = time.perf_counter()
    for _ in members:
        trainer.run(study.ask(), spec, trainer.Context(device=device, progress=lambda m: None))
    return time.perf_counter() - t0


def time_fused(spec: Any, members: list[dict[str, Any]], device: Any) -> float:
    from hpsearch.worker import fused
    from hpsearch.worker.loop import Options

    study = _study(members)
    trials = [study.ask() for _ in members]
    t0 = time.perf_counter()
    states = fused.run_group(study, trials, spec, {"device": device, "artifacts": None, "url": ""},
                             Options(study="bench", heartbeat=3600), lambda m: None)
    assert set(states) == {"complete"}, states
    return time.perf_counter() - t0


def throughput(device: Any, ks: list[int], samples: int, epochs: int, rounds: int) -> None:
    from hpsearch.training.data import loading as data

    print(f"\n1. trials/hour fused vs one at a time, {device}, {samples} synthetic 28x28 images, {epochs} epoch(s), "
          f"batch 64, torch threads {__import__('torch').get_num_threads()}; fastest of {rounds} alternating rounds")
    print(f"{'model':<26} {'K':>3} {'alone s':>9} {'fused s':>9} {'trials/h alone':>15} {'trials/h fused':>15} "
          f"{'ratio':>6}")
    for shape, (title, _) in SHAPES.items():
        spec = _spec(shape, samples, epochs)
        data.load(spec.dataset, device)  # loaded once, as a worker does
        for k in ks:
            members = _members(k)
            time_fused(spec, members[:1], device)  # warm-up
            alone, fused_ = [], []
            for _ in range(rounds):
                alone.append(time_alone(spec, members, device))
                fused_.append(time_fused(spec, members, device))
            a, f = min(alone), min(fused_)
            print(f"{title:<26} {k:>3} {a:>9.2f} {f:>9.2f} {3600 * k / a:>15.0f} {3600 * k / f:>15.0f} {a / f:>5.2f}x",
                  flush=True)


def step_ratio(device: Any, ks: list[int], segments: int) -> None:
    """Training steps only, alone and fused alternating every few steps: robust to a noisy machine."""
    from hpsearch.training.data import loading as data

    print(f"\n1b. training step time, K members stepping one after another vs one fused step, {device}, batch 64; "
          f"alternating segments of 10 steps, median of {segments} segments each")
    print(f"{'model':<26} {'K':>3} {'alone ms/step':>14} {'fused ms/step':>14} {'ratio':>6}")
    for shape, (title, _) in SHAPES.items():
        spec = _spec(shape, 2000, 1)
        d = data.load(spec.dataset, device)
        for k in ks:
            a, f = _step_times(spec, d, k, device, segments)
            print(f"{title:<26} {k:>3} {a:>14.2f} {f:>14.2f} {a / f:>5.2f}x", flush=True)


def _step_times(spec: Any, d: Any, k: int, device: Any, segments: int) -> tuple[float, float]:
    import statistics

    import torch

    from hpsearch.training import trainer
    from hpsearch.training.fused_model import FusedModel
    from hpsearch.training.fused_steps import Steps
    from hpsearch.training.optim import build_loss, build_optimizer

    def members() -> list[tuple[Any, Any, Any]]:
        out = []
        for m in _members(k):
            cfg = trainer.resolve_config(spec, {n: v for n, v in m.items() if n != "seed"})
            trainer.seed_everything(m["seed"])
            model = trainer.build_model(cfg, d.input_shape, d.n_classes).to(device)
            out.append((model, build_optimizer(model.parameters(), cfg), build_loss(cfg["loss"])))
        return out

    alone, group = members(), members()
    net = FusedModel([mo for mo, _, _ in group], [torch.Generator(device=device).manual_seed(i) for i in range(k)],
                     grouped_conv=device.type != "cpu")
    idx = torch.randint(0, len(d.x_train), (k, 64), device=device)
    x, y = d.x_train[idx], d.y_train[idx]

    def alone_step() -> None:
        for i, (model, opt, loss_fn) in enumerate(alone):
            model.train()
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[i]), y[i]).backward()
            opt.step()

    steps = Steps([opt for _, opt, _ in group])

    def fused_step() -> None:  # what hpsearch.worker.fused._fused_epoch does per batch
        net.zero_grad()
        out = net.forward(x)
        torch.stack([loss_fn(out[i], y[i]) for i, (_, _, loss_fn) in enumerate(group)]).sum().backward()
        net.share_grads()
        steps.step_all()

    times: dict[str, list[float]] = {"alone": [], "fused": []}
    for _ in range(segments):
        for name, step in (("alone", alone_step), ("fused", fused_step)):
            step()
            t0 = time.perf_counter()
            for _ in range(10):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / 10 * 1000)
    return statistics.median(times["alone"]), statistics.median(times["fused"])


def optimizer_steps(device: Any, segments: int) -> None:
    """One optimizer step over the seed grid's MLP parameters: torch's default implementation
    (on CPU its per-tensor loop) against what hpsearch's optimizers use (training/optim.py's _fast)."""
    import statistics

    import torch

    from hpsearch.training.fused_steps import Steps
    from hpsearch.training.optim import build_optimizer

    print(f"\n1c. one optimizer step over the MLP 784-256-128-10's parameters, {device}: torch's default "
          f"implementation vs hpsearch's (fused kernels) through step(), and the same called directly as a fused\n"
          f"    epoch does (training/fused_steps.py); median of {segments} segments of 20 steps")
    print(f"{'optimizer':<12} {'default ms':>11} {'hpsearch ms':>12} {'ratio':>6} {'direct ms':>10} {'ratio':>6}")
    torch.manual_seed(0)
    shapes = [(256, 784), (256,), (128, 256), (128,), (10, 128), (10,)]
    cfg = {"lr": 0.01, "weight_decay": 1e-4, "momentum": 0.9, "eps": 1e-8, "betas": [0.9, 0.999]}
    plain = {"sgd": lambda ps: torch.optim.SGD(ps, lr=0.01, weight_decay=1e-4),
             "momentum": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, weight_decay=1e-4),
             "adam": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=1e-4)}
    for name, make in plain.items():
        times: dict[str, list[float]] = {"default": [], "hpsearch": [], "direct": []}
        steps = {}
        for how in times:
            ps = [torch.randn(s, device=device, requires_grad=True) for s in shapes]
            for p in ps:
                p.grad = torch.randn_like(p)
            opt = make(ps) if how == "default" else build_optimizer(ps, {**cfg, "optimizer": name})
            direct = Steps([opt])
            steps[how] = (lambda d=direct: d.step_all([0])) if how == "direct" else opt.step
            steps[how]()
        for _ in range(segments):
            for how, step in steps.items():
                t0 = time.perf_counter()
                for _ in range(20):
                    step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[how].append((time.perf_counter() - t0) / 20 * 1000)
        a, b, c = (statistics.median(times[how]) for how in ("default", "hpsearch", "direct"))
        print(f"{name:<12} {a:>11.3f} {b:>12.3f} {a / b:>5.2f}x {c:>10.3f} {b / c:>5.2f}x", flush=True)


def study_wall_time(samples: int, k: int, tmp: Path) -> None:
    import yaml

    print(f"\n2. studies/mnist-grid.yaml shape (80 configurations x 5 seeds = 400 trials, 2 epochs), {samples} "
          "synthetic 28x28 images (scaled down from 54,000), 2 worker processes x 1 thread, journal file")
    raw = yaml.safe_load((ROOT / "studies" / "mnist-grid.yaml").read_text())
    raw["dataset"] = {"name": "bench.fusion:mnist_like", "n": samples, "val_fraction": 0.1}
    rows = []
    for label, fuse in (("one at a time", "1"), (f"fused, K={k}", str(k))):
        tag = fuse
        path = tmp / f"grid-{tag}.yaml"
        path.write_text(yaml.safe_dump({**raw, "name": "grid"}))
        url = f"journal:{tmp / f'grid-{tag}.log'}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HPSEARCH_THREADS": "1", "HPSEARCH_FUSE": fuse,
               "HPSEARCH_TRACKING": "off"}
        subprocess.run([sys.executable, "-m", "hpsearch", "create-study", str(path), "--storage", url], env=env,
                       check=True, capture_output=True)
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--study", "grid", "--storage", url,
                                   "--device", "cpu", "--quiet"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=3600)[0] for p in procs]
        wall = time.perf_counter() - t0
        if any(p.returncode for p in procs):
            raise SystemExit("a worker failed:\n" + "\n".join(outs))
        rows.append((label, wall))
        print(f"  {label:<24} {wall:>7.1f} s   ({3600 * 400 / wall:,.0f} trials/hour)", flush=True)
    print(f"  fused / one at a time: {rows[0][1] / rows[1][1]:.2f}x faster")


def memory(ks: list[int], samples: int) -> None:
    print(f"\n3. peak resident memory per member, CPU, {samples} synthetic images (a fresh process each)")
    print(f"{'model':<26} {'K':>3} {'alone MB':>9} {'fused MB/member':>16} {'ratio':>6}")
    for shape, (title, _) in SHAPES.items():
        alone = max(_probe(shape, 1, "alone", samples), 0.1)
        for k in ks:
            per = _probe(shape, k, "fused", samples) / k
            print(f"{title:<26} {k:>3} {alone:>9.1f} {per:>16.1f} {per / alone:>5.2f}x", flush=True)


def _probe(shape: str, k: int, how: str, samples: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--probe", shape, str(k), how, "--samples", str(samples)],
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def probe(shape: str, k: int, how: str, samples: int) -> None:
    """In a fresh process: MB of resident memory that training adds, at its peak, over the level
    right before it (data and libraries loaded). Sampled every 2 ms from /proc: ru_maxrss would
    keep the data load's transient peak instead."""
    import threading

    import torch

    from hpsearch.training.data import loading as data

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    spec = _spec(shape, samples, 1)
    data.load(spec.dataset, torch.device("cpu"))
    base, peak, done = rss(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    (time_fused if how == "fused" else time_alone)(spec, _members(k), torch.device("cpu"))
    done.set()
    thread.join()
    print(max(0, peak[0] - base) / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--study-samples", type=int, default=1200)
    parser.add_argument("--segments", type=int, default=15, help="alternating step segments in part 1b")
    parser.add_argument("--study-k", type=int, default=8, help="K of the fused study run")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-study", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--probe", nargs=3, metavar=("SHAPE", "K", "HOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    for shape in set(SHAPES) - set(args.shapes):
        del SHAPES[shape]
    os.environ.setdefault("HPSEARCH_TRACKING", "off")
    import torch

    if args.probe:
        probe(args.probe[0], int(args.probe[1]), args.probe[2], args.samples)
        return
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in [] if args.skip_throughput else devices:
        throughput(device, args.ks, args.samples * (5 if device.type == "cuda" else 1), args.epochs, args.rounds)
        step_ratio(device, [k for k in args.ks if k > 1], args.segments)
        optimizer_steps(device, args.segments)
    if not args.skip_study:
        with tempfile.TemporaryDirectory() as tmp:
            study_wall_time(args.study_samples, args.study_k, Path(tmp))
    if not args.skip_memory:
        memory([k for k in args.ks if k > 1], args.samples)


if __name__ == "__main__":
    main()
