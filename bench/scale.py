"""Scale measurements: coordination cost vs study size, worker scaling, 200 workers, fast status.

    .venv/bin/python bench/scale.py [--parts cost quality scaling crowd status] [--quick]

cost     per-trial coordination (claim, suggest, 5 reports, tell) of an objective that does no work,
         in studies already holding 1k, 10k and 50k finished trials, for random, TPE and TPE with a
         window of 1,000 trials; shown as ratios to the 1k cost and as a share of a 60-second trial.
quality  best value found by TPE with and without a window on the benchmark function (in memory).
scaling  trials/second of 1..64 workers running 5-second sleeping trials against PostgreSQL, as
         efficiency relative to linear (steady state per worker: sleep / time between its trials).
crowd    200 workers against a PostgreSQL with max_connections=100, through `hpsearch proxy` and
         through pgbouncer (crowd-proxy, crowd-pgbouncer: one of them).
capacity trials/s the coordination path sustains (no-op trials, 16 workers): PostgreSQL direct,
         pgbouncer, hpsearch proxy.
status   `hpsearch status`, `best` and `report` on the 50k-trial study.
statements  SQL statements the server receives per trial (its own statement log, every statement:
         BEGIN, COMMIT and pings too), from the study's creation to the end of its last trial, one
         process running no-op trials (4 parameters, 5 reports): an hpsearch worker, and beside it
         plain Optuna (RDBStorage with a 30 s heartbeat, study.optimize) on the same trials.
Everything runs on loopback against PostgreSQL clusters this script starts itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import optuna  # noqa: E402
import sqlalchemy as sa  # noqa: E402
import yaml  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from hpsearch.queue import plan as plan_mod  # noqa: E402
from hpsearch.spec.loading import load_spec  # noqa: E402
from hpsearch.storage.backend import open_storage  # noqa: E402
from pgcluster import Cluster, free_port  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench")]), "HPSEARCH_THREADS": "1"}
SPACE = {"x": {"low": 0.0, "high": 1.0}, "y": {"low": 0.0, "high": 2.0}, "z": {"low": 0.0, "high": 3.0},
         "act": {"choices": ["relu", "tanh", "gelu"]}}


def spec_file(tmp: Path, name: str, **over: Any) -> Path:
    spec = {"name": name, "objective": "bench_objectives:instant", "metric": "loss", "direction": "minimize",
            "sampler": "random", "budget": 10, "train": {"steps": 5}, "space": SPACE}
    spec.update(over)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def engine(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))


def prefill(url: str, study: optuna.Study, n: int) -> None:
    """n finished trials with params, values and 5 reports, bulk-inserted server side (seconds, not hours)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        distribution_to_json,
    )

    sid = study._study_id
    dists = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 2), "z": FloatDistribution(0, 3),
             "act": CategoricalDistribution(["relu", "tanh", "gelu"])}
    with engine(url).begin() as c:
        base = c.execute(sa.text("SELECT coalesce(max(number), -1) + 1 FROM trials WHERE study_id = :s"), {"s": sid}).scalar()
        c.execute(sa.text("INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
                          "SELECT :b + g, :s, 'COMPLETE', now(), now() FROM generate_series(0, :n - 1) g"),
                  {"b": base, "s": sid, "n": n})
        rows = "SELECT trial_id FROM trials WHERE study_id = :s AND number >= :b"
        for name, d in dists.items():
            hi = (len(d.choices) - 1) if name == "act" else d.high
            expr = "floor(random() * 3)" if name == "act" else f"random() * {hi}"
            c.execute(sa.text(f"INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
                              f"SELECT trial_id, :p, {expr}, :d FROM ({rows}) t"),
                      {"p": name, "d": distribution_to_json(d), "s": sid, "b": base})
        c.execute(sa.text(f"INSERT INTO trial_values (trial_id, objective, value, value_type) "
                          f"SELECT trial_id, 0, random() * 10, 'FINITE' FROM ({rows}) t"), {"s": sid, "b": base})
        c.execute(sa.text(f"INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, "
                          f"intermediate_value_type) SELECT trial_id, st, random() * 10, 'FINITE' FROM ({rows}) t, "
                          f"generate_series(1, 5) st"), {"s": sid, "b": base})
        c.execute(sa.text(f"INSERT INTO trial_user_attributes (trial_id, key, value_json) "
                          f"SELECT trial_id, 'config_id', to_json('c' || trial_id)::text FROM ({rows}) t"),
                  {"s": sid, "b": base})
        c.execute(sa.text("ANALYZE"))


