"""`hpsearch launch slurm|pbs`: render the job-array script for a study, then submit or print it.

The scripts in deploy/slurm/ and deploy/pbs/ are templates and also work as they are (sbatch/qsub
them with HPSEARCH_STUDY set). Rendering rewrites their scheduler directives (array size and
throttle, GPUs, time), their settings block (study, python, worker options, log directory) and
their setup block (`--setup` commands, run before the workers).

Packing: an array task with N GPUs runs N workers, one per GPU (`--workers` counts workers, so
`--workers 8 --gpus-per-task 4` is 2 tasks). The worker code only ever trains on one GPU, so a
task that reserved N GPUs for one worker would leave N - 1 of them idle. The templates' CPUs and
memory are one worker's share, so a task of N workers requests N times them (`--cpus-per-worker`
likewise; an explicit `--mem` is the whole task's).

Wall time (--time) is read once into seconds (hpsearch.ops.walltime: a two-field value is
hours:minutes for both schedulers) and rendered in a form each reads one way only. A dry run
creates the SLURM --output directory, since the printed script is submitted by hand and SLURM
needs that directory before the script starts.

The storage URL's password is never written into a script, printed or logged: a password-free URL
is rendered as the default; one with a password reaches the job through the environment at submit
time (HPSEARCH_STORAGE, exported by sbatch and by `qsub -v`) or through a secrets file read at run
time (HPSEARCH_STORAGE_FILE, default ~/.config/hpsearch/storage).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hpsearch.errors import HpsearchError
from hpsearch.ops import walltime
from hpsearch.storage.backend import mask, resolve_url

BEGIN, END = "# >>> hpsearch settings", "# <<< hpsearch settings"
SETUP_BEGIN, SETUP_END = "# >>> hpsearch setup", "# <<< hpsearch setup"
WORKERS_BEGIN, WORKERS_END = "# >>> hpsearch workers", "# <<< hpsearch workers"
FILE_STORAGES = ("journal", "sqlite")
_MEM_RE = re.compile(r"(?P<n>\d+)(?P<unit>[KMGTkmgt]?[Bb]?)")


@dataclass(frozen=True)
class Target:
    template: str  # path under deploy/
    submit: str  # the submit command
    suffix: str
    stop_timeout: int  # seconds the worker gets to hand its trial back before SIGKILL


TARGETS = {
    "slurm": Target("slurm/hpsearch-array.sbatch", "sbatch", ".sbatch", stop_timeout=90),  # --signal=B:TERM@120
    "pbs": Target("pbs/hpsearch-array.pbs", "qsub", ".pbs", stop_timeout=8),  # kill_delay is 10 s by default
}


@dataclass
class Job:
    """What a rendered script says; everything but the storage password."""

    study: str
    workers: int  # in all: each array task runs one per GPU
    gpus_per_task: int = 1
    time: int = 86400  # wall time per array task in seconds (walltime.parse of --time)
    heartbeat: int = 30
    device: str = "auto"
    storage_default: str = ""  # rendered only when it has no password
    storage_shown: str = ""  # masked, for the comment
    workdir: str = "."
    log_dir: str = ".hpsearch/logs"
    python: str = sys.executable
    cpus: int | None = None
    mem: str | None = None
    queue: str | None = None  # SLURM partition / PBS queue
    account: str | None = None
    max_running: int | None = None  # array tasks running at once (SLURM %N, PBS max_run_subjobs)
    setup: list[str] = field(default_factory=list)  # shell lines run before the workers
    note: str = ""

    @property
    def workers_per_task(self) -> int:
        return max(1, self.gpus_per_task)

    @property
    def tasks(self) -> int:
        return max(1, self.workers // self.workers_per_task)


# ---------------------------------------------------------------- rendering


def template_path(target: str) -> Path:
    """deploy/ of this checkout, or HPSEARCH_DEPLOY_DIR (a site's edited copy of the templates)."""
    base = Path(os.environ.get("HPSEARCH_DEPLOY_DIR") or Path(__file__).resolve().parents[2] / "deploy")
    path = base / TARGETS[target].template
    if not path.is_file():
        raise HpsearchError(f"job template {path} not found; set HPSEARCH_DEPLOY_DIR to a directory holding "
                            f"{TARGETS[target].template}")
    return path


def render(target: str, job: Job, template: str | None = None) -> str:
    check_job(job)
    text = template if template is not None else template_path(target).read_text()
    lines = text.splitlines()
    lines = _slurm_directives(lines, job) if target == "slurm" else _pbs_directives(lines, job)
    lines = _settings_block(lines, target, job)
    lines = _setup_block(lines, target, job)
    return mask("\n".join(lines) + "\n")  # belt and braces: no URL password leaves this function


def check_job(job: Job) -> None:
    if job.workers < 1:
        raise HpsearchError(f"--workers must be >= 1, but got workers={job.workers}")
    if job.gpus_per_task < 0:
        raise HpsearchError(f"--gpus-per-task must be >= 0, but got gpus_per_task={job.gpus_per_task}")
    per = job.workers_per_task
    if job.workers % per:
        low, high = job.workers - job.workers % per, job.workers - job.workers % per + per
        raise HpsearchError(f"--workers must be a multiple of --gpus-per-task (each array task runs one worker per "
                            f"GPU), but got workers={job.workers}, gpus_per_task={per}; use "
                            + (f"{low} or {high}" if low else f"{high}"))
    if job.max_running is not None and job.max_running < 1:
        raise HpsearchError(f"--max-running must be >= 1, but got max_running={job.max_running}")
    if isinstance(job.time, bool) or not isinstance(job.time, int) or job.time <= 0:
        raise HpsearchError(f"--time must be a positive number of seconds once read, but got time={job.time!r}")


def _job_name(study: str, limit: int) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"hps-{study}")
    return name[:limit]


