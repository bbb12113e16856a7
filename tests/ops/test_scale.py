"""Scale paths: the gRPC proxy (grid exactly once, exact budget with 32 workers), the sampler filter."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, cli_env, run_cli, unique, write_spec
from hpsearch.search.filters import FilteredSampler
from hpsearch.storage.backend import open_storage
from pgcluster import free_port

# The proxy demands a token (issue 20); the proxy and its workers find it here.
ENV = cli_env(PYTHONPATH=f"{ROOT}:{ROOT / 'bench'}:{ROOT / 'tests' / 'plugins'}", HPSEARCH_ISSUE_CHUNK="8",
              HPSEARCH_TOKEN="scale-test-token-0123456789")


@pytest.fixture
def proxy(pg_url: str) -> Iterator[tuple[str, str]]:
    """`hpsearch proxy` on a free loopback port in front of a fresh PostgreSQL database."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hpsearch", "proxy", "--storage", pg_url, "--port", str(port)],
                            env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "hpsearch proxy for" in line and "***" not in line, line
    time.sleep(1.0)
    yield pg_url, f"grpc://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def _start(name: str, storage: str, n: int, tmp_path: Path) -> list[subprocess.Popen[str]]:
    return [subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--study", name, "--storage", storage,
                              "--quiet", "--heartbeat", "30"], env=ENV, cwd=ROOT, text=True,
                             stdout=open(tmp_path / f"w{i}.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
            for i in range(n)]


def _wait(procs: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    codes = [p.wait(timeout=600) for p in procs]
    logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(len(procs)))
    assert codes == [0] * len(procs), logs[-3000:]
    assert "too many clients" not in logs


def test_grid_through_the_proxy_runs_every_point_once(proxy: tuple[str, str], tmp_path: Path) -> None:
    pg, grpc = proxy
    name = unique("pgrid")
    spec = {"name": name, "objective": "bench_objectives:sleep", "metric": "loss", "direction": "minimize",
            "sampler": "grid", "repeats": 2, "train": {"sleep": 0.2, "steps": 2},
            "space": {"x": {"choices": [0.1, 0.2, 0.3]}, "y": {"choices": [1.0, 2.0, 3.0, 4.0]}}}
    # Created on PostgreSQL directly: 8 trials issued, the proxy's keeper issues the rest.
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", pg, check=True, env=ENV)
    _wait(_start(name, grpc, 4, tmp_path), tmp_path)
    trials = optuna.load_study(study_name=name, storage=open_storage(pg)).get_trials(deepcopy=False)
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 24}
    keys = Counter((t.params["x"], t.params["y"], t.user_attrs["seed"]) for t in trials)
    assert len(keys) == 24 and set(keys.values()) == {1}


def test_budget_is_exact_with_32_workers(proxy: tuple[str, str], tmp_path: Path) -> None:
    # 32 workers claiming at once through the proxy against a budget of 150 (64 took 106 s of CPU on
    # 2 cores, mostly their start: 32 make as many concurrent claims as the machine can hold open).
    pg, grpc = proxy
    name = unique("budget32")
    spec = {"name": name, "objective": "bench_objectives:sleep", "metric": "loss", "direction": "minimize",
            "sampler": {"name": "tpe", "n_startup_trials": 20}, "budget": 150, "train": {"sleep": 0.3, "steps": 1},
            "space": {"x": {"low": 0.0, "high": 1.0}, "y": {"low": 0.0, "high": 2.0}}}
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", pg, check=True, env=ENV)
    _wait(_start(name, grpc, 32, tmp_path), tmp_path)
    trials = optuna.load_study(study_name=name, storage=open_storage(pg)).get_trials(deepcopy=False)
    assert len(trials) == 150
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 150}


def test_the_sampler_never_learns_from_repeats_and_honours_its_window() -> None:
    seen: list[list[int]] = []

    class Spy(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, dist):  # type: ignore[no-untyped-def]
            seen.append([t.number for t in study._get_trials(deepcopy=False, use_cache=False)])
            return super().sample_independent(study, trial, name, dist)

    study = optuna.create_study(sampler=FilteredSampler(Spy(seed=0), window=3))
    dist = optuna.distributions.FloatDistribution(0, 1)
    for i in range(6):
        study.add_trial(optuna.trial.create_trial(params={"x": 0.1 * i}, distributions={"x": dist}, value=float(i),
                                                  user_attrs={"is_repeat": i == 4}))
    running = study.ask()  # stays running: constant liar must still see it
    nxt = study.ask()
    nxt.suggest_float("x", 0, 1)
    assert seen[-1] == [2, 3, 5, running.number, nxt.number]  # last 3 finished non-repeats + running ones


def test_the_proxy_requeues_a_killed_workers_trial(proxy: tuple[str, str], tmp_path: Path) -> None:
    pg, grpc = proxy
    name = unique("pkill")
    spec = {"name": name, "objective": "bench_objectives:sleep", "metric": "loss", "direction": "minimize",
            "sampler": "grid", "train": {"sleep": 4.0, "steps": 4}, "space": {"x": {"choices": [0.1, 0.2, 0.3]}}}
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", pg, check=True, env=ENV)
    victim = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--study", name, "--storage", grpc,
                               "--heartbeat", "2"], env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    study = optuna.load_study(study_name=name, storage=open_storage(pg))
    deadline = time.monotonic() + 60
    while not any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1.5)
    victim.kill()
    victim.wait()
    # No worker of its own reaps behind the proxy: the proxy's keeper does.
    killed = next(t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING)
    deadline = time.monotonic() + 30
    while study.get_trials(deepcopy=False)[killed.number].state == TrialState.RUNNING:
        assert time.monotonic() < deadline, "the proxy did not re-queue the dead worker's trial"
        time.sleep(0.2)
    _wait(_start(name, grpc, 2, tmp_path), tmp_path)
    trials = study.get_trials(deepcopy=False)
    assert trials[killed.number].user_attrs["fail_reason"].startswith("stale")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["x"] for t in complete) == [0.1, 0.2, 0.3]
    assert any(t.user_attrs.get("retry_of") == killed.number for t in complete)


def test_more_workers_than_server_connections_through_pgbouncer(tmp_path: Path) -> None:
    """28 direct workers, a server that takes 20 connections, pgbouncer with a pool of 8 between them."""
    from pgcluster import Bouncer, Cluster

    cluster = Cluster(max_connections=20).init()
    cluster.start()
    bouncer = Bouncer(cluster, pool_size=8)
    try:
        bouncer.start()
        cluster.create_db("crowd")
        url = bouncer.url("crowd")
        name = unique("bouncer")
        spec = {"name": name, "objective": "bench_objectives:sleep", "metric": "loss", "direction": "minimize",
                "sampler": "grid", "repeats": 2, "train": {"sleep": 0.5, "steps": 2},
                "space": {"x": {"choices": [0.1, 0.2, 0.3, 0.4, 0.5]}, "y": {"choices": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}}}
        run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", url, check=True, env=ENV)
        _wait(_start(name, url, 28, tmp_path), tmp_path)  # asserts exit 0 and no "too many clients"
        trials = optuna.load_study(study_name=name, storage=open_storage(cluster.url("crowd"))).get_trials()
        assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 60}
        keys = Counter((t.params["x"], t.params["y"], t.user_attrs["seed"]) for t in trials)
        assert len(keys) == 60 and set(keys.values()) == {1}
        assert len({t.user_attrs["worker"] for t in trials}) > 8  # more workers than server connections took part
    finally:
        bouncer.stop()
        cluster.destroy()
