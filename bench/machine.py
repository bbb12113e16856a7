"""N workers on one machine, started the ways users start them: wall time of whole grid studies.

    .venv/bin/python bench/machine.py [--parts contention startup workers tuning optuna] [--rounds 2] [--ns 1 2 4]
                                      [--samples 8000] [--cnn-samples 4000] [--storage postgresql://...]

Every run is a real study on PostgreSQL (a database `hpsearch_bench` is created if missing),
trained on MNIST-sized IDX files (1x28x28, 10 classes; --samples training images) read by
torchvision's own loader, 2 epochs, batch 64, W&B off. The workers' environment is the caller's
without HPSEARCH_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS and HPSEARCH_FUSE: what a user who set
nothing gets. The sides of each comparison alternate within a round, rounds repeat, and each
figure is the median over rounds with the spread (min-max) beside it; ratios are of medians.

1. workers: N = 1, 2, 4 `python worker.py` started by hand against `hpsearch launch local
   --workers N`, on a dense grid (MLP 784-256-128-10, 16 points) and a CNN grid (32-64 conv,
   128 fc, 8 points). Goals: by hand within 10% of launch; 2 workers never slower than 1.
2. tuning: two workers by hand, the defaults against every hand-tuned setting (HPSEARCH_THREADS
   1 or 2, fusion on (8) or off), same grids. Goal: the defaults within 10% of the best.
0. startup: a worker's fixed costs, in a fresh process: from its start to its banner (imports,
   storage, study, spec), to its first trial's start (the dataset loaded, the checks, the claim),
   and to its exit after one trial; with the shared dataset cache cold (HPSEARCH_DATA_CACHE=off)
   and warm, alternating.
c. contention: one training step of the dense MLP and the CNN (batch 64) in a fresh process,
   1 or 2 threads, with OpenMP's idle threads as libgomp leaves them (spin a while, then sleep),
   always spinning (ACTIVE), never (PASSIVE) or spinning briefly (GOMP_SPINCOUNT=10000), on a
   quiet machine and beside one busy process (a Python loop): median ms per step over the rounds,
   alternating. How a worker with more than one thread should wait.
3. optuna: a 24-point dense grid (lr x optimizer x dropout), two hpsearch workers against two
   processes of a plain Optuna script (GridSampler on one PostgreSQL study, a torchvision
   DataLoader with ToTensor + Normalize, the model trained and validated as hpsearch does), as
   Optuna's documentation tells users to parallelise. Also counts grid points run twice.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from data_path import write_mnist_sized  # noqa: E402

UNSET = ("HPSEARCH_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "HPSEARCH_FUSE")
DENSE = {"model": "dense", "widths": [256, 128]}
CNN = {"model": "cnn", "filters": [32, 64], "fc_sizes": [128]}
GRIDS = {
    "dense": (DENSE, {"lr": [0.1, 0.03, 0.01, 0.001], "optimizer": ["sgd", "adam"], "dropout": [0.0, 0.3]}),
    "cnn": (CNN, {"lr": [0.01, 0.001], "optimizer": ["sgd", "adam"], "dropout": [0.0, 0.3]}),
}
GRID24 = {"lr": [0.1, 0.01, 0.001], "optimizer": ["sgd", "adam"], "dropout": [0.0, 0.1, 0.3, 0.5]}

PLAIN_OPTUNA = '''
import sys
import optuna, torch, torchvision
from torch import nn
from torchvision import transforms

name, url, root = sys.argv[1:4]
space = {"lr": [0.1, 0.01, 0.001], "optimizer": ["sgd", "adam"], "dropout": [0.0, 0.1, 0.3, 0.5]}
tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
full = torchvision.datasets.MNIST(root, train=True, transform=tf)
n_val = len(full) // 10
train, val = torch.utils.data.random_split(full, [len(full) - n_val, n_val], generator=torch.Generator().manual_seed(0))

def objective(trial):
    lr = trial.suggest_categorical("lr", space["lr"])
    opt_name = trial.suggest_categorical("optimizer", space["optimizer"])
    p = trial.suggest_categorical("dropout", space["dropout"])
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Dropout(p), nn.Linear(256, 128), nn.ReLU(),
                          nn.Dropout(p), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=lr) if opt_name == "sgd" else torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(2):
        model.train()
        for x, y in torch.utils.data.DataLoader(train, batch_size=64, shuffle=True):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in torch.utils.data.DataLoader(val, batch_size=1000):
                correct += (model(x).argmax(1) == y).sum().item()
        acc = correct / len(val)
        trial.report(acc, epoch)
    return acc

study = optuna.load_study(study_name=name, storage=url, sampler=optuna.samplers.GridSampler(space))
study.optimize(objective)  # GridSampler stops the study once every point has been sampled
'''


def user_env(data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update({"PYTHONPATH": str(ROOT), "HPSEARCH_DATA": str(data), "HPSEARCH_TRACKING": "off",
                "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def ensure_db(url: str) -> str:
    import sqlalchemy as sa

    base, _, db = url.rpartition("/")
    admin = sa.create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": db}).first():
            conn.execute(sa.text(f'CREATE DATABASE "{db}"'))
    admin.dispose()
    return url


def spec(name: str, model: dict[str, Any], grid: dict[str, list[Any]]) -> dict[str, Any]:
    return {"name": name, "metric": "val_acc", "sampler": "grid", "pruner": "none", "repeats": 1,
            "dataset": {"name": "mnist", "val_fraction": 0.1},
            "train": {"epochs": 2, "batch_size": 64, **model},
            "space": {k: {"choices": v} for k, v in grid.items()}}


def create(tmp: Path, url: str, env: dict[str, str], model: dict[str, Any], grid: dict[str, list[Any]]) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec(name, model, grid)))
    subprocess.run([sys.executable, "-m", "hpsearch", "create-study", str(path), "--storage", url], env=env,
                   check=True, capture_output=True, cwd=ROOT)
    return name


def check_done(url: str, name: str, planned: int) -> None:
    import optuna

    trials = optuna.load_study(study_name=name, storage=url).trials
    done = Counter(tuple(sorted(t.params.items())) for t in trials if t.state.name == "COMPLETE")
    if len(done) != planned or max(done.values()) != 1:
        raise SystemExit(f"study {name}: {len(done)} of {planned} points complete, {sum(done.values())} runs")


def run_by_hand(url: str, name: str, n: int, env: dict[str, str], log: Path) -> float:
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--study", name, "--storage", url],
                              env=env, stdout=open(log.with_suffix(f".{i}.log"), "w"), stderr=subprocess.STDOUT,
                              cwd=ROOT) for i in range(n)]
    codes = [p.wait(timeout=3600) for p in procs]
    wall = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"a worker failed: see {log.parent}")
    return wall


def run_launch(url: str, name: str, n: int, env: dict[str, str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log.with_suffix(".launch.log"), "w") as fh:
        code = subprocess.run([sys.executable, "-m", "hpsearch", "launch", "local", "--study", name, "--storage", url,
                               "--workers", str(n)], env=env,  # its logs: .hpsearch/logs/ under the temporary directory
                              stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=log.parent).returncode
    wall = time.perf_counter() - t0
    if code:
        raise SystemExit(f"launch failed: see {log.parent}")
    return wall


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):6.1f} s ({min(values):.1f}-{max(values):.1f})"


def part_workers(a: argparse.Namespace, tmp: Path, url: str, data: dict[str, Path]) -> None:
    print(f"\n1. N workers by hand vs `launch local --workers N` (median over {a.rounds} rounds, min-max)")
    for shape, (model, grid) in GRIDS.items():
        planned = len(list(_points(grid)))
        env = user_env(data[shape])
        times: dict[tuple[str, int], list[float]] = {}
        for r in range(a.rounds):
            for n in a.ns:
                order = ("hand", "launch") if r % 2 == 0 else ("launch", "hand")
                for how in order:
                    name = create(tmp, url, env, model, grid)
                    run = run_by_hand if how == "hand" else run_launch
                    times.setdefault((how, n), []).append(run(url, name, n, env, tmp / name))
                    check_done(url, name, planned)
        print(f"  {shape} grid, {planned} points, {_count(data[shape])} images:")
        one = statistics.median(times[("hand", 1)])
        for n in a.ns:
            hand, launch = statistics.median(times[("hand", n)]), statistics.median(times[("launch", n)])
            print(f"    N={n}: by hand {fmt(times[('hand', n)])}   launch {fmt(times[('launch', n)])}   "
                  f"hand/launch {hand / launch:.2f}   1 worker / N by hand {one / hand:.2f}x", flush=True)


def part_tuning(a: argparse.Namespace, tmp: Path, url: str, data: dict[str, Path]) -> None:
    print(f"\n2. two workers by hand: the defaults vs hand-tuned settings (median over {a.rounds} rounds)")
    settings = [("defaults", {}), ("threads 1, fuse off", {"HPSEARCH_THREADS": "1", "HPSEARCH_FUSE": "1"}),
                ("threads 1, fuse 8", {"HPSEARCH_THREADS": "1", "HPSEARCH_FUSE": "8"}),
                ("threads 2, fuse off", {"HPSEARCH_THREADS": "2", "HPSEARCH_FUSE": "1"}),
                ("threads 2, fuse 8", {"HPSEARCH_THREADS": "2", "HPSEARCH_FUSE": "8"})]
    for shape, (model, grid) in GRIDS.items():
        planned = len(list(_points(grid)))
        times: dict[str, list[float]] = {}
        for r in range(a.rounds):
            order = settings if r % 2 == 0 else settings[::-1]
            for label, extra in order:
                env = user_env(data[shape], **extra)
                name = create(tmp, url, env, model, grid)
                times.setdefault(label, []).append(run_by_hand(url, name, 2, env, tmp / name))
                check_done(url, name, planned)
        best = min(statistics.median(v) for k, v in times.items() if k != "defaults")
        print(f"  {shape} grid, {planned} points:")
        for label, _ in settings:
            print(f"    {label:<22} {fmt(times[label])}   / best hand-tuned {statistics.median(times[label]) / best:.2f}",
                  flush=True)


STEP = """
import sys, time, torch
threads, shape = int(sys.argv[1]), sys.argv[2]
torch.set_num_threads(threads)
from torch import nn
if shape == "dense":
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
else:
    m = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1),
                      nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 49, 128), nn.ReLU(), nn.Linear(128, 10))