# ---------------------------------------------------------------- cost


def worker_seconds(url: str, name: str, n: int) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "worker.py"), "--study", name, "--storage", url, "--quiet",
                    "--n-trials", str(n)], env=ENV, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def steady_cycle(study: optuna.Study) -> float:
    """Median seconds from one trial's start to the next one's on the same worker (objective does nothing)."""
    ours = sorted(t.datetime_start.timestamp() for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if "worker" in t.user_attrs)
    return statistics.median(b - a for a, b in zip(ours, ours[1:], strict=False))


SAMPLERS: dict[str, Any] = {
    "random": "random",
    "tpe-all": {"name": "tpe", "n_startup_trials": 10, "window": 0},  # every finished trial modelled
    "tpe": {"name": "tpe", "n_startup_trials": 10},  # the default window of 2,000
    "tpe-window1000": {"name": "tpe", "n_startup_trials": 10, "window": 1000},
}


def part_cost(url: str, tmp: Path, sizes: list[int], k: int, which: list[str]) -> list[dict[str, Any]]:
    rows = []
    for label, sampler in SAMPLERS.items():
        if label not in which:
            continue
        for size in sizes:
            name = f"cost-{uuid.uuid4().hex[:6]}"
            study, _ = plan_mod.create(load_spec(spec_file(tmp, name, sampler=sampler, budget=k + 1000)),
                                        open_storage(url, create=True))
            prefill(url, study, size)
            worker_seconds(url, name, k)
            per_trial = steady_cycle(optuna.load_study(study_name=name, storage=open_storage(url)))
            rows.append({"sampler": label, "size": size, "ms": 1000 * per_trial})
            print(f"  cost {label:>16} at {size:>6} trials: {1000 * per_trial:8.1f} ms/trial", flush=True)
    return rows


def print_cost(rows: list[dict[str, Any]]) -> None:
    print("\nper-trial coordination cost (claim, suggest 4 params, 5 reports, tell; objective does nothing)")
    print(f"{'sampler':>16} {'trials in study':>16} {'ms/trial':>9} {'vs 1k':>7} {'% of 60 s trial':>16}")
    base: dict[str, float] = {}
    for r in rows:
        base.setdefault(r["sampler"], r["ms"])
        print(f"{r['sampler']:>16} {r['size']:>16} {r['ms']:>9.1f} {r['ms'] / base[r['sampler']]:>6.2f}x "
              f"{100 * r['ms'] / 60000:>15.3f}%")


# ---------------------------------------------------------------- quality


def part_quality(n_trials: int, seeds: int) -> None:
    import bench_objectives
    from hpsearch.search.filters import FilteredSampler

    print(f"\nsearch quality: best value after {n_trials} trials on the benchmark function (lower is better), "
          f"mean over {seeds} seeds, and the sampler's time per trial over the last 100 trials")
    print(f"{'sampler':>18} {'best':>8} {'ms/trial (last 100)':>20}")
    space = {"x": optuna.distributions.FloatDistribution(0, 1), "y": optuna.distributions.FloatDistribution(0, 2),
             "z": optuna.distributions.FloatDistribution(0, 3)}
    for label, window in (("tpe (full)", None), ("tpe window=200", 200), ("random", "random")):
        bests, costs = [], []
        for seed in range(seeds):
            if window == "random":
                sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=seed)
            else:
                sampler = FilteredSampler(optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10),
                                          window)
            study = optuna.create_study(sampler=sampler)
            stamps = []
            for _ in range(n_trials):
                t0 = time.perf_counter()
                trial = study.ask(space)
                stamps.append(time.perf_counter() - t0)
                study.tell(trial, bench_objectives._value(trial))
            bests.append(study.best_value)
            costs.append(1000 * statistics.mean(stamps[-100:]))
        print(f"{label:>18} {statistics.mean(bests):>8.4f} {statistics.mean(costs):>20.2f}", flush=True)


# ---------------------------------------------------------------- worker scaling


