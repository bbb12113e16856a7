"""The storage password appears in no process's command line, no file, no W&B run and no output.

Real processes on a real PostgreSQL (trust authentication accepts, and ignores, the password in
the URL), W&B in offline mode writing under the test's directory. Every process on the machine is
watched through /proc/PID/cmdline (what `ps` shows every local user) while the workers run.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, cli_env, run_cli, tiny_spec, unique, write_spec
from hpsearch.redact import userinfo_problem
from hpsearch.storage.backend import mask


def _secret_url(pg_url: str) -> tuple[str, str]:
    password = f"Pw-{uuid.uuid4().hex[:12]}"
    return pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@", 1), password


def _tracked_study(tmp_path: Path, env: dict[str, str]) -> str:
    """A two-point grid with W&B tracking, created with the URL in the environment only."""
    name = unique("secret")
    spec = tiny_spec(name, space={"lr": {"choices": [0.05, 0.1]}}, tracking={"dir": str(tmp_path / "wandb")})
    spec["train"]["epochs"] = 1
    run_cli("create-study", str(write_spec(tmp_path, spec)), env=env, cwd=tmp_path, check=True)
    return name


def _env(tmp_path: Path, url: str | None = None) -> dict[str, str]:
    # Everything W&B writes (runs, cache, config, artifacts staging) lands where the test looks.
    wandb = {f"WANDB_{k}": str(tmp_path / "wandb" / k.lower()) for k in ("CACHE_DIR", "CONFIG_DIR", "DATA_DIR")}
    env = cli_env(WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb"), TMPDIR=str(tmp_path / "tmp"), **wandb)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    if url is not None:
        env["HPSEARCH_STORAGE"] = url
    return env


class CommandLineWatch(threading.Thread):
    """Reads every process's /proc/PID/cmdline until stopped; keeps those that hold the secret."""

    def __init__(self, secret: str) -> None:
        super().__init__(daemon=True)
        self.secret = secret.encode()
        self.stop = threading.Event()
        self.seen: list[str] = []
        self.scans = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for path in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    line = path.read_bytes()
                except OSError:
                    continue  # the process has gone
                if self.secret in line:
                    self.seen.append(line.replace(b"\0", b" ").decode(errors="replace"))
            self.scans += 1
            self.stop.wait(0.02)


def _files_holding(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_worker_and_launch_local_keep_the_password_out_of_command_lines_files_runs_and_output(
        pg_session_db: str, tmp_path: Path) -> None:
    url, password = _secret_url(pg_session_db)
    name = _tracked_study(tmp_path, _env(tmp_path, url))

    # 1. A worker given the URL on its command line (what the README used to show) runs one trial.
    worker = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--study", name, "--storage", url,
                               "--n-trials", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env(tmp_path), cwd=tmp_path)
    lines, cmdline = [], ""
    for line in worker.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if line.startswith("worker ") and " on study " in line:  # it is up: argv was rewritten before this
            cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes().decode()
            break
    rest, _ = worker.communicate(timeout=180)
    output = "".join(lines) + rest
    assert worker.returncode == 0, output
    assert password not in cmdline and "postgres:***@127.0.0.1" in cmdline, cmdline

    # 2. `launch local` with the URL only in HPSEARCH_STORAGE runs the rest, every process watched.
    watch = CommandLineWatch(password)
    watch.start()
    try:
        proc = run_cli("launch", "local", "--study", name, "--workers", "2", "--heartbeat", "5",
                       env=_env(tmp_path, url), cwd=tmp_path, timeout=180)
    finally:
        watch.stop.set()
        watch.join()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "worker-1.log: exit 0" in proc.stdout and "2 finished of 2 planned" in proc.stdout
    assert watch.scans > 10 and watch.seen == []  # no process (launcher, workers, wandb-core) showed it to `ps`

    assert len(list((tmp_path / "wandb").rglob("offline-run-*"))) == 2, "W&B tracking did not run"
    assert _files_holding(tmp_path, password) == []  # W&B runs (their metadata has argv), logs, checkpoints
    assert password not in output + proc.stdout + proc.stderr


@pytest.mark.parametrize(("text", "shown"), [
    ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),
    ("cannot open storage postgresql://u:a@b@c@host:5432/db: refused", "cannot open storage postgresql://u:***@host:5432/db: refused"),
    ("'postgresql://user@server:pw@host/db'", "'postgresql://user@server:***@host/db'"),
    ("postgresql://u:pw@h/db?sslmode=require&password=pw2", "postgresql://u:***@h/db?sslmode=require&password=***"),
    ("postgresql://u@h:5432/db and grpc://proxy:13000", "postgresql://u@h:5432/db and grpc://proxy:13000"),
])
def test_mask_hides_a_password_with_raw_at_signs_whole(text: str, shown: str) -> None:
    assert mask(text) == shown


@pytest.mark.parametrize(("url", "problem"), [
    ("postgresql://u:p@ss@host/db", "password contains '@'"),
    ("postgresql://me@corp:pw@host/db", "user name contains '@'"),
    ("postgresql://u:p%40ss@host/db", None),
    ("postgresql:///hps?service=hpsearch", None),
    ("postgresql://u@h/db?options=a@b", None),
])
def test_a_raw_at_in_the_user_info_is_named_without_echoing_it(url: str, problem: str | None) -> None:
    found = userinfo_problem(url)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and "percent-encode it as %40" in found
        assert url.split("//")[1].rpartition("@")[0] not in found  # the user info itself is never echoed
