"""`hpsearch stop`, `resume` and `delete` with real workers, a real PostgreSQL and real checkpoints."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, cli_env, run_cli, start_worker, tiny_spec, unique, write_spec
from faultkit import SLOW_TRAIN, Tail, assert_exactly_once
from hpsearch.storage.backend import open_storage

GRID = {"lr": {"choices": [0.01, 0.03, 0.1, 0.3]}}  # 4 points (SLOW_TRAIN fixes the optimizer)


def _load(name: str, url: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def _create(tmp_path: Path, url: str, name: str, **over: object) -> None:
    spec = write_spec(tmp_path, tiny_spec(name, **over))
    run_cli("create-study", str(spec), "--storage", url, check=True)


def _delete(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`hpsearch delete ...` with stdin a pipe (not a terminal), as in a script."""
    return subprocess.run([sys.executable, "-m", "hpsearch", "delete", *args], input="", capture_output=True,
                          text=True, env=cli_env(), cwd=cwd, timeout=120)


@pytest.mark.postgres
def test_stop_lets_workers_finish_their_trial_and_resume_finishes_the_study(pg_session_db: str,
                                                                            tmp_path: Path) -> None:
    name, url = unique("stop"), pg_session_db
    _create(tmp_path, url, name, space=GRID, repeats=2, train={**SLOW_TRAIN, "epochs": 6})  # 8 trials
    workers = [start_worker(name, url, "--device", "cpu") for _ in range(2)]
    tails = [Tail(w) for w in workers]
    for tail in tails:
        tail.wait_for("epoch 2/6")  # each is in the middle of a trial
    stop = run_cli("stop", name, "--storage", url, check=True)
    assert "stopped" in stop.stdout and f"hpsearch resume {name}" in stop.stdout

    for w, tail in zip(workers, tails, strict=True):
        assert w.wait(timeout=180) == 0, "".join(tail.lines)
        out = "".join(tail.lines)
        assert "the study was stopped (hpsearch stop)" in out, out
        assert "preempted" not in out and "handed back" not in out, out  # finished, not handed back
    study = _load(name, url)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert TrialState.RUNNING not in states and TrialState.FAIL not in states, states
    assert 2 <= states.count(TrialState.COMPLETE) < 8, states  # each finished what it ran; the rest waits

    # A worker started while the study is stopped claims nothing and exits 0 at once.
    late = subprocess.run([sys.executable, str(ROOT / "worker.py"), "--study", name, "--storage", url, "--device",
                           "cpu"], capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=180)
    assert late.returncode == 0 and " 0 trials (none)" in late.stdout, late.stdout + late.stderr
    assert [t.state for t in _load(name, url).get_trials(deepcopy=False)] == states

    assert "resumed" in run_cli("resume", name, "--storage", url, check=True).stdout
    last = start_worker(name, url, "--device", "cpu")
    out, _ = last.communicate(timeout=300)
    assert last.returncode == 0 and "study done" in out, out
    assert_exactly_once(_load(name, url), 8)


def test_stop_and_resume_say_when_there_is_nothing_to_do(journal_url: str, tmp_path: Path) -> None:
    name = unique("again")
    _create(tmp_path, journal_url, name)
    assert "was not stopped" in run_cli("resume", name, "--storage", journal_url, check=True).stdout
    run_cli("stop", name, "--storage", journal_url, check=True)
    assert "already stopped" in run_cli("stop", name, "--storage", journal_url, check=True).stdout


def test_delete_removes_the_study_its_trials_and_its_checkpoints(journal_url: str, tmp_path: Path) -> None:
    name = unique("del")
    _create(tmp_path, journal_url, name, space={"lr": {"choices": [0.01]}}, train=SLOW_TRAIN)
    victim = start_worker(name, journal_url, "--device", "cpu", "--checkpoint-every", "0")
    tail = Tail(victim)
    tail.wait_for("[trial 0] epoch 3/8")
    victim.send_signal(signal.SIGKILL)  # its trial keeps its checkpoint (a retry would resume from it)
    victim.wait()
    artifacts = tmp_path / "artifacts"  # beside the journal, in the study's own folder
    assert [p.name for p in (artifacts / name).iterdir() if p.name.startswith("checkpoint-")], list(artifacts.rglob("*"))

    refused = _delete(name, "--storage", journal_url)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "--yes" in refused.stderr and "Traceback" not in refused.stderr
    assert _load(name, journal_url) is not None  # still there

    done = _delete(name, "--storage", journal_url, "--yes")
    assert done.returncode == 0, done.stderr
    assert f"deleted study {name!r} (1 trials, 1 checkpoint removed)" in done.stdout, done.stdout
    assert not (artifacts / name).exists() and not list(artifacts.iterdir())  # the study's folder goes too
    with pytest.raises(KeyError):
        _load(name, journal_url)


def test_delete_of_an_unknown_study_is_one_line_with_a_suggestion(journal_url: str, tmp_path: Path) -> None:
    name = unique("known")
    _create(tmp_path, journal_url, name)
    proc = _delete(name[:-1], "--storage", journal_url, "--yes")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"did you mean {name!r}?" in proc.stderr, proc.stderr