def run_workers(url: str, name: str, n: int, log_dir: Path, storage: str | None = None) -> tuple[list[int], str]:
    procs = []
    for i in range(n):
        log = open(log_dir / f"{name}-{i}.log", "w")  # noqa: SIM115
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--study", name, "--storage",
                                       storage or url, "--quiet", "--heartbeat", "30"], env=ENV, stdout=log,
                                      stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=3600) for p in procs]
    logs = "".join((log_dir / f"{name}-{i}.log").read_text() for i in range(n))
    return codes, logs


def steady_gaps(study: optuna.Study) -> list[float]:
    """Seconds between consecutive trial starts of the same worker, once every worker is running."""
    starts: dict[str, list[float]] = defaultdict(list)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        starts[t.user_attrs.get("worker", "?")].append(t.datetime_start.timestamp())
    all_running = max(min(s) for s in starts.values())
    return [b - a for s in starts.values() for a, b in zip(sorted(s), sorted(s)[1:], strict=False)
            if a >= all_running]


def steady_efficiency(study: optuna.Study, sleep: float) -> tuple[float, float]:
    """(mean, median) of sleep / time between consecutive trial starts of the same worker, in steady state.

    The mean is throughput relative to linear (all the time between trials counts, stalls
    included); the median is the typical worker's cycle. Starting 64 Python processes on 2 cores
    takes a while; gaps that begin before the last worker started its first trial measure that
    start-up storm, not coordination, and are left out.
    """
    gaps = steady_gaps(study)
    if not gaps:
        return float("nan"), float("nan")
    return sleep / statistics.mean(gaps), sleep / statistics.median(gaps)


def part_scaling(tmp: Path, counts: list[int], sleep: float, per_worker: int) -> None:
    cluster = Cluster(max_connections=400).init()
    cluster.start()
    try:
        print(f"\nworker scaling: {sleep:g}-second trials, {per_worker} per worker, PostgreSQL direct "
              f"(max_connections=400)")
        print(f"{'workers':>8} {'trials':>7} {'trials/s':>9} {'ideal/s':>8} {'efficiency':>11} {'median':>7}")
        for n in counts:
            url = cluster.create_db(f"scale{n}")
            name = f"scale{n}"
            plan_mod.create(load_spec(spec_file(tmp, name, objective="bench_objectives:sleep",
                                                 budget=n * per_worker, train={"sleep": sleep, "steps": 5})),
                             open_storage(url, create=True))
            codes, logs = run_workers(url, name, n, tmp)
            assert codes == [0] * n, logs[-2000:]
            study = optuna.load_study(study_name=name, storage=open_storage(url))
            eff, median = steady_efficiency(study, sleep)
            done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            print(f"{n:>8} {done:>7} {eff * n / sleep:>9.2f} {n / sleep:>8.2f} {100 * eff:>10.1f}% "
                  f"{100 * median:>6.1f}%", flush=True)
    finally:
        cluster.destroy()


# Plain Optuna on the statements part's workload: the same 4 parameters, 5 reports and value.
PLAIN_OPTUNA = """
import sys, warnings, optuna
sys.path.insert(0, sys.argv[3])
import bench_objectives
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval's
storage = optuna.storages.RDBStorage(sys.argv[1], heartbeat_interval=30)
study = optuna.create_study(study_name="plain", storage=storage, direction="minimize",
                            sampler=optuna.samplers.RandomSampler())

def objective(trial):
    for name, (low, high) in (("x", (0.0, 1.0)), ("y", (0.0, 2.0)), ("z", (0.0, 3.0))):
        trial.suggest_float(name, low, high)
    trial.suggest_categorical("act", ["relu", "tanh", "gelu"])
    return bench_objectives.instant(trial, {"train": {"steps": 5}})

study.optimize(objective, n_trials=int(sys.argv[2]))
"""


