"""`hpsearch launch local`: N worker processes spread over the visible GPUs, one combined view."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpsearch.errors import HpsearchError
from hpsearch.storage import dashboard_target, mask, resolve_url


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
            return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]
        except (OSError, subprocess.SubprocessError):
            return []
    return []


def worker_env(index: int, n_workers: int, gpus: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]  # several workers per GPU allowed
    else:
        # CPU only: share the cores instead of every worker spawning a thread per core.
        env.setdefault("HPSEARCH_THREADS", str(max(1, (os.cpu_count() or 1) // n_workers)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def local(study: str, storage: str | None, workers: int, heartbeat: int = 30, device: str = "auto",
          extra_args: list[str] | None = None) -> int:
    if workers < 1:
        raise HpsearchError(f"--workers must be >= 1, but got workers={workers}")
    from hpsearch import status as status_mod

    url = resolve_url(storage)
    status_mod.snapshot(study, url)  # fails with one line if the study or storage is missing
    gpus = visible_gpus()
    log_dir = Path(".hpsearch") / "logs" / study
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    for i in range(workers):
        log_path = log_dir / f"worker-{i}.log"
        cmd = [sys.executable, "-m", "hpsearch", "worker", "--study", study, "--storage", url,
               "--heartbeat", str(heartbeat), "--device", device, *(extra_args or [])]
        fh = open(log_path, "wb")  # noqa: SIM115 - closed when the process ends
        procs.append((subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=worker_env(i, workers, gpus)),
                      log_path))
    where = f"GPUs {','.join(gpus)}" if gpus else "CPU"
    print(f"launched {workers} workers on {where} for study {study!r}; logs in {log_dir}/", flush=True)

    def forward(signum: int, frame: object) -> None:
        for p, _ in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = signal.signal(signal.SIGINT, forward), signal.signal(signal.SIGTERM, forward)
    try:
        _watch(study, url, procs)
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])
    codes = [p.wait() for p, _ in procs]
    for (_, log_path), code in zip(procs, codes, strict=True):
        lines = log_path.read_text(errors="replace").strip().splitlines()
        print(f"  {log_path.name}: exit {code}: {lines[-1] if lines else ''}")
    print(f"open the dashboard with: hpsearch dashboard --storage {mask(dashboard_target(url))}"
          f"   (or: optuna-dashboard {mask(dashboard_target(url))})")
    return 0 if all(c == 0 for c in codes) else 1


def _watch(study: str, url: str, procs: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    """One combined progress view: a bar over finished/planned trials and the latest epoch lines."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hpsearch import status as status_mod

    console = Console()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[states]}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(study, total=None, states="")
        seen: dict[Path, int] = {}
        while True:
            alive = any(p.poll() is None for p, _ in procs)
            try:
                snap = status_mod.snapshot(study, url)
                c = snap["counts"]
                total = c.get("complete", 0) + c.get("pruned", 0) + c.get("waiting", 0) + c.get("running", 0)
                best = snap["best"]
                states = " ".join(f"{k} {c.get(k, 0)}" for k in status_mod.STATES)
                if best is not None:
                    states += f" | best {best.value:.4f}"
                progress.update(task, total=max(total, 1), completed=c.get("complete", 0) + c.get("pruned", 0),
                                states=states)
            except Exception:  # noqa: BLE001 - the view is best effort; workers carry on regardless
                pass
            for _, log_path in procs:
                lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
                for line in lines[seen.get(log_path, 0):]:
                    if "complete:" in line or "pruned" in line or "failed" in line or "re-queued" in line:
                        progress.console.print(f"[dim]{log_path.stem}[/dim] {line}")
                seen[log_path] = len(lines)
            if not alive:
                return
            time.sleep(1.0)


def cluster(target: str, args: argparse.Namespace) -> int:
    from hpsearch import deploy

    return deploy.launch(target, args)
