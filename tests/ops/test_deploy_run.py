"""Rendered SLURM/PBS job scripts, run with plain bash as one array task would be.

There is no scheduler here: the scheduler's environment variables are set by hand, including a
fake CUDA_VISIBLE_DEVICES (training runs on CPU), and the signals a preemption sends go to the
batch shell only, as `--signal=B:...` does.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import optuna
import pytest
from test_deploy import _create, _dry_run

from conftest import cli_env, tiny_spec, unique
from hpsearch.ops import deploy

# ---------------------------------------------------------------- running a rendered script


def _task_env(tmp_path: Path, **scheduler: str) -> dict[str, str]:
    env = cli_env(HOME=str(tmp_path), **scheduler)
    env.pop("HPSEARCH_STORAGE", None)
    return env


def test_rendered_slurm_task_forwards_sigterm_and_the_trial_goes_back(tmp_path: Path, journal_url: str) -> None:
    # Slow trials (~0.3 s per epoch) so SIGTERM arrives mid-trial, as a preemption would.
    name = _create(tmp_path, journal_url, train={"epochs": 20, "batch_size": 16, "model": "dense",
                                                 "hidden_size": 512, "hidden_layers": 2},
                   space={"lr": {"choices": [0.01]}})
    script = tmp_path / "job.sbatch"
    script.write_text(_dry_run("slurm", name, journal_url, "--heartbeat", "5", cwd=tmp_path))
    env = _task_env(tmp_path, SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_JOB_ID="77", SLURM_SUBMIT_DIR=str(tmp_path))
    log = tmp_path / ".hpsearch" / "logs" / name / f"{name}-slurm-77-1.log"

    task = subprocess.Popen(["bash", str(script)], env=env, cwd=tmp_path)
    try:
        _wait_for_text(log, "epoch 2/20", task)
        task.send_signal(signal.SIGTERM)  # to the batch shell only, as --signal=B:TERM does
        assert task.wait(timeout=90) == 0
    finally:
        if task.poll() is None:
            task.kill()
    text = log.read_text()
    assert "SIGTERM received" in text and "handed back" in text, text
    trials = optuna.load_study(study_name=name, storage=_open(journal_url)).trials
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]  # handed back, ready for the next task
    assert trials[1].user_attrs["retry_of"] == 0


def test_rendered_pbs_task_runs_the_study_to_completion(tmp_path: Path, journal_url: str) -> None:
    name = _create(tmp_path, journal_url, space={"lr": {"choices": [0.01, 0.1]}})
    script = tmp_path / "job.pbs"
    script.write_text(_dry_run("pbs", name, journal_url, cwd=tmp_path))
    env = _task_env(tmp_path / "home", PBS_ARRAY_INDEX="0", PBS_JOBID="991[0].pbs.example",
                    PBS_O_WORKDIR=str(tmp_path))
    (tmp_path / "home").mkdir()
    proc = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path / "home", timeout=180)
    assert proc.returncode == 0
    log = tmp_path / ".hpsearch" / "logs" / name / f"{name}-pbs-991-0.log"
    assert "2 trials (2 complete)" in log.read_text()


def test_a_storage_file_supplies_the_url_at_run_time(tmp_path: Path, journal_url: str) -> None:
    name = _create(tmp_path, journal_url, space={"lr": {"choices": [0.01]}})
    script = _dry_run("slurm", name, journal_url, cwd=tmp_path)
    script = script.replace(f"HPSEARCH_STORAGE_DEFAULT={journal_url}", "HPSEARCH_STORAGE_DEFAULT=''")
    (tmp_path / "job.sbatch").write_text(script)
    secrets = tmp_path / "storage-url"
    secrets.write_text(journal_url + "\n")
    env = _task_env(tmp_path, HPSEARCH_STORAGE_FILE=str(secrets), SLURM_SUBMIT_DIR=str(tmp_path))
    assert subprocess.run(["bash", str(tmp_path / "job.sbatch")], env=env, timeout=180).returncode == 0
    secrets.unlink()
    proc = subprocess.run(["bash", str(tmp_path / "job.sbatch")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0  # no URL anywhere: the task refuses to start ...
    log = next((tmp_path / ".hpsearch" / "logs" / name).glob("*.log")).read_text()
    assert "no storage" in log  # ... and says why in its log


# ---------------------------------------------------------------- packing, run by bash

# Stands in for python: records what one worker of the task gets, then exits (3 on STUB_FAIL_ON's GPU).
STUB = """#!/bin/bash
echo "${CUDA_VISIBLE_DEVICES-unset} ${HPSEARCH_THREADS-unset} ${HPSEARCH_GPU_LOCKS:+locks}" > "$STUB_DIR/$$"
if [[ -n "${STUB_FAIL_ON:-}" && "${CUDA_VISIBLE_DEVICES-}" == "$STUB_FAIL_ON" ]]; then exit 3; fi
"""
CPUS_VAR = {"slurm": "SLURM_CPUS_PER_TASK", "pbs": "NCPUS"}


def _run_stub_task(tmp_path: Path, target: str, gpus_per_task: int, visible: str | None,
                   **extra: str) -> tuple[int, list[str], str]:
    """Run the rendered script with stub workers: (exit status, what each worker got, the task's log)."""
    stub, records = tmp_path / "python-stub", tmp_path / "records"
    stub.write_text(STUB)
    stub.chmod(0o755)
    records.mkdir()
    job = deploy.Job(study="s", workers=max(1, gpus_per_task), gpus_per_task=gpus_per_task,
                     storage_default="journal:/unused", workdir=str(tmp_path), log_dir=str(tmp_path / "logs"))
    script = tmp_path / "job.sh"
    script.write_text(deploy.render(target, job))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HPSEARCH_PYTHON": str(stub), "STUB_DIR": str(records),
           CPUS_VAR[target]: "4", **extra}
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    code = subprocess.run(["bash", str(script)], env=env, timeout=60).returncode
    log = next((tmp_path / "logs").glob("s-*-0.log")).read_text()
    return code, sorted(r.read_text().strip() for r in records.iterdir()), log


