"""`hpsearch launch local` and `hpsearch status [--watch]`: real worker processes on a real study."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from conftest import ROOT, cli_env, run_cli, tiny_spec, unique, write_spec
from hpsearch import schema
from hpsearch.ops import launch, status
from hpsearch.queue import claim as claim_mod
from hpsearch.queue import plan as plan_mod
from hpsearch.spec.parse import spec_from_dict
from hpsearch.storage.backend import open_storage


def test_launch_local_runs_a_study_with_three_workers_while_status_watches(tmp_path: Path,
                                                                            journal_url: str) -> None:
    name = unique("local")
    spec = tiny_spec(name, space={"lr": {"choices": [0.003, 0.01, 0.03, 0.1]}, "optimizer": {"choices": ["sgd", "adam"]}})
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", journal_url, check=True)
    watcher = subprocess.Popen([sys.executable, "-m", "hpsearch", "status", name, "--storage", journal_url,
                                "--watch", "--interval", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=cli_env(COLUMNS="160"), cwd=ROOT)
    try:
        proc = run_cli("launch", "local", "--study", name, "--storage", journal_url, "--workers", "3",
                       "--heartbeat", "5", cwd=tmp_path, env=cli_env(COLUMNS="160"))
        watched, _ = watcher.communicate(timeout=60)  # --watch leaves by itself once the study is done
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"launched 3 workers on CPU for study {name!r}" in proc.stdout
    for i in range(3):
        assert f"worker-{i}.log: exit 0" in proc.stdout
        assert (tmp_path / ".hpsearch" / "logs" / name / f"worker-{i}.log").is_file()  # a log per worker

    trials = optuna.load_study(study_name=name, storage=open_storage(journal_url)).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 8
    assert sorted(t.user_attrs["plan_index"] for t in trials) == list(range(8))  # every grid point once
    assert len({t.user_attrs["worker"] for t in trials}) >= 2  # the work was shared

    assert watcher.returncode == 0
    assert "8 finished of 8 planned, 0 to go" in watched
    assert "workers (0 busy" in watched  # the per-worker table


def test_launch_local_needs_an_existing_study(journal_url: str, tmp_path: Path) -> None:
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(unique("x")))), "--storage", journal_url, check=True)
    proc = run_cli("launch", "local", "--study", "nope", "--storage", journal_url, "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 3 and "does not exist" in proc.stderr
    assert not (tmp_path / ".hpsearch" / "logs" / "nope").exists()  # nothing was started


def test_launch_local_rejects_zero_workers(journal_url: str) -> None:
    proc = run_cli("launch", "local", "--study", "s", "--storage", journal_url, "--workers", "0")
    assert proc.returncode == 2 and "--workers must be >= 1" in proc.stderr


@pytest.mark.parametrize(("gpus", "expected"), [(["0", "1"], ["0", "1", "0"]), (["3"], ["3", "3", "3"])])
def test_workers_are_spread_over_the_visible_gpus(gpus: list[str], expected: list[str]) -> None:
    envs = [launch.worker_env(i, gpus, base={}) for i in range(3)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == expected


def test_launched_workers_take_their_share_as_hand_started_ones_do() -> None:
    # No thread count from the launcher: each worker counts the machine's live workers itself
    # (tests/worker/test_share.py), so `launch local` and workers started by hand behave alike.
    env = launch.worker_env(0, [], base={})
    assert "CUDA_VISIBLE_DEVICES" not in env and "HPSEARCH_THREADS" not in env and "OMP_NUM_THREADS" not in env
    assert launch.worker_env(0, [], base={"HPSEARCH_THREADS": "3"})["HPSEARCH_THREADS"] == "3"  # the user's wins


@pytest.mark.parametrize(("value", "expected"), [("0,2", ["0", "2"]), ("", []), ("-1", [])])
def test_visible_gpus_follow_cuda_visible_devices(value: str, expected: list[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert launch.visible_gpus() == expected


# ---------------------------------------------------------------- status


def _grid_study(journal_url: str, n: int = 6) -> tuple[optuna.Study, Any]:
    spec = spec_from_dict(tiny_spec(unique("st"), space={"lr": {"choices": [0.001 * (i + 1) for i in range(n)]}}))
    storage = open_storage(journal_url, create=True)
    study, _ = plan_mod.create(spec, storage)
    return study, spec


def _run(study: optuna.Study, worker: str, device: str, seconds: float, value: float | None) -> optuna.Trial:
    trial = claim_mod.claim(study)
    assert trial is not None
    trial.set_user_attr(schema.WORKER, worker)
    trial.set_user_attr("device", device)
    if value is not None:
        trial.set_user_attr("duration_s", seconds)
        study.tell(trial, value)
    return trial


def test_snapshot_has_eta_gpu_hours_and_per_worker_activity(journal_url: str) -> None:
    study, spec = _grid_study(journal_url)
    _run(study, "node1:11", "cuda:0", 1800.0, 0.5)
    _run(study, "node1:11", "cuda:0", 1800.0, 0.7)
    running = _run(study, "node2:22", "cpu", 0, None)
    running.set_user_attr("curve", [{"epoch": 1}])

    snap = status.snapshot_study(study, spec)
    assert snap["finished"] == 2 and snap["remaining"] == 4  # 3 waiting + 1 running
    assert snap["gpu_hours"] == pytest.approx(1.0, abs=0.01)  # two half-hour trials on cuda
    assert snap["per_hour"] > 0 and snap["eta"] == pytest.approx(4 / snap["per_hour"] * 3600)
    w1, w2 = snap["workers"]["node1:11"], snap["workers"]["node2:22"]
    assert (w1["done"], w1["running"]) == (2, None)
    assert (w2["running"], w2["epoch"], w2["epochs"]) == (running.number, 1, 2)

    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(status.render_status(snap))
    text = console.export_text()
    assert "2 finished of 6 planned, 4 to go" in text and "eta" in text and "gpu-hours" in text
    assert f"trial {running.number}, epoch 1/2" in text and "workers (1 busy, 2 seen)" in text


def test_snapshot_of_a_fresh_study_has_no_eta(journal_url: str) -> None:
    study, spec = _grid_study(journal_url, n=2)
    snap = status.snapshot_study(study, spec)
    assert snap["remaining"] == 2 and snap["eta"] is None and snap["workers"] == {}


def test_status_watch_of_a_done_study_returns_at_once(journal_url: str) -> None:
    study, _ = _grid_study(journal_url, n=1)
    _run(study, "w:1", "cpu", 1.0, 0.9)
    t0 = time.monotonic()
    proc = run_cli("status", study.study_name, "--storage", journal_url, "--watch", "--interval", "30")
    assert proc.returncode == 0 and "1 finished of 1 planned, 0 to go" in proc.stdout
    assert time.monotonic() - t0 < 25  # did not wait an interval


def test_status_watch_rejects_a_bad_interval(journal_url: str) -> None:
    study, _ = _grid_study(journal_url, n=1)
    proc = run_cli("status", study.study_name, "--storage", journal_url, "--watch", "--interval", "0")
    assert proc.returncode == 2 and "--interval must be > 0" in proc.stderr


# ---------------------------------------------------------------- storage warnings


def test_a_sqlite_storage_is_warned_about_once_per_command(tmp_path: Path) -> None:
    """README (Storage): SQLite has no row locks, so two workers can take the same trial."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    name = unique("sq")
    runs = [run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name))), "--storage", url),
            run_cli("status", name, "--storage", url)]  # status opens the storage twice
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if "SQLite" in ln]
        assert len(lines) == 1, proc.stderr  # one line, however often the command opens the storage
        assert "no row locks" in lines[0] and "same waiting trial" in lines[0] and "PostgreSQL" in lines[0]


def test_only_sqlite_is_warned_about(tmp_path: Path, journal_url: str, caplog: pytest.LogCaptureFixture,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from hpsearch.storage import backend as storage

    monkeypatch.setattr(storage, "_SQLITE_WARNED", [])
    open_storage(journal_url, create=True)
    assert "SQLite" not in caplog.text
    for _ in range(2):
        open_storage(f"sqlite:///{tmp_path / 'x.db'}", create=True)
    assert caplog.text.count("is SQLite") == 1
