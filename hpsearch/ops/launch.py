"""`hpsearch launch`: N local worker processes spread over the visible GPUs with one combined view,
or a SLURM/PBS job array (hpsearch.ops.deploy).

Local workers are ordinary `hpsearch worker` processes (one log file each); several may share a
GPU. Ctrl-C (or SIGTERM) asks every worker to hand its trial back and exit, like a scheduler would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hpsearch.errors import HpsearchError
from hpsearch.storage.backend import dashboard_target, mask, resolve_url

# Lines of a worker's log worth echoing above the progress view.
_EVENTS = ("complete:", "pruned", "failed", "handed back", "re-queued", "resumed", "error")


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
            return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]
        except (OSError, subprocess.SubprocessError):
            return []
    return []


def worker_env(index: int, gpus: list[str], base: dict[str, str] | None = None,
               storage: str | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    if storage is not None:
        # The environment, never argv: /proc/PID/cmdline is world-readable and W&B records argv;
        # /proc/PID/environ is readable by the user only.
        env["HPSEARCH_STORAGE"] = storage
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]  # round robin: several workers per GPU allowed
    # No thread count here: each worker takes its own share of the cores, counting the live workers
    # of the machine (hpsearch.worker.share), as it does when started by hand; HPSEARCH_THREADS wins.
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class LocalWorker:
    index: int
    gpu: str | None
    log_path: Path
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    lines_seen: int = 0
    last_line: str = ""
    events: list[str] = field(default_factory=list)

    @property
    def wid(self) -> str:
        import socket

        return f"{socket.gethostname()}:{self.proc.pid}"  # what the worker records on its trials

    def poll_log(self) -> None:
        """New lines since the last poll: the latest one, and the events among them."""
        if not self.log_path.exists():
            return
        lines = self.log_path.read_text(errors="replace").splitlines()
        new = lines[self.lines_seen:]
        self.lines_seen = len(lines)
        if new:
            self.last_line = new[-1]
        self.events.extend(line for line in new if any(e in line for e in _EVENTS))


def start_workers(study: str, url: str, workers: int, log_dir: Path, heartbeat: int = 30, device: str = "auto",
                  extra_args: list[str] | None = None) -> list[LocalWorker]:
    gpus = visible_gpus()
    log_dir.mkdir(parents=True, exist_ok=True)
    started = []
    for i in range(workers):
        log_path = log_dir / f"worker-{i}.log"
        cmd = [sys.executable, "-m", "hpsearch", "worker", "--study", study,
               "--heartbeat", str(heartbeat), "--device", device, *(extra_args or [])]
        fh = open(log_path, "wb")  # noqa: SIM115 - closed in finish()
        # Own session: a terminal's Ctrl-C reaches the launcher only, which stops workers once, in order.
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                env=worker_env(i, gpus, storage=url), start_new_session=True)
        started.append(LocalWorker(i, gpus[i % len(gpus)] if gpus else None, log_path, proc, fh))
    return started


def local(study: str, storage: str | None, workers: int, heartbeat: int = 30, device: str = "auto",
          extra_args: list[str] | None = None, log_dir: Path | None = None) -> int:
    if workers < 1:
        raise HpsearchError(f"--workers must be >= 1, but got workers={workers}")
    from hpsearch.ops import status as status_mod
    from hpsearch.queue import study as study_mod
    from hpsearch.storage.backend import open_storage

    url = resolve_url(storage)
    # One line if the study or storage is missing, before anything starts: the study's record
    # only (its spec, and with it torch, is read later, once the workers are under way).
    study_mod.load(study, open_storage(url))
    log_dir = log_dir or Path(".hpsearch") / "logs" / study
    procs = start_workers(study, url, workers, log_dir, heartbeat, device, extra_args)
    # The view is best effort: the workers come first for the CPU (bench/machine.py measured the
    # launcher's own imports and polling at 20-26% of a small study's wall time on 2 cores).
    with contextlib.suppress(OSError):
        os.nice(10)
    gpus = sorted({w.gpu for w in procs if w.gpu is not None})
    where = f"GPUs {','.join(gpus)}" if gpus else "CPU"
    print(f"launched {workers} workers on {where} for study {study!r}; logs in {log_dir}/", flush=True)

    stopping: list[int] = []

    def forward(signum: int, frame: object) -> None:
        if not stopping:
            stopping.append(signum)
            for w in procs:
                if w.proc.poll() is None:
                    w.proc.send_signal(signal.SIGTERM)  # each worker hands its trial back

    old = signal.signal(signal.SIGINT, forward), signal.signal(signal.SIGTERM, forward)
    try:
        watch_workers(study, url, procs)
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])
    codes = finish(procs)
    for w, code in zip(procs, codes, strict=True):
        summary = next((ln for ln in reversed(w.log_path.read_text(errors="replace").splitlines())
                        if ln.startswith("worker ")), w.last_line)
        print(f"  {w.log_path.name}: exit {code}: {mask(summary)}")
    status_mod.print_status(study, url)
    target = dashboard_target(url)
    # A masked URL would not work, and the real one belongs in no command line.
    where = "(with the storage URL in HPSEARCH_STORAGE)" if mask(target) != target else f"--storage {target}"
    print(f"open the dashboard with: hpsearch dashboard {where}")
    return 0 if all(c == 0 for c in codes) else 1


def finish(procs: list[LocalWorker]) -> list[int]:
    codes = []
    for w in procs:
        codes.append(w.proc.wait())
        w.log.close()
    return codes


def watch_workers(study: str, url: str, procs: list[LocalWorker], interval: float = 2.0) -> None:
    """One combined view until every worker has exited: a bar over the study, a row per worker."""
    from rich.console import Console, Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hpsearch.ops import status as status_mod

    console = Console()
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[states]}"), TimeElapsedColumn(), console=console)
    task = bar.add_task(study, total=None, states="")
    study_obj, spec = status_mod.open_study(study, url)  # one connection for the whole run
    with Live(Group(bar), console=console, refresh_per_second=4) as live:
        while True:
            alive = any(w.proc.poll() is None for w in procs)
            snap = None
            try:
                snap = status_mod.snapshot_study(study_obj, spec)
                _update_bar(bar, task, snap, status_mod.STATES)
            except Exception:  # noqa: BLE001 - the view is best effort; workers carry on regardless
                pass
            for w in procs:
                w.poll_log()
                for line in w.events:
                    live.console.print(f"[dim]worker-{w.index}[/dim] {mask(line)}")
                w.events.clear()
            live.update(Group(bar, _workers_table(procs, snap)))
            if not alive:
                break
            _wait_a_while(procs, interval)
    if not console.is_terminal:
        console.line()  # a pipe gets the last view without its final newline


def _wait_a_while(procs: list[LocalWorker], seconds: float) -> None:
    """Until the next refresh, or sooner once every worker has exited (the launcher ends with them)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(w.proc.poll() is None for w in procs):
        time.sleep(0.1)


