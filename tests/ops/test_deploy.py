"""SLURM/PBS job scripts and docker-compose: rendered, checked and submitted to stand-ins.

There is no scheduler and no Docker engine here: rendered scripts are checked with `bash -n` and
by their directives (tests/test_deploy_run.py runs them with plain bash).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT, cli_env, run_cli, tiny_spec, unique, write_spec
from hpsearch.errors import HpsearchError
from hpsearch.ops import deploy, walltime


def _create(tmp_path: Path, storage: str, **over: Any) -> str:
    name = unique("dep")
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name, **over))), "--storage", storage, check=True)
    return name


def _dry_run(target: str, name: str, storage: str, *extra: str, cwd: Path) -> str:
    """The printed script; a SLURM dry run also creates its log directory under cwd."""
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
    # 6 workers, 2 GPUs per task (the old option name still works): 3 tasks of 2 workers each.
    script = _dry_run("slurm", name, journal_url, "--workers", "6", "--gpus-per-worker", "2", "--time", "2:30:00",
                      "--heartbeat", "20", cwd=tmp_path)
    _bash_n(script, tmp_path)
    directives = [ln for ln in script.splitlines() if ln.startswith("#SBATCH ")]
    for expected in ("--array=0-2", "--gres=gpu:2", "--time=0-02:30:00", f"--job-name=hps-{name}",
                     "--signal=B:TERM@120"):
        assert f"#SBATCH {expected}" in directives, directives
    assert any(d.startswith("#SBATCH --output=") and "%A_%a" in d for d in directives)  # a log per task
    s = _settings(script)
    assert s["HPSEARCH_STUDY"] == name
    assert s["HPSEARCH_STORAGE_DEFAULT"] == journal_url  # no password: the URL may be rendered
    assert "--heartbeat 20" in s["HPSEARCH_WORKER_ARGS"] and "--stop-timeout 90" in s["HPSEARCH_WORKER_ARGS"]
    assert sys.executable in s["HPSEARCH_PYTHON"]
    assert s["HPSEARCH_GPUS_PER_TASK"] == "2"
    assert '-m hpsearch worker --study "$HPSEARCH_STUDY"' in script
    for sig in ("TERM", "INT", "USR1", "USR2"):  # submitit's --signal=B:USR2@90 too
        assert f"trap 'forward SIG{sig}' {sig}" in script
    assert f"study {name}: grid sampler, 4 trials planned: 4 configurations x 1 seed, 0 complete" in script  # read from the study


def test_pbs_script_has_array_select_walltime_and_the_worker(study: tuple[str, str], tmp_path: Path) -> None:
    name, journal_url = study
    script = _dry_run("pbs", name, journal_url, "--workers", "4", "--time", "1-06:00", cwd=tmp_path)
    _bash_n(script, tmp_path)
    directives = [ln for ln in script.splitlines() if ln.startswith("#PBS ")]
    assert "#PBS -J 0-3" in directives
    assert "#PBS -l select=1:ncpus=4:ngpus=1:mem=16gb" in directives
    assert "#PBS -l walltime=30:00:00" in directives
    assert f"#PBS -N {f'hps-{name}'[:15]}" in directives
    assert "--stop-timeout 8" in _settings(script)["HPSEARCH_WORKER_ARGS"]  # within PBS's kill_delay
    assert 'cd "$HPSEARCH_WORKDIR"' in script and "PBS_ARRAY_INDEX" in script


def test_cpu_only_and_single_worker_jobs_drop_gpu_and_array_directives() -> None:
    job = deploy.Job(study="cpu-study", workers=1, gpus_per_task=0)
    slurm = deploy.render("slurm", job)
    assert "#SBATCH --gres" not in slurm and "#SBATCH --array=0-0" in slurm
    pbs = [ln for ln in deploy.render("pbs", job).splitlines() if ln.startswith("#PBS ")]
    assert not any(d.startswith("#PBS -J") for d in pbs)  # PBS arrays need two subjobs or more
    assert "#PBS -l select=1:ncpus=4:mem=16gb" in pbs  # no ngpus


def test_site_options_become_directives() -> None:
    job = deploy.Job(study="s", workers=2, cpus=8, mem="32G", queue="gpu", account="proj-7")
    slurm = deploy.render("slurm", job)
    for d in ("--cpus-per-task=8", "--mem=32G", "--partition=gpu", "--account=proj-7"):
        assert f"#SBATCH {d}" in slurm.splitlines()
    pbs = deploy.render("pbs", job).splitlines()
    assert "#PBS -l select=1:ncpus=8:ngpus=1:mem=32gb" in pbs and "#PBS -q gpu" in pbs and "#PBS -A proj-7" in pbs


def test_packing_makes_tasks_of_one_worker_per_gpu() -> None:
    job = deploy.Job(study="s", workers=8, gpus_per_task=4, cpus=2)  # 2 CPUs per worker
    slurm = deploy.render("slurm", job).splitlines()
    assert "#SBATCH --array=0-1" in slurm and "#SBATCH --gres=gpu:4" in slurm
    assert "#SBATCH --cpus-per-task=8" in slurm and "HPSEARCH_GPUS_PER_TASK=4" in slurm
    assert "# 8 worker(s): 2 array task(s) of 4 GPU(s), one worker per GPU" in slurm  # said in the script
    pbs = deploy.render("pbs", job).splitlines()
    assert "#PBS -J 0-1" in pbs and "#PBS -l select=1:ncpus=8:ngpus=4:mem=64gb" in pbs


@pytest.mark.parametrize(("gpus", "cpus", "mem"), [(1, 4, 16), (2, 8, 32), (4, 16, 64)])
def test_packed_tasks_request_the_templates_cpus_and_memory_per_worker(gpus: int, cpus: int, mem: int) -> None:
    job = deploy.Job(study="s", workers=8, gpus_per_task=gpus)  # the templates: 4 CPUs and 16 GB a worker
    slurm = deploy.render("slurm", job).splitlines()
    assert f"#SBATCH --cpus-per-task={cpus}" in slurm and f"#SBATCH --mem={mem}G" in slurm
    pbs = deploy.render("pbs", job).splitlines()
    assert f"#PBS -l select=1:ncpus={cpus}:ngpus={gpus}:mem={mem}gb" in pbs


def test_packed_tasks_keep_an_explicit_memory_and_scale_explicit_cpus() -> None:
    job = deploy.Job(study="s", workers=4, gpus_per_task=4, cpus=3, mem="100G")  # --mem is the task's
    assert {"#SBATCH --cpus-per-task=12", "#SBATCH --mem=100G"} <= set(deploy.render("slurm", job).splitlines())
    assert "#PBS -l select=1:ncpus=12:ngpus=4:mem=100gb" in deploy.render("pbs", job).splitlines()


def test_a_template_memory_that_cannot_be_scaled_is_one_line() -> None:
    template = deploy.template_path("slurm").read_text().replace("--mem=16G", "--mem=16.5G")
    with pytest.raises(HpsearchError, match=r"template's --mem must be a whole number.*pass --mem"):
        deploy.render("slurm", deploy.Job(study="s", workers=2, gpus_per_task=2), template=template)
    assert "#SBATCH --mem=16.5G" in deploy.render("slurm", deploy.Job(study="s", workers=2), template=template)


@pytest.mark.parametrize(("workers", "gpus", "hint"), [(6, 4, "use 4 or 8"), (3, 4, "use 4")])
def test_workers_that_do_not_fill_whole_tasks_are_refused(workers: int, gpus: int, hint: str) -> None:
    with pytest.raises(HpsearchError, match=f"--workers must be a multiple of --gpus-per-task.*{hint}"):
        deploy.render("slurm", deploy.Job(study="s", workers=workers, gpus_per_task=gpus))


def test_max_running_throttles_the_array() -> None:
    job = deploy.Job(study="s", workers=8, max_running=3)
    assert "#SBATCH --array=0-7%3" in deploy.render("slurm", job).splitlines()
    pbs = deploy.render("pbs", job).splitlines()
    assert "#PBS -J 0-7" in pbs and "#PBS -W max_run_subjobs=3" in pbs  # PBS Pro's -J has no %N
    unthrottled = deploy.render("pbs", deploy.Job(study="s", workers=8))
    assert "max_run_subjobs" not in unthrottled
    assert "#SBATCH --array=0-7" in deploy.render("slurm", deploy.Job(study="s", workers=8)).splitlines()
    single = deploy.render("pbs", deploy.Job(study="s", workers=1, max_running=3))
    assert "max_run_subjobs" not in single  # a plain job, not an array
    with pytest.raises(HpsearchError, match="--max-running must be >= 1"):
        deploy.render("slurm", deploy.Job(study="s", workers=2, max_running=0))


@pytest.mark.parametrize("target", ["slurm", "pbs"])
def test_setup_commands_run_in_order_before_the_workers(target: str) -> None:
    lines = deploy.render(target, deploy.Job(study="s", workers=2, setup=["module load cuda/12", "source venv/bin/activate"])
                          ).splitlines()
    begin = next(i for i, ln in enumerate(lines) if ln.startswith(deploy.SETUP_BEGIN))
    assert lines[begin + 1:begin + 5] == ["set +u", "module load cuda/12", "source venv/bin/activate", "set -u"]
    assert lines[begin + 5].startswith(deploy.SETUP_END)
    first_worker = next(i for i, ln in enumerate(lines) if "-m hpsearch worker" in ln)
    assert begin > next(i for i, ln in enumerate(lines) if ln.startswith("exec >>")) and begin < first_worker
    plain = deploy.render(target, deploy.Job(study="s", workers=2)).splitlines()
    begin = next(i for i, ln in enumerate(plain) if ln.startswith(deploy.SETUP_BEGIN))
    assert plain[begin + 1].startswith(deploy.SETUP_END)  # nothing to run


def test_the_worker_block_is_the_same_in_both_templates() -> None:
    def block(target: str) -> str:
        text = deploy.template_path(target).read_text()
        return text[text.index(deploy.WORKERS_BEGIN):text.index(deploy.WORKERS_END)]

    assert block("slurm") == block("pbs")


def test_a_journal_in_a_multi_node_job_is_warned_about(study: tuple[str, str], tmp_path: Path) -> None:
    name, journal_url = study
    many = run_cli("launch", "slurm", "--study", name, "--storage", journal_url, "--workers", "2", "--dry-run",
                   cwd=tmp_path)
    assert many.returncode == 0, many.stderr
    (line,) = [ln for ln in many.stderr.splitlines() if "warning" in ln]
    assert "may run on different nodes" in line and "working locks" in line and "PostgreSQL" in line
    assert "# warning: storage journal:" in many.stdout  # also in the kept script
    one = run_cli("launch", "pbs", "--study", name, "--storage", journal_url, "--workers", "2",
                  "--gpus-per-task", "2", "--dry-run")  # one task: one node
    assert one.returncode == 0 and "warning" not in one.stderr and "warning" not in one.stdout


def test_setup_and_max_running_are_refused_for_launch_local(study: tuple[str, str]) -> None:
    name, journal_url = study
    proc = run_cli("launch", "local", "--study", name, "--storage", journal_url, "--setup", "module load x",
                   "--max-running", "2")
    assert proc.returncode == 2 and "--setup and --max-running are for slurm/pbs jobs" in proc.stderr


# hours:minutes for both schedulers; SLURM alone would read "24:00" as 24 minutes.
TIMES = [
    ("24:00", "1-00:00:00", "24:00:00"),
    ("2:30", "0-02:30:00", "02:30:00"),
    ("24:00:00", "1-00:00:00", "24:00:00"),
    ("0:45:10", "0-00:45:10", "00:45:10"),
    ("90", "0-01:30:00", "01:30:00"),  # SLURM's minutes
    ("4-12", "4-12:00:00", "108:00:00"),  # SLURM's days-hours
    ("2-01:30", "2-01:30:00", "49:30:00"),
    ("1-06:00:30", "1-06:00:30", "30:00:30"),
    ("72:00", "3-00:00:00", "72:00:00"),
]


@pytest.mark.parametrize(("value", "slurm", "pbs"), TIMES)
def test_time_is_rendered_unambiguously_for_both_schedulers(value: str, slurm: str, pbs: str) -> None:
    job = deploy.Job(study="s", workers=2, time=walltime.parse(value))
    assert f"#SBATCH --time={slurm}" in deploy.render("slurm", job).splitlines()
    assert f"#PBS -l walltime={pbs}" in deploy.render("pbs", job).splitlines()


def test_launch_reads_time_as_hours_minutes(study: tuple[str, str], tmp_path: Path) -> None:
    name, journal_url = study
    for value, line in (("24:00", "1-00:00:00"), ("4-12", "4-12:00:00"), ("90", "0-01:30:00")):
        assert f"#SBATCH --time={line}" in _dry_run("slurm", name, journal_url, "--time", value, cwd=tmp_path).splitlines()
        pbs = _dry_run("pbs", name, journal_url, "--time", value, cwd=tmp_path).splitlines()
        assert f"#PBS -l walltime={walltime.pbs(walltime.parse(value))}" in pbs


def test_a_slurm_dry_run_creates_the_output_directory(study: tuple[str, str], tmp_path: Path) -> None:
    name, journal_url = study
    proc = run_cli("launch", "slurm", "--study", name, "--storage", journal_url, "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    logs = tmp_path / ".hpsearch" / "logs" / name
    output = next(ln for ln in proc.stdout.splitlines() if ln.startswith("#SBATCH --output="))
    assert output == f"#SBATCH --output={logs}/%x-%A_%a.out" and logs.is_dir()  # sbatch job.sbatch works as printed
    assert f"created {logs}/ for the job's --output" in proc.stderr
    again = run_cli("launch", "slurm", "--study", name, "--storage", journal_url, "--dry-run", cwd=tmp_path)
    assert again.returncode == 0 and "created" not in again.stderr


def test_a_slurm_dry_run_that_cannot_create_the_output_directory_is_one_line(study: tuple[str, str],
                                                                           tmp_path: Path) -> None:
    name, journal_url = study
    (tmp_path / ".hpsearch").write_text("a file where the directory would go")
    proc = run_cli("launch", "slurm", "--study", name, "--storage", journal_url, "--dry-run", "--workers", "1",
                   cwd=tmp_path)
    assert proc.returncode == 2 and not proc.stdout
    assert proc.stderr.strip().count("\n") == 0 and "must exist before sbatch" in proc.stderr, proc.stderr


@pytest.mark.parametrize(("bad", "why"), [
    ("24h", "must be minutes (90), H:MM (hours:minutes)"), ("1:2:3:4", "must be minutes"), ("ten", "must be minutes"),
    ("", "must be minutes"), ("1:75", "below 60"), ("1:00:60", "below 60"), ("1-24", "hours below 24"),
    ("0", "longer than 0"), ("0:00", "longer than 0"), ("400-00", "at most 365 days"), ("-5", "must be minutes"),
])
def test_bad_time_is_one_line(bad: str, why: str) -> None:
    with pytest.raises(HpsearchError, match=re.escape(why)) as info:
        walltime.parse(bad)
    text = str(info.value)
    assert text.startswith("--time must ") and "\n" not in text and text.endswith(f"but got time={bad!r}")


def test_bad_time_on_the_command_line_is_one_line_and_exit_2(study: tuple[str, str]) -> None:
    name, journal_url = study
    proc = run_cli("launch", "slurm", "--study", name, "--storage", journal_url, "--dry-run", "--time", "24h")
    assert proc.returncode == 2 and not proc.stdout, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "--time must be minutes (90)" in proc.stderr


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


def test_the_operations_guide_describes_the_compose_gpus_as_the_file_does() -> None:
    worker = _compose()["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == "all"
    text = " ".join((ROOT / "docs" / "operations.md").read_text().split())
    compose = text[text.index("### Docker Compose"):text.index("### SLURM")]
    assert "reserving one GPU" not in compose and "one GPU per worker" not in compose
    assert "`count: all`" in compose and "`HPSEARCH_GPU_LOCKS`" in compose and "lock file per GPU" in compose


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
