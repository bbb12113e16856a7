"""SLURM/PBS job scripts and docker-compose: rendered, checked, and run where this machine allows.

There is no scheduler and no Docker engine here: rendered scripts are checked with `bash -n` and
by their directives, then run with plain bash as one array task would be (with the scheduler's
environment variables set), including the SIGTERM a preemption sends.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from conftest import ROOT, cli_env, run_cli, tiny_spec, unique, write_spec
from hpsearch import deploy
from hpsearch.errors import HpsearchError


def _create(tmp_path: Path, storage: str, **over: Any) -> str:
    name = unique("dep")
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name, **over))), "--storage", storage, check=True)
    return name


def _dry_run(target: str, name: str, storage: str, *extra: str, cwd: Path | None = None) -> str:
    proc = run_cli("launch", target, "--study", name, "--storage", storage, "--dry-run", *extra, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _bash_n(script: str, tmp_path: Path) -> None:
    path = tmp_path / "job.sh"
    path.write_text(script)
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _settings(script: str) -> dict[str, str]:
    block = script.split(deploy.BEGIN, 1)[1].split(deploy.END, 1)[0]
    return dict(re.findall(r"^(HPSEARCH_\w+)=(.*)$", block, re.M))


# ---------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(name, storage) of one study the rendering tests only read."""
    base = tmp_path_factory.mktemp("deploy")
    url = f"journal:{base / 'journal.log'}"
    return _create(base, url), url


def test_slurm_script_has_array_gpus_time_signal_and_the_worker(study: tuple[str, str], tmp_path: Path) -> None:
    name, journal_url = study
    script = _dry_run("slurm", name, journal_url, "--workers", "6", "--gpus-per-worker", "2", "--time", "2:30:00",
                      "--heartbeat", "20")
    _bash_n(script, tmp_path)
    directives = [ln for ln in script.splitlines() if ln.startswith("#SBATCH ")]
    for expected in ("--array=0-5", "--gres=gpu:2", "--time=2:30:00", f"--job-name=hps-{name}",
                     "--signal=B:TERM@120"):
        assert f"#SBATCH {expected}" in directives, directives
    assert any(d.startswith("#SBATCH --output=") and "%A_%a" in d for d in directives)  # a log per task
    s = _settings(script)
    assert s["HPSEARCH_STUDY"] == name
    assert s["HPSEARCH_STORAGE_DEFAULT"] == journal_url  # no password: the URL may be rendered
    assert "--heartbeat 20" in s["HPSEARCH_WORKER_ARGS"] and "--stop-timeout 90" in s["HPSEARCH_WORKER_ARGS"]
    assert sys.executable in s["HPSEARCH_PYTHON"]
    assert '-m hpsearch worker --study "$HPSEARCH_STUDY" $HPSEARCH_WORKER_ARGS &' in script
    assert "trap 'forward SIGTERM' TERM" in script
    assert f"study {name}: grid sampler, 4 trials planned" in script  # read from the study


def test_pbs_script_has_array_select_walltime_and_the_worker(study: tuple[str, str], tmp_path: Path) -> None:
    name, journal_url = study
    script = _dry_run("pbs", name, journal_url, "--workers", "4", "--time", "1-06:00")
    _bash_n(script, tmp_path)
    directives = [ln for ln in script.splitlines() if ln.startswith("#PBS ")]
    assert "#PBS -J 0-3" in directives
    assert "#PBS -l select=1:ncpus=4:ngpus=1:mem=16gb" in directives
    assert "#PBS -l walltime=30:00:00" in directives
    assert f"#PBS -N {f'hps-{name}'[:15]}" in directives
    assert "--stop-timeout 8" in _settings(script)["HPSEARCH_WORKER_ARGS"]  # within PBS's kill_delay
    assert 'cd "$HPSEARCH_WORKDIR"' in script and "PBS_ARRAY_INDEX" in script


def test_cpu_only_and_single_worker_jobs_drop_gpu_and_array_directives() -> None:
    job = deploy.Job(study="cpu-study", workers=1, gpus_per_worker=0)
    slurm = deploy.render("slurm", job)
    assert "--gres" not in slurm and "#SBATCH --array=0-0" in slurm
    pbs = deploy.render("pbs", job)
    assert "#PBS -J" not in pbs and "ngpus" not in pbs  # PBS arrays need two subjobs or more
    assert "#PBS -l select=1:ncpus=4:mem=16gb" in pbs


def test_site_options_become_directives() -> None:
    job = deploy.Job(study="s", workers=2, cpus=8, mem="32G", queue="gpu", account="proj-7")
    slurm = deploy.render("slurm", job)
    for d in ("--cpus-per-task=8", "--mem=32G", "--partition=gpu", "--account=proj-7"):
        assert f"#SBATCH {d}" in slurm.splitlines()
    pbs = deploy.render("pbs", job).splitlines()
    assert "#PBS -l select=1:ncpus=8:ngpus=1:mem=32gb" in pbs and "#PBS -q gpu" in pbs and "#PBS -A proj-7" in pbs


@pytest.mark.parametrize("bad", ["24h", "1:2:3:4", "ten"])
def test_bad_time_is_a_user_error(bad: str) -> None:
    with pytest.raises(HpsearchError, match="--time"):
        deploy.check_job(deploy.Job(study="s", workers=2, time=bad))


def test_pbs_walltime_converts_days() -> None:
    assert deploy.pbs_walltime("2-01:30") == "49:30:00"
    assert deploy.pbs_walltime("0:45:10") == "00:45:10"