def part_statements(tmp: Path, trials: int) -> None:
    """The server's statements per trial, hpsearch and plain Optuna, each in a database of its own."""
    cluster = Cluster(max_connections=100).init()
    with open(cluster.data / "postgresql.conf", "a") as f:
        f.write("log_statement = 'all'\nlog_line_prefix = '%d '\n")  # each line names its database
    cluster.start()
    try:
        ours, plain = cluster.create_db("hpsearch"), cluster.create_db("plain")
        storage = open_storage(ours, create=True)  # the schemas first: not part of any trial
        optuna.storages.RDBStorage(plain.replace("postgresql://", "postgresql+psycopg2://")).engine.dispose()
        log = cluster.root / "log"
        start = len(log.read_text().splitlines())
        plan_mod.create(load_spec(spec_file(tmp, "statements", budget=trials)), storage)  # what create-study does
        codes, logs = run_workers(ours, "statements", 1, tmp)
        assert codes == [0], logs[-2000:]
        # The same driver as hpsearch's (a bare postgresql:// is psycopg 3 in SQLAlchemy 2.1).
        subprocess.run([sys.executable, "-c", PLAIN_OPTUNA, plain.replace("postgresql://", "postgresql+psycopg2://"),
                        str(trials), str(ROOT / "bench")], env=ENV, check=True)
        counts = Counter(ln.split(" ", 1)[0] for ln in log.read_text().splitlines()[start:] if "statement: " in ln)
        print(f"\nstatements per trial (the server's log, every statement; {trials} no-op trials of 4 parameters "
              f"and 5 reports, one process, from the study's creation to its end): hpsearch "
              f"{counts['hpsearch'] / trials:.1f}, plain Optuna {counts['plain'] / trials:.1f} "
              "(RDBStorage, heartbeat 30 s, study.optimize)", flush=True)
    finally:
        cluster.destroy()


# ---------------------------------------------------------------- 200 workers through the proxy


