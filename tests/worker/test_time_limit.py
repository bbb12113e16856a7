"""Trials that never end, and trials that leak: a time limit and a clean restart, with real
worker processes, a real hang (time.sleep in user code that ignores should_stop), a real
address-space cap and the built-in trainer stopped mid-epoch."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, cli_env, run_cli, start_worker, tiny_spec, unique, write_spec
from faultkit import assert_exactly_once
from hpsearch import schema
from hpsearch.storage.backend import open_storage
from hpsearch.worker import stopping
from pgcluster import Cluster


def _spec(name: str, modes: list[str], **over: object) -> dict[str, object]:
    return {"name": name, "objective": "hps_limits:misbehave", "metric": "value", "direction": "maximize",
            "sampler": "grid", "space": {"mode": {"choices": modes}}, **over}


def _run(tmp_path: Path, url: str, spec: dict[str, object], *extra: str,
         env: dict[str, str] | None = None) -> tuple[str, list[optuna.trial.FrozenTrial]]:
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", url, check=True)
    proc = start_worker(str(spec["name"]), url, *extra, env=env)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    study = optuna.load_study(study_name=str(spec["name"]), storage=open_storage(url))
    return out, sorted(study.trials, key=lambda t: t.number)


def test_a_hung_objective_is_ended_at_its_limit_and_the_worker_takes_the_next(tmp_path: Path, pg_url: str) -> None:
    name = unique("hang")
    out, trials = _run(tmp_path, pg_url, _spec(name, ["hang", "fine"], trial_timeout=3))
    hung, fine = trials
    assert hung.state == TrialState.FAIL
    reason = hung.user_attrs[schema.FAIL_REASON]
    assert reason.startswith("time limit: still running 3s after its start (trial_timeout) and did not stop"), reason
    assert fine.state == TrialState.COMPLETE and fine.value == 1.0
    assert "restarting clean" in out and out.count("failed: time limit") == 1, out
    assert len(trials) == 2  # not queued again: it would only hang again
    assert_exactly_once(optuna.load_study(study_name=name, storage=open_storage(pg_url)), 1)


def test_a_cooperating_objective_stops_at_its_limit_without_a_restart(tmp_path: Path, journal_url: str) -> None:
    out, trials = _run(tmp_path, journal_url, _spec(unique("coop"), ["cooperate", "fine"]), "--trial-timeout", "2")
    stopped, fine = trials
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs[schema.FAIL_REASON] == "time limit: still running 2s after its start (trial_timeout); stopped"
    assert fine.state == TrialState.COMPLETE
    assert "restarting" not in out and "handed back" not in out, out


def test_the_built_in_trainer_stops_at_its_limit(tmp_path: Path, journal_url: str) -> None:
    name = unique("slowtrain")
    spec = tiny_spec(name, space={"lr": {"choices": [0.01]}}, trial_timeout=1, fuse=1,
                     train={"epochs": 500, "batch_size": 8, "model": "dense", "hidden_size": 64, "hidden_layers": 2})
    out, (trial,) = _run(tmp_path, journal_url, spec)
    assert trial.state == TrialState.FAIL, out
    assert trial.user_attrs[schema.FAIL_REASON].endswith("(trial_timeout); stopped")
    assert "restarting" not in out


def test_a_leaking_objective_fails_once_and_the_worker_starts_clean(tmp_path: Path, journal_url: str) -> None:
    # 1.5 GB of address space: the leak fills it; a worker that kept the leak would fail "small" too.
    cap = 1536 << 20

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    name = unique("leak")
    run_cli("create-study", str(write_spec(tmp_path, _spec(name, ["leak", "small", "fine"]))),
            "--storage", journal_url, check=True)
    env = cli_env()
    proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--study", name, "--storage", journal_url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                            preexec_fn=limit)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    trials = sorted(optuna.load_study(study_name=name, storage=open_storage(journal_url)).trials,
                    key=lambda t: t.number)
    leak, small, fine = trials
    assert leak.state == TrialState.FAIL
    assert leak.user_attrs[schema.FAIL_REASON].startswith("out of memory: MemoryError"), leak.user_attrs
    assert small.state == TrialState.COMPLETE and fine.state == TrialState.COMPLETE, out
    assert "restarting clean" in out, out


def test_a_bad_trial_timeout_is_one_line(tmp_path: Path, journal_url: str) -> None:
    for bad in (-1, 0, "soon"):
        proc = run_cli("create-study", str(write_spec(tmp_path, _spec(unique("bad"), ["fine"], trial_timeout=bad))),
                       "--storage", journal_url)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "trial_timeout: must be a number of seconds" in lines[0], proc.stderr


@pytest.mark.parametrize("mode", ["hang", "cooperate"])
def test_the_stop_timeout_holds_while_the_database_is_down(throwaway_pg: Cluster, tmp_path: Path, mode: str) -> None:
    # SIGTERM and no database to hand the trial back to: the worker leaves within --stop-timeout plus
    # the hand-back's bounded wait, not after HPSEARCH_DB_WAIT (600 s). A hung trial never reaches a
    # stopping point; a cooperating one does, and its hand-back then waits for the database that is
    # down (on the main thread): the hard exit still comes at the stop timeout.
    url = throwaway_pg.create_db(f"stopdown{mode}")
    name = unique("stopdown")
    run_cli("create-study", str(write_spec(tmp_path, _spec(name, [mode]))), "--storage", url, check=True)
    proc = start_worker(name, url, "--stop-timeout", "2", "--heartbeat", "2",
                        env=cli_env(HPSEARCH_DB_WAIT="600"), log=tmp_path / "w.log")
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    deadline = time.monotonic() + 120
    while not any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
        assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "w.log").read_text()
        time.sleep(0.2)
    throwaway_pg.stop("fast")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        throwaway_pg.start()
    assert time.monotonic() - t0 < 2 + stopping.HAND_BACK_WAIT + 15, (tmp_path / "w.log").read_text()


def test_a_bad_trial_timeout_flag_is_one_line(journal_url: str) -> None:
    # A limit past the spec's bound (30 days) used to reach the watchdog's timer, which cannot wait
    # that long: a traceback on its thread, and no limit at all.
    for bad in ("1e300", "0", "-5", "inf", "soon"):
        proc = run_cli("worker", "--study", "s", "--storage", journal_url, "--trial-timeout", bad)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "--trial-timeout: must be a number in (0, 2592000]" in lines[0], proc.stderr