def _slurm_directives(lines: list[str], job: Job) -> list[str]:
    d = "#SBATCH "
    per = job.workers_per_task
    cpus = job.cpus * per if job.cpus else _scaled(_template_value(lines, f"{d}--cpus-per-task="), per, "--cpus-per-task")
    mem = job.mem or _scaled(_template_value(lines, f"{d}--mem="), per, "--mem")
    sets = {
        f"{d}--job-name=": f"{d}--job-name={_job_name(job.study, 64)}",
        f"{d}--array=": f"{d}--array=0-{job.tasks - 1}" + (f"%{job.max_running}" if job.max_running else ""),
        f"{d}--gres=": f"{d}--gres=gpu:{job.gpus_per_task}" if job.gpus_per_task else None,
        f"{d}--time=": f"{d}--time={walltime.slurm(job.time)}",
        f"{d}--output=": f"{d}--output={job.log_dir}/%x-%A_%a.out",
        f"{d}--cpus-per-task=": f"{d}--cpus-per-task={cpus}" if cpus else ...,
        f"{d}--mem=": f"{d}--mem={mem}" if mem else ...,
        f"{d}--partition=": f"{d}--partition={job.queue}" if job.queue else ...,
        f"{d}--account=": f"{d}--account={job.account}" if job.account else ...,
    }
    return _directives(lines, sets, d)


def _pbs_directives(lines: list[str], job: Job) -> list[str]:
    d = "#PBS "
    select = _pbs_select(next((ln for ln in lines if ln.startswith(f"{d}-l select=")), f"{d}-l select=1"), job)
    sets = {
        f"{d}-N ": f"{d}-N {_job_name(job.study, 15)}",  # PBS's historical 15-character limit
        # A PBS Pro array needs at least two subjobs; one task is a plain job.
        f"{d}-J ": f"{d}-J 0-{job.tasks - 1}" if job.tasks > 1 else None,
        # PBS Pro's -J takes no %N; its throttle is this job attribute (a server without it
        # refuses the job at qsub, so an unthrottled array never starts by surprise).
        f"{d}-W max_run_subjobs=": f"{d}-W max_run_subjobs={job.max_running}"
        if job.max_running and job.tasks > 1 else None,
        f"{d}-l select=": select,
        f"{d}-l walltime=": f"{d}-l walltime={walltime.pbs(job.time)}",
        f"{d}-q ": f"{d}-q {job.queue}" if job.queue else ...,
        f"{d}-A ": f"{d}-A {job.account}" if job.account else ...,
    }
    return _directives(lines, sets, d)


def _pbs_select(line: str, job: Job) -> str:
    chunks, _, spec = line.partition("select=")[2].partition(":")
    res = dict(part.split("=", 1) for part in spec.split(":") if "=" in part)
    per = job.workers_per_task
    cpus = job.cpus * per if job.cpus else _scaled(res.get("ncpus"), per, "ncpus")
    if cpus:
        res["ncpus"] = str(cpus)
    if job.mem:
        res["mem"] = job.mem.lower() if job.mem[-1:].lower() == "b" else f"{job.mem.lower()}b"
    elif mem := _scaled(res.get("mem"), per, "mem"):
        res["mem"] = mem
    if job.gpus_per_task:
        res["ngpus"] = str(job.gpus_per_task)
    else:
        res.pop("ngpus", None)
    return "#PBS -l select=" + ":".join([chunks or "1", *(f"{k}={v}" for k, v in res.items())])


def _template_value(lines: list[str], prefix: str) -> str | None:
    line = next((ln for ln in lines if ln.startswith(prefix)), None)
    return line[len(prefix):].split()[0] if line is not None and line[len(prefix):].strip() else None