def test_unknown_study_fails_before_rendering(study: tuple[str, str]) -> None:
    _, journal_url = study
    proc = run_cli("launch", "slurm", "--study", "no-such-study", "--storage", journal_url, "--dry-run")
    assert proc.returncode == 3 and "does not exist" in proc.stderr and not proc.stdout


# ---------------------------------------------------------------- passwords and submitting


def _stand_in(tmp_path: Path, command: str) -> Path:
    """A stand-in `sbatch`/`qsub` that records its arguments and the storage it would hand the job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / command
    path.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > "{tmp_path}/{command}.args"\n'
                    f'printf "%s" "$HPSEARCH_STORAGE" > "{tmp_path}/{command}.storage"\necho 4242\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


@pytest.mark.postgres
def test_the_password_reaches_the_job_environment_never_the_script(tmp_path: Path, pg_session_db: str) -> None:
    secret = "Sup3r-s3cret-pw"  # the test server trusts local connections, so any password works
    url = pg_session_db.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@")
    name = _create(tmp_path, url)
    for target in ("slurm", "pbs"):
        dry = run_cli("launch", target, "--study", name, "--storage", url, "--dry-run", cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr
        assert secret not in dry.stdout + dry.stderr
        assert _settings(dry.stdout)["HPSEARCH_STORAGE_DEFAULT"] == "''"
        assert "postgres:***@" in dry.stdout

        command = deploy.TARGETS[target].submit
        env = cli_env(PATH=f"{_stand_in(tmp_path, command)}{os.pathsep}{os.environ['PATH']}")
        sub = run_cli("launch", target, "--study", name, "--storage", url, "--workers", "3", env=env, cwd=tmp_path)
        assert sub.returncode == 0, sub.stderr
        assert f"submitted {target} job 4242" in sub.stdout and secret not in sub.stdout + sub.stderr
        assert (tmp_path / f"{command}.storage").read_text() == url  # through the environment
        args = (tmp_path / f"{command}.args").read_text().splitlines()
        saved = Path(args[-1])
        assert saved.parent == tmp_path / ".hpsearch" / "jobs" and secret not in saved.read_text()
        assert ("--parsable" in args) if target == "slurm" else (args[:2] == ["-v", "HPSEARCH_STORAGE"])


def test_submitting_without_the_scheduler_says_so(study: tuple[str, str]) -> None:
    name, journal_url = study
    proc = run_cli("launch", "slurm", "--study", name, "--storage", journal_url,
                   env=cli_env(PATH=str(Path(sys.executable).parent) + os.pathsep + "/usr/bin:/bin"))
    assert proc.returncode == 2
    assert "sbatch not found" in proc.stderr and "--dry-run" in proc.stderr


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


def _open(url: str) -> Any:
    from hpsearch.storage import open_storage

    return open_storage(url)


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen[Any], timeout: float = 90) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        assert proc.poll() is None, path.read_text() if path.exists() else "task exited early"
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path} after {timeout}s")


# ---------------------------------------------------------------- docker compose


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_has_the_services_and_their_order() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "create-study", "dashboard", "worker"}
    worker = services["worker"]
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["depends_on"]["create-study"]["condition"] == "service_completed_successfully"
    assert services["create-study"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["dashboard"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["create-study"]["restart"] == "no"
    assert worker["command"][:2] == ["hpsearch", "worker"]
    assert services["create-study"]["command"][:2] == ["hpsearch", "create-study"]


def test_compose_postgres_is_healthchecked_persistent_and_private() -> None:
    compose = _compose()
    pg = compose["services"]["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    volume = pg["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]  # a named volume, not a bind mount or nothing
    assert all(str(p).startswith("127.0.0.1:") for p in pg.get("ports", []))  # never 0.0.0.0
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")  # from .env, required
    assert "POSTGRES_PASSWORD" in (ROOT / ".env.example").read_text()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def _rendered_compose() -> dict[str, Any]:
    """`docker compose config` where the compose plugin exists (anchors, merges and ${...} resolved
    by Docker itself); elsewhere the YAML with its merge keys resolved the same way."""
    import shutil

    if shutil.which("docker"):
        env = {**os.environ, "POSTGRES_PASSWORD": "x"}
        proc = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
                              capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode == 0:
            return yaml.safe_load(proc.stdout)
    return _compose()


def test_compose_workers_each_take_their_own_gpu() -> None:
    """`--scale worker=N` with a `count: 1` reservation puts every replica on GPU 0: each replica
    sees all GPUs instead and takes a free one through a lock file in the shared volume."""
    compose = _rendered_compose()
    worker = compose["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == "all", device
    locks = worker["environment"]["HPSEARCH_GPU_LOCKS"]
    mounts = [str(v).split(":")[1] if isinstance(v, str) else v["target"] for v in worker["volumes"]]
    assert any(locks.startswith(m.rstrip("/") + "/") for m in mounts), (locks, mounts)  # shared by replicas
    assert "--device" not in worker["command"]  # auto: the worker picks the free GPU


def test_compose_worker_reserves_a_gpu_and_scales() -> None:
    compose = _compose()
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker  # both would break --scale worker=N
    assert worker["build"]["dockerfile"] == "Dockerfile" and (ROOT / "Dockerfile").is_file()
    assert "${POSTGRES_PASSWORD" in worker["environment"]["HPSEARCH_STORAGE"]
    dash = compose["services"]["dashboard"]
    assert "--read-only" in dash["command"] and all(str(p).startswith("127.0.0.1:") for p in dash["ports"])


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed; the file is checked by the tests above")
    proc = subprocess.run([docker, "compose", "--env-file", str(ROOT / ".env.example"), "-f",
                           str(ROOT / "docker-compose.yml"), "config", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