opt = torch.optim.SGD(m.parameters(), lr=0.01)
x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
def step():
    opt.zero_grad()
    nn.functional.cross_entropy(m(x), y).backward()
    opt.step()
for _ in range(10):
    step()
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < 2.0:
    step()
    n += 1
print((time.perf_counter() - t0) / n * 1000)
"""


# (label, threads, environment): OpenMP's default (libgomp spins a while, then sleeps), always
# spinning, never spinning, and a short spin.
CONTENTION_CASES = [
    ("1 thread", 1, {}),
    ("2 threads, default", 2, {}),
    ("2, ACTIVE", 2, {"OMP_WAIT_POLICY": "ACTIVE"}),
    ("2, PASSIVE", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("2, spin 10k", 2, {"GOMP_SPINCOUNT": "10000"}),
]


def part_contention(a: argparse.Namespace, tmp: Path, url: str, data: dict[str, Path]) -> None:
    print(f"\nc. ms per training step, batch 64 (median over {a.rounds + 1} rounds, min-max)")
    for shape in ("dense", "cnn"):
        got: dict[tuple[str, str], list[float]] = {}
        for r in range(a.rounds + 1):
            for busy in (False, True):
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
                try:
                    for label, threads, extra in CONTENTION_CASES[:: 1 if r % 2 == 0 else -1]:
                        env = {k: v for k, v in user_env(data["dense"]).items()
                               if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
                        out = subprocess.run([sys.executable, "-c", STEP, str(threads), shape], env={**env, **extra},
                                             capture_output=True, text=True, check=True).stdout
                        got.setdefault(("busy" if busy else "quiet", label), []).append(float(out))
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
        print(f"  {shape}:")
        for where in ("quiet", "busy"):
            row = "   ".join(f"{label} {statistics.median(got[(where, label)]):6.2f} "
                           f"({min(got[(where, label)]):.2f}-{max(got[(where, label)]):.2f})"
                           for label, _, _ in CONTENTION_CASES)
            print(f"    {'quiet' if where == 'quiet' else 'one busy process'}: {row}", flush=True)


def part_startup(a: argparse.Namespace, tmp: Path, url: str, data: dict[str, Path]) -> None:
    print(f"\n0. a worker's fixed costs, {_count(data['dense'])} images, one trial (median over {a.rounds + 1} "
          "runs, min-max)")
    phases: dict[str, dict[str, list[float]]] = {}
    for r in range(a.rounds + 1):
        for label, extra in (("cache off", {"HPSEARCH_DATA_CACHE": "off"}), ("cache warm", {}))[:: 1 if r % 2 else -1]:
            env = user_env(data["dense"], **extra)
            name = create(tmp, url, env, DENSE, {"lr": [0.01]})
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--study", name, "--storage", url],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
            seen: dict[str, float] = {}
            for line in proc.stdout:  # type: ignore[union-attr]
                if line.startswith("worker ") and " on study " in line:
                    seen.setdefault("banner", time.perf_counter() - t0)
                elif "] start:" in line:
                    seen.setdefault("first trial starts", time.perf_counter() - t0)
            proc.wait()
            seen["exit after 1 trial"] = time.perf_counter() - t0
            for k, v in seen.items():
                phases.setdefault(label, {}).setdefault(k, []).append(v)
    for label, got in phases.items():
        print(f"  {label}: " + "   ".join(f"{k} {fmt(v)}" for k, v in got.items()), flush=True)


def part_optuna(a: argparse.Namespace, tmp: Path, url: str, data: dict[str, Path]) -> None:
    import optuna

    print(f"\n3. 24-point dense grid, 2 epochs, {_count(data['dense'])} images: 2 hpsearch workers vs 2 plain "
          f"Optuna processes (GridSampler + DataLoader) on one PostgreSQL study (median over {a.rounds} rounds)")
    script = tmp / "plain_optuna.py"
    script.write_text(PLAIN_OPTUNA)
    times: dict[str, list[float]] = {"hpsearch": [], "optuna": []}
    twice: list[int] = []
    for r in range(a.rounds):
        for how in (("hpsearch", "optuna") if r % 2 == 0 else ("optuna", "hpsearch")):
            env = user_env(data["dense"])
            if how == "hpsearch":
                name = create(tmp, url, env, DENSE, GRID24)
                times[how].append(run_by_hand(url, name, 2, env, tmp / name))
                check_done(url, name, 24)
                continue
            name = f"plain-{uuid.uuid4().hex[:8]}"
            optuna.create_study(study_name=name, storage=url, direction="maximize")
            t0 = time.perf_counter()
            procs = [subprocess.Popen([sys.executable, str(script), name, url, str(data["dense"])], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
            for p in procs:
                p.wait(timeout=3600)
            times[how].append(time.perf_counter() - t0)
            trials = optuna.load_study(study_name=name, storage=url).trials
            runs = Counter(tuple(sorted(t.params.items())) for t in trials if t.state.name == "COMPLETE")
            twice.append(sum(v - 1 for v in runs.values()))
            if len(runs) != 24:
                print(f"    (plain Optuna completed {len(runs)} of 24 points)")
    h, o = statistics.median(times["hpsearch"]), statistics.median(times["optuna"])
    print(f"  hpsearch, 2 workers       {fmt(times['hpsearch'])}   every point once")
    print(f"  plain Optuna, 2 processes {fmt(times['optuna'])}   points run twice per round: {twice}")
    print(f"  plain Optuna / hpsearch: {o / h:.1f}x", flush=True)


def _points(grid: dict[str, list[Any]]) -> list[tuple[Any, ...]]:
    import itertools

    return list(itertools.product(*grid.values()))


def _count(root: Path) -> int:
    return (root / "MNIST" / "raw" / "train-images-idx3-ubyte").stat().st_size // 784


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["contention", "startup", "workers", "tuning", "optuna"],
                    choices=["contention", "startup", "workers", "tuning", "optuna"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--samples", type=int, default=8000, help="training images of the dense grids")
    ap.add_argument("--cnn-samples", type=int, default=4000, help="training images of the CNN grid")
    ap.add_argument("--storage", default="postgresql+psycopg2://postgres@127.0.0.1:5432/hpsearch_bench")
    a = ap.parse_args()
    url = ensure_db(a.storage)
    print(f"machine: {len(os.sched_getaffinity(0))} CPUs; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = {"dense": tmp / "dense-data", "cnn": tmp / "cnn-data"}
        write_mnist_sized(data["dense"], a.samples, max(1000, a.samples // 4))
        write_mnist_sized(data["cnn"], a.cnn_samples, max(1000, a.cnn_samples // 4))
        for part in a.parts:
            {"contention": part_contention, "startup": part_startup, "workers": part_workers, "tuning": part_tuning,
             "optuna": part_optuna}[part](a, tmp, url, data)


if __name__ == "__main__":
    main()