def _scaled(value: str | None, workers: int, what: str) -> str | None:
    """A template's per-worker CPUs or memory times the task's workers (None: keep the template's line).

    The templates' CPUs and memory are one worker's (one GPU's) share: a task that packs N workers
    requests N times them, or its workers would split one worker's share.
    """
    if value is None or workers == 1:
        return None
    m = _MEM_RE.fullmatch(value)
    if m is None or (what in ("--cpus-per-task", "ncpus") and m["unit"]):
        raise HpsearchError(f"the template's {what} must be a whole number (memory with a unit, like 16G) to scale it "
                            f"for {workers} workers per task, but got {what}={value!r}; pass "
                            + ("--cpus-per-worker" if "cpus" in what else "--mem for the whole task"))
    return f"{int(m['n']) * workers}{m['unit']}"


def _directives(lines: list[str], sets: dict[str, object], prefix: str) -> list[str]:
    """Replace (or drop, for None) each directive; add missing ones after the last; `...` keeps as is."""
    out: list[str] = []
    seen: set[str] = set()
    for line in lines:
        key = next((k for k in sets if line.startswith(k)), None)
        if key is None:
            out.append(line)
            continue
        seen.add(key)
        new = sets[key]
        if new is ...:
            out.append(line)
        elif new is not None:
            out.append(str(new))
    missing = [str(v) for k, v in sets.items() if k not in seen and v is not None and v is not ...]
    last = max((i for i, ln in enumerate(out) if ln.startswith(prefix)), default=0)
    return out[:last + 1] + missing + out[last + 1:]


def _settings_block(lines: list[str], target: str, job: Job) -> list[str]:
    try:
        begin = next(i for i, ln in enumerate(lines) if ln.startswith(BEGIN))
        end = next(i for i, ln in enumerate(lines) if ln.startswith(END))
    except StopIteration:
        raise HpsearchError(f"the {target} template has no '{BEGIN}' ... '{END}' block") from None
    stop = TARGETS[target].stop_timeout
    args = f"--heartbeat {job.heartbeat} --device {job.device} --stop-timeout {stop}"
    q = shlex.quote
    block = [
        lines[begin],
        f"# rendered by `hpsearch launch {target}` on {time.strftime('%Y-%m-%d %H:%M')}",
        f"# storage: {job.storage_shown or '(from the environment)'}"
        + ("" if job.storage_default else "; the URL comes from HPSEARCH_STORAGE or the storage file at run time"),
        f"# {job.workers} worker(s): {job.tasks} array task(s) of "
        + (f"{job.gpus_per_task} GPU(s), one worker per GPU" if job.gpus_per_task else "one CPU worker"),
        *(f"# {line}" for line in job.note.splitlines()),
        f"HPSEARCH_STUDY={q(job.study)}",
        f"HPSEARCH_STORAGE_DEFAULT={q(job.storage_default)}",
        f"HPSEARCH_WORKDIR={q(job.workdir)}",
        f"HPSEARCH_LOG_DIR={q(job.log_dir)}",
        f"HPSEARCH_PYTHON=\"${{HPSEARCH_PYTHON:-{job.python}}}\"",
        f"HPSEARCH_WORKER_ARGS={q(args)}",
        f"HPSEARCH_GPUS_PER_TASK={job.gpus_per_task}",
        lines[end],
    ]
    return lines[:begin] + block + lines[end + 1:]


def _setup_block(lines: list[str], target: str, job: Job) -> list[str]:
    """The --setup commands, in order, where the template runs them (before the workers start)."""
    if not job.setup:
        return lines
    try:
        begin = next(i for i, ln in enumerate(lines) if ln.startswith(SETUP_BEGIN))
        end = next(i for i, ln in enumerate(lines) if ln.startswith(SETUP_END))
    except StopIteration:
        raise HpsearchError(f"--setup needs a '{SETUP_BEGIN}' ... '{SETUP_END}' block in the {target} template, "
                            "but it has none") from None
    block = [
        lines[begin],
        # Module and virtualenv scripts often read unset variables; a failing command still stops
        # the task (set -e), with its message in the task's log.
        "set +u",
        *job.setup,
        "set -u",
        lines[end],
    ]
    return lines[:begin] + block + lines[end + 1:]


# ---------------------------------------------------------------- launching