def _update_bar(bar: Any, task: Any, snap: dict[str, Any], states: tuple[str, ...]) -> None:
    c = snap["counts"]
    done = c.get("complete", 0) + c.get("pruned", 0)
    text = " ".join(f"{k} {c.get(k, 0)}" for k in states)
    if snap["best"] is not None:
        text += f" | best {snap['best'].value:.4f}"
    if snap["eta"] is not None:
        text += f" | eta {int(snap['eta'] // 60)}m{int(snap['eta'] % 60):02d}s"
    bar.update(task, total=max(done + snap["remaining"], 1), completed=done, states=text)


def _workers_table(procs: list[LocalWorker], snap: dict[str, Any] | None) -> Any:
    from rich.table import Table

    table = Table(box=None, show_header=True)
    for col in ("worker", "gpu", "trials done", "now"):
        table.add_column(col)
    known = snap["workers"] if snap else {}
    for w in procs:
        code = w.proc.poll()
        info = known.get(w.wid, {})
        if code is not None:
            now = f"exited {code}"
        elif info.get("running") is not None:
            epoch = f" epoch {info['epoch']}/{info['epochs'] or '?'}" if info.get("epoch") is not None else ""
            now = f"trial {info['running']}{epoch}"
        else:
            now = mask(w.last_line[-70:]) or "starting"
        table.add_row(f"worker-{w.index} (pid {w.proc.pid})", w.gpu or "cpu", str(info.get("done", 0)), now)
    return table
