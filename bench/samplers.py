"""Which sampler: best validation accuracy found vs trials spent, random vs TPE vs GP vs CMA-ES.

    .venv/bin/python bench/samplers.py [--seeds 5] [--trials 40] [--target 0.975] [--jobs 2]

Every run is a real hpsearch study on its own journal file: `create-study --sampler NAME`, then one
`hpsearch worker --seed S` trains all its trials with the built-in trainer (digits, which ships
with scikit-learn, a dense MLP, a few epochs). One worker per study, so every sampler sees each
result before it proposes the next trial and equal budgets mean equal information. Each sampler
runs with hpsearch's defaults (TPE: 10 start-up trials, multivariate, constant liar; GP: 10
start-up trials; CMA-ES: population 4 + 3 ln(dimensions)).

The search space is numeric so CMA-ES applies: lr and weight decay on log scales, width (log int),
depth (int), dropout. The trainer's own seed is fixed, so a configuration always scores the same
and the spread between runs is the sampler's alone. Threads are fixed (HPSEARCH_THREADS=1, which
the worker applies with torch.set_num_threads(1), and OMP_NUM_THREADS=1), so a figure means one
thing whatever runs beside it; `--jobs` studies run at once (their accuracy does not depend on it).

Printed: mean best-found validation accuracy after 10, 20 and 40 trials with 95% t-intervals over
the sampler seeds, and trials until the best reaches `--target` (mean over the runs that did;
how many did).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SAMPLERS = ("random", "tpe", "gp", "cmaes")
CHECKPOINTS = (10, 20, 40)

SPACE = {
    "lr": {"low": 1.0e-5, "high": 0.1, "log": True},
    "weight_decay": {"low": 1.0e-6, "high": 0.1, "log": True},
    "hidden_size": {"low": 4, "high": 256, "log": True, "type": "int"},
    "hidden_layers": {"low": 1, "high": 3},
    "dropout": {"low": 0.0, "high": 0.7},
}


def spec(name: str, trials: int) -> dict[str, Any]:
    return {
        "name": name, "metric": "val_acc", "sampler": "random", "pruner": "none", "repeats": 1, "seed": 0,
        "budget": trials, "dataset": {"name": "digits", "val_fraction": 0.2}, "tracking": "none",
        "train": {"model": "dense", "epochs": 4, "batch_size": 64, "optimizer": "adam"},
        "space": SPACE,
    }


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update({"HPSEARCH_THREADS": "1", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
              "PYTHONPATH": str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")})
    return e


def run_one(sampler: str, seed: int, trials: int, work: Path) -> list[float]:
    """One study to the end; the validation accuracy of each trial in trial order (nan: failed)."""
    name = f"{sampler}-s{seed}"
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec(name, trials)))
    url = str(work / f"{name}.log")
    hps = [sys.executable, "-m", "hpsearch"]
    for cmd in (hps + ["create-study", str(path), "--sampler", sampler, "--storage", url],
                hps + ["worker", "--study", name, "--storage", url, "--seed", str(seed), "--device", "cpu",
                       "--fuse", "1", "--quiet"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=work)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return values(name, url)


def values(name: str, url: str) -> list[float]:
    """Each trial's value in trial order, read back through Optuna."""
    import optuna

    from hpsearch.storage.backend import open_storage

    study = optuna.load_study(study_name=name, storage=open_storage(url))
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    return [t.value if t.state == optuna.trial.TrialState.COMPLETE else math.nan for t in trials]


def best_so_far(vals: list[float]) -> list[float]:
    out, best = [], -math.inf
    for v in vals:
        if not math.isnan(v):
            best = max(best, v)
        out.append(best)
    return out


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% t-interval."""
    from scipy import stats

    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, math.nan
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def to_reach(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, b in enumerate(curve) if b >= target), None)


def table(results: dict[str, list[list[float]]], trials: int, target: float) -> str:
    marks = [c for c in CHECKPOINTS if c <= trials]
    head = f"{'sampler':8}" + "".join(f"  {'best @' + str(c):>18}" for c in marks) + f"  {'trials to ' + str(target):>20}"
    lines = [head, "-" * len(head)]
    for sampler, runs in results.items():
        curves = [best_so_far(v) for v in runs]
        row = f"{sampler:8}"
        for c in marks:
            m, h = mean_ci([cu[c - 1] for cu in curves])
            row += f"  {m:>9.4f} ± {h:.4f}"
        reached = [n for n in (to_reach(cu, target) for cu in curves) if n is not None]
        mean_n = f"{sum(reached) / len(reached):.1f}" if reached else "-"
        row += f"  {mean_n:>9} ({len(reached)}/{len(curves)} runs)"
        lines.append(row)
    return "\n".join(lines)


def run_all(args: argparse.Namespace) -> dict[str, list[list[float]]]:
    with tempfile.TemporaryDirectory(prefix="hps-samplers-") as tmp:
        jobs = [(s, seed) for seed in range(args.seeds) for s in args.samplers]
        with ThreadPoolExecutor(args.jobs) as pool:
            done = list(pool.map(lambda j: run_one(j[0], j[1], args.trials, Path(tmp)), jobs))
    results: dict[str, list[list[float]]] = {s: [] for s in args.samplers}
    for (s, _), vals in zip(jobs, done, strict=True):
        results[s].append(vals)
    if args.json:
        Path(args.json).write_text(json.dumps(results))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="sampler seeds per sampler")
    ap.add_argument("--trials", type=int, default=40, help="budget of every study")
    ap.add_argument("--target", type=float, default=0.975, help="validation accuracy for 'trials to reach'")
    ap.add_argument("--jobs", type=int, default=2, help="studies run at once")
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    ap.add_argument("--json", help="also write every run's per-trial values here")
    ap.add_argument("--from-json", help="print the table of an earlier run's --json file (e.g. another --target)")
    args = ap.parse_args()
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        args.seeds = len(next(iter(results.values())))
    else:
        results = run_all(args)
    print(f"digits, dense MLP, 4 epochs; {args.trials} trials per study, {args.seeds} sampler seeds; "
          f"mean best validation accuracy ± 95% CI half-width")
    print(table(results, args.trials, args.target))


if __name__ == "__main__":
    main()