def job_from_args(target: str, args: argparse.Namespace) -> tuple[Job, str]:
    """(job, real storage URL). The URL stays in memory: it goes to the submit command's environment."""
    url = resolve_url(getattr(args, "storage", None))
    workdir = Path.cwd()
    has_password = mask(url) != url
    job = Job(
        study=args.study, workers=int(args.workers), gpus_per_task=int(getattr(args, "gpus_per_task", 1)),
        time=walltime.parse(getattr(args, "time", "24:00:00")), heartbeat=int(getattr(args, "heartbeat", 30)),
        device=str(getattr(args, "device", "auto")),
        storage_default="" if has_password else url, storage_shown=mask(url),
        workdir=str(workdir), log_dir=str(workdir / ".hpsearch" / "logs" / args.study), python=sys.executable,
        cpus=getattr(args, "cpus_per_worker", None), mem=getattr(args, "mem", None),
        queue=getattr(args, "partition", None) or getattr(args, "queue", None), account=getattr(args, "account", None),
        max_running=getattr(args, "max_running", None), setup=list(getattr(args, "setup", None) or []),
    )
    return job, url


def study_note(study: str, url: str) -> tuple[str, int]:
    """(one line about the study, trials left to run), read from the storage: the study must exist."""
    from hpsearch.ops import status
    from hpsearch.queue.plan import plan_summary

    snap = status.snapshot(study, url)
    c, spec, planned = snap["counts"], snap["spec"], snap["planned"]
    if spec is not None:
        what = f"{spec.sampler['name']} sampler, {plan_summary(spec)}"
    else:
        what = f"{planned if planned is not None else '?'} trials planned"
    note = f"study {study}: {what}, {c.get('complete', 0)} complete, {snap['remaining']} to run"
    return note, int(snap["remaining"])


def launch(target: str, args: argparse.Namespace) -> int:
    if target not in TARGETS:
        raise HpsearchError(f"launch target must be one of {', '.join(TARGETS)}, but got {target!r}")
    job, url = job_from_args(target, args)
    check_job(job)
    job.note, remaining = study_note(job.study, url)
    shared = file_storage_warning(url, job)
    if shared:
        print(f"hpsearch: warning: {shared}", file=sys.stderr)
        job.note += f"\nwarning: {shared}"
    script = render(target, job)
    if remaining < job.workers:
        print(f"hpsearch: note: study {job.study!r} has {remaining} trials left to run; "
              f"{job.workers - remaining} of the {job.workers} workers will find nothing to do", file=sys.stderr)
    if getattr(args, "dry_run", False):
        if target == "slurm":
            _make_output_dir(job)  # the printed script is sbatch'ed by hand, later
        sys.stdout.write(script)
        return 0
    return submit(target, job, script, url)


def _make_output_dir(job: Job) -> None:
    """SLURM opens --output before the script runs and fails the task when its directory is missing."""
    path = Path(job.log_dir)
    if path.is_dir():
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HpsearchError(f"the job's log directory {path} must exist before sbatch (SLURM writes --output "
                            f"there), but creating it failed: {exc.strerror}") from None
    print(f"hpsearch: created {path}/ for the job's --output (SLURM needs it before the script starts)",
          file=sys.stderr)


def file_storage_warning(url: str, job: Job) -> str | None:
    """One line when a file storage meets a job whose array tasks may land on different nodes."""
    from hpsearch.storage.backend import kind

    if job.tasks < 2 or kind(url) not in FILE_STORAGES:
        return None
    return (f"storage {mask(url)} is a file, and the job's {job.tasks} array tasks may run on different nodes: "
            "it needs one machine or a shared filesystem with working locks (flock); use PostgreSQL for "
            "multi-node jobs (README: Storage)")


def submit(target: str, job: Job, script: str, url: str) -> int:
    t = TARGETS[target]
    exe = shutil.which(t.submit)
    if exe is None:
        raise HpsearchError(f"{t.submit} not found on PATH: submit from a {target.upper()} login node, "
                            "or print the script with --dry-run")
    jobs_dir = Path(job.workdir) / ".hpsearch" / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    Path(job.log_dir).mkdir(parents=True, exist_ok=True)  # SLURM does not create --output directories
    path = jobs_dir / f"{job.study}-{target}-{time.strftime('%Y%m%d-%H%M%S')}{t.suffix}"
    path.write_text(script)
    env = dict(os.environ, HPSEARCH_STORAGE=url)  # reaches the job, never the script
    extra = shlex.split(os.environ.get("HPSEARCH_SUBMIT_ARGS", ""))
    cmd = [exe, "--parsable", *extra, str(path)] if target == "slurm" else [exe, "-v", "HPSEARCH_STORAGE", *extra, str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0:
        first = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()[0]
        raise HpsearchError(f"{t.submit} refused the job: {mask(first)} (script kept in {path})")
    job_id = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else "?"
    per_task = f"{job.gpus_per_task} GPU(s), one worker per GPU" if job.gpus_per_task else "no GPU"
    print(f"submitted {target} job {job_id}: {job.workers} workers in {job.tasks} array task(s) of {per_task}, "
          f"for study {job.study!r}; script {path}; logs in {job.log_dir}/")
    print(f"watch it with: hpsearch status {job.study} --watch")
    return 0
