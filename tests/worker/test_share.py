"""A worker's share of the machine: threads and GPUs from the live workers' slots, with real
processes holding real lock files, real taskset confinement and real workers on real studies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from conftest import ROOT, cli_env, run_cli, start_worker, tiny_spec, unique, write_spec
from faultkit import assert_exactly_once, hold, wait_blocked
from hpsearch import schema
from hpsearch.errors import HpsearchError
from hpsearch.storage.backend import open_storage
from hpsearch.worker import share

HOLD = """
import sys, time
from hpsearch.worker import share
s = share.join("url", sys.argv[3], "holder", int(sys.argv[1]), sys.argv[2])
print(s.gpu, *s.threads(), sep="|", flush=True)
for line in sys.stdin:  # each line asks for the share again
    print(s.gpu, *s.threads(), sep="|", flush=True)
"""


def _hold(locks: Path, n_gpus: int = 0, study: str = "s", env: dict[str, str] | None = None,
          cpus: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in (env or os.environ).items() if k != "HPSEARCH_THREADS"}
    cmd = [sys.executable, "-c", HOLD, str(n_gpus), str(locks), study]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)


def _read(p: subprocess.Popen[str]) -> tuple[str, int, str]:
    gpu, threads, why = p.stdout.readline().strip().split("|")  # type: ignore[union-attr]
    return gpu, int(threads), why


def _ask(p: subprocess.Popen[str]) -> tuple[str, int, str]:
    p.stdin.write("\n")  # type: ignore[union-attr]
    p.stdin.flush()  # type: ignore[union-attr]
    return _read(p)


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.kill()
        p.wait()


# ---------------------------------------------------------------- GPUs


def test_more_workers_than_gpus_share_the_least_held_one_and_a_dead_ones_gpu_comes_back(tmp_path: Path) -> None:
    procs = [_hold(tmp_path, 3) for _ in range(3)]
    try:
        taken = [int(_read(p)[0]) for p in procs]
        assert sorted(taken) == [0, 1, 2]
        fourth = _hold(tmp_path, 3)  # all held once: the first of them, and it says so
        procs.append(fourth)
        assert _read(fourth)[0] == "0"
        victim = procs[taken.index(2)]
        victim.kill()  # kill -9: the kernel releases its slot's lock
        victim.wait()
        procs.remove(victim)
        assert _read(again := _hold(tmp_path, 3))[0] == "2"  # the dead worker's GPU, not a shared one
        procs.append(again)
        # Held now: 0 twice, 1 once, 2 once: the next two take 1 and 2, never by process id.
        fifth = _hold(tmp_path, 3)
        procs.append(fifth)
        assert _read(fifth)[0] == "1"
        sixth = _hold(tmp_path, 3)
        procs.append(sixth)
        assert _read(sixth)[0] == "2"
    finally:
        _stop(procs)
    assert "sharing cuda:0 (the least held)" in fourth.communicate()[1]


def test_three_workers_on_two_gpus_the_third_shares_the_least_held(tmp_path: Path) -> None:
    a, b = _hold(tmp_path, 2), _hold(tmp_path, 2)
    procs = [a, b]
    try:
        gpu_a, gpu_b = _read(a)[0], _read(b)[0]
        assert {gpu_a, gpu_b} == {"0", "1"}
        c = _hold(tmp_path, 2)
        procs.append(c)
        assert _read(c)[0] == "0"  # both held once: the first
        a.kill()
        a.wait()
        d = _hold(tmp_path, 2)
        procs.append(d)
        assert _read(d)[0] == gpu_a  # the dead worker's GPU is the least held now
    finally:
        _stop(procs)


def test_workers_that_see_different_gpus_count_the_same_physical_one(tmp_path: Path) -> None:
    # `launch` or a scheduler hands one worker only GPU 1 (it is its cuda:0); a worker that sees
    # both must count GPU 1 as held.
    pinned = _hold(tmp_path, 1, env={**os.environ, "CUDA_VISIBLE_DEVICES": "1"})
    try:
        assert _read(pinned)[0] == "0"
        both = _hold(tmp_path, 2, env={**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"})
        assert _read(both)[0] == "0"
        third = _hold(tmp_path, 2, env={**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"})
        assert _read(third)[0] in ("0", "1")
        _stop([both, third])
    finally:
        _stop([pinned])
    slots = share.live_slots(tmp_path)
    assert slots == []  # every holder is dead: their slots are gone


def test_an_unwritable_lock_directory_is_one_clear_error_with_gpus_to_share(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(HpsearchError, match="HPSEARCH_GPU_LOCKS must be a directory"):
        share.join("u", "s", "w", 2, str(blocker / "locks"))
    alone = share.join("u", "s", "w", 0, str(blocker / "locks"))  # on CPU: a warning, and the worker runs alone
    assert alone.peers() == [alone.mine] and alone.gpu is None


# ---------------------------------------------------------------- threads


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_threads_are_the_cpus_divided_among_the_live_workers(tmp_path: Path) -> None:
    n = len(os.sched_getaffinity(0))
    first = _hold(tmp_path)
    procs = [first]
    try:
        assert _read(first)[1:] == (n, f"{n} CPUs shared by 1 worker")
        second = _hold(tmp_path)
        procs.append(second)
        assert _read(second)[1] == n // 2
        assert _ask(first)[1:] == (n // 2, f"{n} CPUs shared by 2 workers")  # the newcomer counts at once
        pinned = _hold(tmp_path, cpus="0")  # taskset: one CPU, shared with the two others
        procs.append(pinned)
        assert _read(pinned)[1:] == (1, "1 CPU shared by 3 workers")
        second.kill()  # kill -9: its share comes back to the others at their next question
        second.wait()
        assert _ask(first)[1] == n // 2  # first and pinned still overlap on CPU 0
        pinned.kill()
        pinned.wait()
        assert _ask(first)[1] == n
    finally:
        _stop(procs)


def test_a_worker_confined_to_one_cpu_runs_one_thread(tmp_path: Path) -> None:
    p = _hold(tmp_path, cpus="0")
    try:
        assert _read(p)[1] == 1
    finally:
        _stop([p])


def test_hpsearch_threads_wins_and_is_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = share.join("u", "s", "w", 0, str(tmp_path))
    try:
        monkeypatch.setenv("HPSEARCH_THREADS", "3")
        assert s.threads() == (3, "HPSEARCH_THREADS")
        for bad in ("abc", "0", "-2", "1.5"):
            monkeypatch.setenv("HPSEARCH_THREADS", bad)
            with pytest.raises(HpsearchError, match=f"HPSEARCH_THREADS must be an integer >= 1, but got '{bad}'"):
                s.threads()
    finally:
        s.leave()
    assert share.live_slots(tmp_path) == []


def _slot(wid: str, cpus: list[int], cgroup: str = "g", study: str = "s") -> share.Slot:
    return share.Slot(wid=wid, cpus=cpus, cgroup=cgroup, quota=None, study=study)


@pytest.mark.parametrize(("mine", "cap", "others", "expected"), [
    (_slot("a", [0, 1, 2, 3]), None, [], 4),
    (_slot("a", [0, 1, 2, 3]), None, [_slot("b", [0, 1, 2, 3])], 2),
    (_slot("a", [0, 1, 2, 3]), None, [_slot("b", [4, 5])], 4),  # another socket: not a peer
    (_slot("a", [0, 1]), None, [_slot("b", [0, 1]), _slot("c", [0, 1])], 1),  # never 0
    (_slot("a", list(range(16))), 2.0, [_slot("b", list(range(16)), "other")], 2),  # another container's quota
    (_slot("a", list(range(16))), 2.0, [_slot("b", list(range(16)))], 1),  # the same container's quota
    (_slot("a", list(range(16))), 1.5, [], 1),  # docker --cpus 1.5: one thread, not an oversubscribed 2
])
def test_fair_threads(mine: share.Slot, cap: float | None, others: list[share.Slot], expected: int) -> None:
    assert share.fair_threads(mine, cap, [mine, *others])[0] == expected


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "400000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 4.0),
    ({}, None),
])
def test_cgroup_quota_v1_and_v2(tmp_path: Path, files: dict[str, str], expected: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert share.cgroup_quota(str(tmp_path)) == expected


@pytest.mark.parametrize(("env", "expected"), [
    ({"SLURM_CPUS_PER_TASK": "6"}, 6),
    ({"PBS_JOBID": "1.pbs", "PBS_NCPUS": "8"}, 8),
    ({"PBS_JOBID": "1.pbs", "NCPUS": "3"}, 3),
    ({"NCPUS": "3"}, None),  # not inside a PBS job: somebody else's variable
    ({"SLURM_CPUS_PER_TASK": "x"}, None),
])
def test_scheduler_allocations(env: dict[str, str], expected: int | None) -> None:
    assert share.scheduler_cpus(env) == expected


def test_a_slot_half_written_by_a_dead_worker_is_cleaned(tmp_path: Path) -> None:
    stale = tmp_path / ".tmp-dead"
    stale.write_text("{")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    (tmp_path / "garbage.slot").write_text("not json")  # unlocked: a dead worker's
    assert share.live_slots(tmp_path) == []
    assert not stale.exists() and not (tmp_path / "garbage.slot").exists()


# ---------------------------------------------------------------- real workers


def _no_threads_env(locks: Path, **extra: str) -> dict[str, str]:
    env = cli_env(HPSEARCH_GPU_LOCKS=str(locks), **extra)
    env.pop("HPSEARCH_THREADS")
    return env


def _study(name: str, url: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def _trials(name: str, url: str) -> list[optuna.trial.FrozenTrial]:
    return _study(name, url).trials


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset")
def test_a_worker_under_taskset_trains_with_one_thread_and_records_how(tmp_path: Path, journal_url: str) -> None:
    name = unique("share")
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name))), "--storage", journal_url, check=True)
    env = _no_threads_env(tmp_path / "locks")
    proc = subprocess.run(["taskset", "-c", "0", sys.executable, str(ROOT / "worker.py"), "--study", name,
                           "--storage", journal_url, "--fuse", "2"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 thread: 1 CPU shared by 1 worker" in proc.stdout
    trials = _trials(name, journal_url)
    assert len(trials) == 4
    import torch

    for t in trials:
        assert t.user_attrs[schema.THREADS] == 1 and t.user_attrs[schema.DEVICE] == "cpu"
        assert t.user_attrs[schema.FUSED] == 2
        assert t.user_attrs[schema.TORCH_VERSION] == torch.__version__.split("+")[0]
        assert t.user_attrs[schema.HPSEARCH_VERSION]
    export = run_cli("export", name, "--storage", journal_url, "--format", "csv", check=True).stdout
    header, first = export.splitlines()[:2]
    cols = dict(zip(header.split(","), first.split(","), strict=False))
    assert cols[schema.THREADS] == "1" and cols[schema.FUSED] == "2" and cols[schema.DEVICE] == "cpu"
    assert cols[schema.TORCH_VERSION] and cols[schema.HPSEARCH_VERSION]


def test_a_bad_hpsearch_threads_is_one_line(tmp_path: Path, journal_url: str) -> None:
    name = unique("share")
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name))), "--storage", journal_url, check=True)
    proc = run_cli("worker", "--study", name, "--storage", journal_url, env=cli_env(HPSEARCH_THREADS="abc"))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["hpsearch: error: HPSEARCH_THREADS must be an integer >= 1, but got 'abc'"]
    assert all(t.state == optuna.trial.TrialState.WAITING for t in _trials(name, journal_url))  # nothing taken


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_a_worker_that_starts_changes_the_others_share_at_their_next_claim(tmp_path: Path, journal_url: str) -> None:
    name = unique("share")
    n = len(os.sched_getaffinity(0))
    spec = tiny_spec(name, space={"lr": {"choices": [0.001 * (i + 1) for i in range(12)]}}, fuse=1,
                     train={"epochs": 3, "batch_size": 32, "model": "dense", "hidden_size": 64, "hidden_layers": 2})
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", journal_url, check=True)
    locks = tmp_path / "locks"
    log = tmp_path / "worker.log"
    worker = start_worker(name, journal_url, env=_no_threads_env(locks), log=log)
    holder = None
    try:
        deadline = time.monotonic() + 120
        while "complete:" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        holder = _hold(locks, study="another study")  # a second process on the same cores
        _read(holder)
        assert worker.wait(timeout=300) == 0
    finally:
        if holder is not None:
            _stop([holder])
        worker.kill()
    text = log.read_text()
    assert f"{n} threads: {n} CPUs shared by 1 worker" in text, text
    assert f"threads: {n} -> {n // 2} ({n} CPUs shared by 2 workers)" in text, text
    threads = [t.user_attrs[schema.THREADS] for t in sorted(_trials(name, journal_url), key=lambda t: t.number)]
    assert threads[0] == n and threads[-1] == n // 2, threads


def test_two_fused_workers_on_an_8_point_grid_each_train_members(tmp_path: Path, pg_url: str) -> None:
    name = unique("fair")
    spec = tiny_spec(name, space={"lr": {"choices": [0.001 * (i + 1) for i in range(8)]}}, fuse=8,
                     train={"epochs": 6, "batch_size": 32, "model": "dense", "hidden_size": 64, "hidden_layers": 2})
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", pg_url, check=True)
    env = cli_env(HPSEARCH_GPU_LOCKS=str(tmp_path / "locks"))
    env.pop("HPSEARCH_FUSE", None)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    # "Started together", at the worst moment: the trials table is locked from a second session, the
    # first worker is already waiting in its first claim when the second one starts, and both go on
    # once the second has joined. The first must count it (on CI, the second once started only after
    # the first had trained all 8).
    workers = []
    with hold(pg_url, "LOCK TABLE trials IN EXCLUSIVE MODE"):
        for log in logs:
            workers.append(start_worker(name, pg_url, env=env, log=log))
            deadline = time.monotonic() + 120
            while f"on study {name!r}" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)  # joined the machine's share, about to claim
            wait_blocked(pg_url, sessions=len(workers))
    for w in workers:
        assert w.wait(timeout=300) == 0
    by_worker: dict[str, int] = {}
    trials = _trials(name, pg_url)
    for t in trials:
        by_worker[t.user_attrs[schema.WORKER]] = by_worker.get(t.user_attrs[schema.WORKER], 0) + 1
    # The first claim takes its share of 8 among the 2 live workers (4), never all 8: both train
    # members. How the rest splits depends on which finishes first (4/4, 6/2), so only that is asserted.
    assert len(by_worker) == 2, (by_worker, [log.read_text() for log in logs])
    assert max(t.user_attrs[schema.FUSED] for t in trials) <= 4
    assert_exactly_once(_study(name, pg_url), 8)


def test_a_rerun_with_the_same_threads_and_device_is_bitwise_the_same(tmp_path: Path, journal_url: str) -> None:
    # What the README promises: same thread count and device -> the same curve, to the last bit,
    # whichever worker runs it and whenever. (A different thread count sums in another order.)
    curves = []
    for run in range(2):
        name = unique("rerun")
        spec = tiny_spec(name, space={"lr": {"choices": [0.05]}}, fuse=1,
                         train={"epochs": 3, "batch_size": 32, "model": "dense", "hidden_size": 32, "hidden_layers": 2,
                                "optimizer": "adam", "dropout": 0.2})
        run_cli("create-study", str(write_spec(tmp_path, spec, f"{run}.yaml")), "--storage", journal_url, check=True)
        proc = start_worker(name, journal_url, env=_no_threads_env(tmp_path / f"locks-{run}", HPSEARCH_THREADS="2"))
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        (trial,) = _trials(name, journal_url)
        assert trial.user_attrs[schema.THREADS] == 2
        curves.append([{k: v for k, v in e.items() if k != "epoch_time"} for e in trial.user_attrs[schema.CURVE]]
                      + [trial.user_attrs[schema.TEST_LOSS], trial.value])
    assert curves[0] == curves[1]


@pytest.mark.parametrize("device", ["meta", "mps", "nonsense"])
def test_a_device_that_cannot_train_is_one_line_before_any_claim(tmp_path: Path, journal_url: str, device: str) -> None:
    name = unique("dev")
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name))), "--storage", journal_url, check=True)
    proc = run_cli("worker", "--study", name, "--storage", journal_url, "--device", device)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"hpsearch: error: --device must be auto, cpu or cuda:K, but got {device!r}"], proc.stderr
    assert all(t.state == optuna.trial.TrialState.WAITING for t in _trials(name, journal_url))  # no trial burnt