@pytest.mark.parametrize("target", ["slurm", "pbs"])
@pytest.mark.parametrize(("gpus", "visible", "extra", "workers"), [
    (2, "0,1", {}, ["0 2", "1 2"]),  # one worker per GPU, the task's 4 CPUs shared
    (3, "GPU-aa,GPU-bb,GPU-cc", {}, ["GPU-aa 1", "GPU-bb 1", "GPU-cc 1"]),  # UUIDs as the scheduler names them
    (2, None, {}, ["unset 2 locks", "unset 2 locks"]),  # GPUs fenced by cgroups: --device auto picks, per-task locks
    (2, "0,1", {"HPSEARCH_PACK": "0"}, ["0,1 4"]),  # one worker that trains on both itself
    (0, None, {}, ["unset 4"]),  # a CPU task
    (1, "NoDevFiles", {}, ["NoDevFiles 4"]),  # old SLURM's "no GPU here"
])
def test_a_task_runs_one_worker_per_gpu(tmp_path: Path, target: str, gpus: int, visible: str | None,
                                        extra: dict[str, str], workers: list[str]) -> None:
    code, got, log = _run_stub_task(tmp_path, target, gpus, visible, **extra)
    assert code == 0, log
    assert got == workers
    assert f"{len(workers)} worker(s)" in log and "task status 0" in log


def test_a_task_waits_for_all_its_workers_and_reports_a_failure(tmp_path: Path) -> None:
    code, got, log = _run_stub_task(tmp_path, "slurm", 2, "0,1", STUB_FAIL_ON="0")
    assert code == 3 and got == ["0 2", "1 2"]  # worker w0 failed, w1 still ran to its end
    assert "task status 3" in log


def _worker_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_a_packed_slurm_task_gives_each_worker_a_gpu_and_forwards_usr2_to_all(tmp_path: Path,
                                                                            journal_url: str) -> None:
    # Many epochs so the signal arrives mid-trial in both workers; one trial per worker (fuse: 1),
    # so each of them has one to hand back.
    from hpsearch.queue import plan as plan_mod
    from hpsearch.spec.parse import spec_from_dict

    name = unique("pack")  # created and rendered in this process: the CLI's part is tested above
    spec = tiny_spec(name, train={"epochs": 200, "batch_size": 16, "model": "dense", "hidden_size": 64,
                                  "hidden_layers": 1}, space={"lr": {"choices": [0.01, 0.02]}}, fuse=1)
    plan_mod.create(spec_from_dict(spec), _open(journal_url, create=True))
    script = tmp_path / "job.sbatch"
    script.write_text(deploy.render("slurm", deploy.Job(
        study=name, workers=2, gpus_per_task=2, heartbeat=5, storage_default=journal_url, workdir=str(tmp_path),
        log_dir=str(tmp_path / ".hpsearch" / "logs" / name), setup=["echo setup ran on $(hostname)"])))
    env = _task_env(tmp_path, SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_JOB_ID="78", SLURM_SUBMIT_DIR=str(tmp_path),
                    SLURM_CPUS_PER_TASK="2", CUDA_VISIBLE_DEVICES="0,1")  # training runs on CPU here
    env.pop("HPSEARCH_THREADS")
    logs = tmp_path / ".hpsearch" / "logs" / name
    task = subprocess.Popen(["bash", str(script)], env=env, cwd=tmp_path)
    try:
        for i in range(2):
            _wait_for_text(logs / f"{name}-slurm-78-0-w{i}.log", "epoch 2/200", task)
        task_log = (logs / f"{name}-slurm-78-0.log").read_text()
        pids = [int(p) for p in re.findall(r"worker w\d \(pid (\d+)\)", task_log)]
        envs = [_worker_env(p) for p in pids]
        assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1"]  # one GPU each
        assert [e["HPSEARCH_THREADS"] for e in envs] == ["1", "1"]  # the task's 2 CPUs, shared
        task.send_signal(signal.SIGUSR2)  # to the batch shell only, as --signal=B:USR2@90 does
        assert task.wait(timeout=90) == 0
    finally:
        if task.poll() is None:
            task.kill()
    task_log = (logs / f"{name}-slurm-78-0.log").read_text()
    assert task_log.index("setup ran on") < task_log.index("2 worker(s)")  # the setup, before the workers
    assert "SIGUSR2 received" in task_log and "task status 0" in task_log
    for i in range(2):
        assert "handed back" in (logs / f"{name}-slurm-78-0-w{i}.log").read_text()
    trials = optuna.load_study(study_name=name, storage=_open(journal_url)).trials
    assert sorted(t.state.name for t in trials) == ["FAIL", "FAIL", "WAITING", "WAITING"]  # both handed back


def _open(url: str, create: bool = False) -> Any:
    from hpsearch.storage.backend import open_storage

    return open_storage(url, create=create)


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen[Any], timeout: float = 90) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        assert proc.poll() is None, path.read_text() if path.exists() else "task exited early"
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path} after {timeout}s")