def part_crowd(tmp: Path, workers: int, budget: int, sleep: float, via: str) -> None:
    """`workers` processes against one PostgreSQL with max_connections=100, through `via`:
    `proxy` (hpsearch proxy, Optuna's gRPC storage proxy) or `pgbouncer` (transaction pooling)."""
    from pgcluster import Bouncer

    cluster = Cluster(max_connections=100).init()
    cluster.start()
    proxy = bouncer = None
    peak = [0]
    done = threading.Event()
    try:
        url = cluster.create_db("crowd")
        name = "crowd"
        plan_mod.create(load_spec(spec_file(tmp, name, objective="bench_objectives:sleep", budget=budget,
                                             train={"sleep": sleep, "steps": 2})), open_storage(url, create=True))
        if via == "proxy":
            port = free_port()
            proxy = subprocess.Popen([sys.executable, "-m", "hpsearch", "proxy", "--storage", url, "--port",
                                      str(port), "--threads", "64", "--pool", "16"], env=ENV,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(3)
            target, how = f"grpc://127.0.0.1:{port}", "hpsearch proxy (--pool 16)"
        else:
            bouncer = Bouncer(cluster, pool_size=40)
            bouncer.start()
            target, how = bouncer.url("crowd"), "pgbouncer, transaction pooling, pool of 40"

        def watch() -> None:  # the most server connections seen while the workers run
            with engine(cluster.url()).connect() as c:
                while not done.wait(0.5):
                    peak[0] = max(peak[0], c.execute(sa.text("SELECT count(*) FROM pg_stat_activity "
                                                             "WHERE backend_type = 'client backend'")).scalar())

        threading.Thread(target=watch, daemon=True).start()
        t0 = time.perf_counter()
        codes, logs = run_workers(url, name, workers, tmp, storage=target)
        wall = time.perf_counter() - t0
        done.set()
        trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        span = max(t.datetime_complete for t in complete) - min(t.datetime_start for t in complete)
        errors = Counter(line for line in logs.splitlines() if "error" in line.lower())
        for line, count in errors.most_common(3):
            print(f"  {count} x {line[:300]}")
        print(f"\n{workers} workers through {how}; PostgreSQL max_connections=100; budget {budget}, "
              f"{sleep:g}-second trials")
        print(f"  exit codes: {sum(c == 0 for c in codes)}/{workers} zero; 'too many clients' in logs: "
              f"{logs.count('too many clients')}; trials complete {len(complete)}/{budget}, other states "
              f"{len(trials) - len(complete)}; peak server connections {peak[0]}; "
              f"{len(complete) / span.total_seconds():.1f} trials/s from first start to last end; wall {wall:.0f}s")
    finally:
        done.set()
        if proxy is not None:
            proxy.terminate()
        if bouncer is not None:
            bouncer.stop()
        cluster.destroy()


# ---------------------------------------------------------------- coordination capacity


def part_capacity(tmp: Path, workers: int, per_worker: int) -> None:
    """Trials per second that the coordination path sustains when trials take no time at all.

    Capacity C means: W workers with T-second trials need W/T trials/s, so keep W/T well under C.
    """
    from pgcluster import Bouncer

    cluster = Cluster(max_connections=100).init()
    cluster.start()
    print(f"\ncoordination capacity: {workers} workers, objective does nothing (claim, 4 params, 2 reports, tell), "
          f"{per_worker} trials each; steady state")
    print(f"{'set-up':>34} {'trials/s':>9} {'ms per trial per worker':>24}")
    try:
        for i, via in enumerate(("PostgreSQL direct", "pgbouncer (transaction pooling)", "hpsearch proxy (gRPC)")):
            name = f"cap{i}"
            url = cluster.create_db(name)
            plan_mod.create(load_spec(spec_file(tmp, name, budget=workers * per_worker, train={"steps": 2})),
                             open_storage(url, create=True))
            proxy = bouncer = None
            target = url
            if via.startswith("pgbouncer"):
                bouncer = Bouncer(cluster, pool_size=20)
                bouncer.start()
                target = bouncer.url(name)
            elif via.startswith("hpsearch proxy"):
                port = free_port()
                proxy = subprocess.Popen([sys.executable, "-m", "hpsearch", "proxy", "--storage", url, "--port",
                                          str(port), "--threads", "64", "--pool", "16"], env=ENV,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
                time.sleep(3)
                target = f"grpc://127.0.0.1:{port}"
            try:
                codes, logs = run_workers(url, name, workers, tmp, storage=target)
                assert codes == [0] * workers, logs[-2000:]
            finally:
                if proxy is not None:
                    proxy.terminate()
                if bouncer is not None:
                    bouncer.stop()
            study = optuna.load_study(study_name=name, storage=open_storage(url))
            cycle = statistics.mean(steady_gaps(study))
            print(f"{via:>34} {workers / cycle:>9.1f} {1000 * cycle:>24.1f}", flush=True)
    finally:
        cluster.destroy()


# ---------------------------------------------------------------- status on 50k


def part_status(url: str, tmp: Path, size: int) -> None:
    name = f"big-{uuid.uuid4().hex[:6]}"
    study, _ = plan_mod.create(load_spec(spec_file(tmp, name, budget=10)), open_storage(url, create=True))
    prefill(url, study, size)
    print(f"\nstatus/best on a {size}-trial study")
    for cmd in (["status", name], ["best", name, "--top", "10"], ["report", name, "--out", str(tmp / "report")]):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hpsearch", *cmd, "--storage", url], env=ENV, check=True,
                       stdout=subprocess.DEVNULL)
        print(f"  hpsearch {cmd[0]:<7} {time.perf_counter() - t0:6.1f} s", flush=True)
    print("  (Optuna's own study.get_trials() alone takes ~26 s on this study: see hpsearch/storage/bulk.py)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["cost", "quality", "scaling", "crowd", "capacity", "statements", "status"])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), help="samplers of the cost part")
    parser.add_argument("--workers", nargs="+", type=int, help="worker counts of the scaling part")
    args = parser.parse_args()
    q = args.quick
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        os.chmod(tmp, 0o755)
        needs_pg = {"cost", "status"} & set(args.parts)
        cluster = Cluster(max_connections=100).init() if needs_pg else None
        try:
            if cluster:
                cluster.start()
                url = cluster.create_db("bench")
            if "cost" in args.parts:
                print_cost(part_cost(url, tmp, [1000, 2000] if q else [1000, 10000, 50000], 10 if q else 30,
                                     args.samplers))
            if "quality" in args.parts:
                part_quality(200 if q else 1500, 2 if q else 3)
            if "scaling" in args.parts:
                part_scaling(tmp, args.workers or ([1, 4] if q else [1, 2, 4, 8, 16, 32, 64]), 1.0 if q else 5.0,
                             3 if q else 10)
            for via in ("proxy", "pgbouncer"):
                if "crowd" in args.parts or f"crowd-{via}" in args.parts:
                    part_crowd(tmp, 20 if q else 200, 40 if q else 600, 1.0, via)
            if "capacity" in args.parts:
                part_capacity(tmp, 4 if q else 16, 10 if q else 40)
            if "statements" in args.parts:
                part_statements(tmp, 20 if q else 100)
            if "status" in args.parts:
                part_status(url, tmp, 2000 if q else 50000)
        finally:
            if cluster:
                cluster.destroy()


if __name__ == "__main__":
    main()
