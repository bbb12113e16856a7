"""Per-trial service overhead on PostgreSQL next to training time, at 100 and 1,000 trials in a study.

    .venv/bin/python bench/overhead.py [--workers 2] [--trials 16] [--sizes 100 1000]

For each size, a fresh study is filled with that many finished trials (params, per-epoch reports,
curves: what a real study holds), then N real worker processes run `--trials` more real trainings
(digits, dense MLP, 5 epochs). Each worker measures, per trial, the seconds spent in database calls
on the trial's critical path (claim, suggest, per-epoch reports and attributes, tell) and the whole
trial; training = the rest. Printed as ratios measured in the same run, so machine noise cancels.
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
from pathlib import Path

import optuna
import sqlalchemy as sa
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpsearch.queue import plan as plan_mod  # noqa: E402
from hpsearch.spec.loading import load_spec  # noqa: E402
from hpsearch.storage.backend import open_storage  # noqa: E402

ADMIN = os.environ.get("HPSEARCH_BENCH_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
SPEC = {
    "name": "overhead", "sampler": {"name": "tpe", "n_startup_trials": 10}, "pruner": "none",
    "dataset": {"name": "digits"}, "budget": {"trials": 1},
    "train": {"epochs": 5, "batch_size": 64, "model": "dense", "hidden_size": 64, "hidden_layers": 2},
    "space": {"lr": {"low": 1e-3, "high": 1e-1, "log": True}, "optimizer": {"choices": ["sgd", "momentum", "adam"]},
              "dropout": {"low": 0.0, "high": 0.5}},
}


def fill(study: optuna.Study, n: int, epochs: int = 5) -> None:
    """n finished trials shaped like real ones, written through Optuna's API."""
    import random

    rnd = random.Random(0)
    dists = {"lr": FloatDistribution(1e-3, 1e-1, log=True), "optimizer": CategoricalDistribution(["sgd", "momentum", "adam"]),
             "dropout": FloatDistribution(0.0, 0.5)}
    trials = []
    for i in range(n):
        params = {"lr": 10 ** rnd.uniform(-3, -1), "optimizer": rnd.choice(["sgd", "momentum", "adam"]),
                  "dropout": rnd.uniform(0, 0.5)}
        curve = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.9, "val_loss": 1 / e, "val_acc": 0.8 + 0.02 * e,
                  "lr": params["lr"], "epoch_time": 0.1} for e in range(1, epochs + 1)]
        trials.append(optuna.trial.create_trial(
            state=TrialState.COMPLETE, params=params, distributions=dists, value=0.9 + rnd.random() / 20,
            intermediate_values={e: 0.8 + 0.02 * e for e in range(1, epochs + 1)},
            user_attrs={"seed": 0, "config_id": f"c{i}", "curve": curve, "val_acc": 0.9, "test_acc": 0.9}))
    study.add_trials(trials)


def run(size: int, workers: int, trials: int, tmp: Path) -> dict[str, float]:
    db = f"hps_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{db}"'))
    url = ADMIN.rsplit("/", 1)[0].replace("+psycopg2", "") + f"/{db}"
    try:
        spec_path = tmp / f"overhead-{size}.yaml"
        spec_path.write_text(yaml.safe_dump({**SPEC, "budget": {"trials": trials}}))
        storage = open_storage(url, create=True)
        study, _ = plan_mod.create(load_spec(spec_path), storage)
        t0 = time.perf_counter()
        fill(study, size)
        fill_s = time.perf_counter() - t0
        env = {**os.environ, "HPSEARCH_THREADS": "1", "PYTHONPATH": str(ROOT)}
        procs = [subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--study", "overhead", "--storage", url,
                                   "--device", "cpu", "--quiet", "--seed", str(i)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(workers)]
        for p in procs:
            _, err = p.communicate(timeout=1800)
            if p.returncode:
                raise SystemExit(f"worker failed: {err}")
        done = [t for t in study.get_trials(deepcopy=False) if "service_s" in t.user_attrs]
        service = [t.user_attrs["service_s"] for t in done]
        total = [t.user_attrs["duration_s"] for t in done]
        train = [d - s for d, s in zip(total, service, strict=True)]
        return {"size": size, "n": len(done), "service_ms": 1000 * statistics.median(service),
                "train_ms": 1000 * statistics.median(train), "ratio": statistics.median(
                    s / max(t, 1e-9) for s, t in zip(service, train, strict=True)), "fill_s": fill_s}
    finally:
        optuna.storages.RDBStorage  # noqa: B018 - keep the import used; connections close with the process
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=16, help="trials run by the workers at each size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            rows.append(run(size, args.workers, args.trials, Path(tmp)))
    print(f"\nservice overhead per trial, {args.workers} workers on PostgreSQL, digits dense MLP, 5 epochs (medians)")
    print(f"{'trials in study':>16} {'measured':>9} {'service ms':>11} {'training ms':>12} {'service/train':>14}")
    for r in rows:
        print(f"{r['size']:>16} {r['n']:>9} {r['service_ms']:>11.1f} {r['train_ms']:>12.1f} {r['ratio']:>14.3f}")
    if len(rows) > 1:
        print(f"service time at {rows[-1]['size']} vs {rows[0]['size']} trials: "
              f"{rows[-1]['service_ms'] / rows[0]['service_ms']:.2f}x")


if __name__ == "__main__":
    main()
