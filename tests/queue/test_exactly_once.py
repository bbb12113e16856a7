"""Exactly once under attack: every planned (configuration, seed) ends in exactly one COMPLETE or
PRUNED trial, never zero, never two, whatever happens to workers, creators and the database.

Race windows are held open deterministically: a row or table lock taken from a second session
stops a worker inside the write it must not be interrupted in, and the test kills (SIGKILL) or
stops (SIGSTOP) it right there. On the journal file, the states a process killed between two
writes leaves behind are written directly, and a worker must restore the invariant.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from conftest import cli_env, run_cli, start_worker, tiny_spec, unique, write_spec
from faultkit import SLOW_TRAIN, Tail, assert_exactly_once, engine_of, hold, wait_blocked
from hpsearch.storage import optuna_internals
from hpsearch.storage.backend import open_storage
from pgcluster import Cluster

# ---------------------------------------------------------------- helpers


def _create(tmp_path: Path, url: str, name: str, env: dict[str, str] | None = None, **over: Any) -> None:
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name, **over))), "--storage", url, check=True,
            env=env)


def _study(name: str, url: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def _finish(name: str, url: str, tmp_path: Path, log: str, *extra: str, env: dict[str, str] | None = None) -> str:
    """Run one more worker to the end of the study; it must exit 0."""
    w = start_worker(name, url, "--heartbeat", "2", "--device", "cpu", *extra, env=env, log=tmp_path / log)
    code = w.wait(timeout=300)
    text = (tmp_path / log).read_text()
    assert code == 0, text
    assert "Traceback" not in text, text
    return text


# ---------------------------------------------------------------- PostgreSQL: race windows held open


def test_sigterm_then_sigkill_during_the_hand_back_loses_nothing(pg_session_db: str, tmp_path: Path) -> None:
    """Item 1: PBS kill_delay, `docker stop -t`, systemd: SIGTERM, then SIGKILL while handing back."""
    url, name = pg_session_db, unique("handback")
    _create(tmp_path, url, name, space={"lr": {"choices": [0.01, 0.02]}}, train=SLOW_TRAIN)
    w = start_worker(name, url, "--heartbeat", "2", "--device", "cpu")
    Tail(w).wait_for("[trial 0] epoch 2/8")
    with hold(url, "SELECT 1 FROM studies WHERE study_name = :n FOR UPDATE", n=name):
        w.send_signal(signal.SIGTERM)
        wait_blocked(url)  # the hand-back is waiting for the study row
        w.send_signal(signal.SIGKILL)
        w.wait()
    _finish(name, url, tmp_path, "after.log")
    assert_exactly_once(_study(name, url), 2)


def test_kill9_while_issuing_a_chunk_runs_nothing_twice(pg_session_db: str, tmp_path: Path) -> None:
    """Item 5: the chunk's trials and the record of how far the plan is issued commit together."""
    url, name = pg_session_db, unique("chunk")
    env = cli_env(HPSEARCH_ISSUE_CHUNK="2")
    _create(tmp_path, url, name, env=env, space={"lr": {"choices": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]}})
    with hold(url, "SELECT 1 FROM study_user_attributes a JOIN studies s ON s.study_id = a.study_id "
                   "WHERE s.study_name = :n AND a.key = 'hpsearch:issued' FOR UPDATE OF a", n=name):
        w = start_worker(name, url, "--heartbeat", "2", "--device", "cpu", env=env)
        wait_blocked(url)  # it ran the first chunk and is recording the second one as issued
        w.send_signal(signal.SIGKILL)
        w.wait()
    _finish(name, url, tmp_path, "after.log", env=env)
    assert_exactly_once(_study(name, url), 6)


def test_a_stopped_lock_holder_does_not_block_the_study(pg_session_db: str, tmp_path: Path) -> None:
    """Item 8: a worker stopped (SIGSTOP) inside a critical section; the server ends its transaction
    after it sat idle, which releases the study lock, and another worker finishes the study."""
    url, name = pg_session_db, unique("stopped")
    env = cli_env(HPSEARCH_ISSUE_CHUNK="2")
    _create(tmp_path, url, name, env=env, space={"lr": {"choices": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]}})
    with hold(url, "SELECT 1 FROM studies WHERE study_name = :n FOR UPDATE", n=name):
        a = start_worker(name, url, "--heartbeat", "2", "--device", "cpu", env=env, log=tmp_path / "a.log")
        wait_blocked(url)  # A holds the study lock and waits inside its top-up
        a.send_signal(signal.SIGSTOP)
    try:
        _finish(name, url, tmp_path, "b.log", env=env)
    finally:
        a.send_signal(signal.SIGCONT)
    assert a.wait(timeout=120) == 0, (tmp_path / "a.log").read_text()
    assert_exactly_once(_study(name, url), 6)


def test_interrupted_create_study_is_finished_not_taken_for_done(pg_url: str, tmp_path: Path) -> None:
    """Item 2: create-study killed while it plans; workers must not run a partial plan as complete,
    and the same create-study run again finishes it (at once, not after a 300 s wait)."""
    url, name = pg_url, unique("create")
    lrs = [0.01, 0.02, 0.03, 0.04]
    spec = write_spec(tmp_path, tiny_spec(name, space={"lr": {"choices": lrs}}))
    open_storage(url, create=True)  # the tables, so the test can lock one
    with hold(url, "LOCK TABLE trials IN SHARE ROW EXCLUSIVE MODE"):
        creator = subprocess.Popen(
            [sys.executable, "-m", "hpsearch", "create-study", str(spec), "--storage", url],
            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_blocked(url)
        creator.send_signal(signal.SIGKILL)
        creator.wait()
    # A worker started now (an init container that saw the study, an array task) finds a study with
    # no spec and no trial: it is not "done", and the worker waits for the creation to finish.
    early = start_worker(name, url, "--heartbeat", "2", "--device", "cpu", log=tmp_path / "early.log")
    deadline = time.monotonic() + 120
    while "has no hpsearch spec yet" not in (tmp_path / "early.log").read_text():
        assert early.poll() is None and time.monotonic() < deadline, (tmp_path / "early.log").read_text()
        time.sleep(0.1)
    again = run_cli("create-study", str(spec), "--storage", url, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    early_code = early.wait(timeout=120)
    early_out = (tmp_path / "early.log").read_text()
    assert early_code == 0 and "study done" in early_out and "Traceback" not in early_out, early_out
    _finish(name, url, tmp_path, "after.log")
    assert_exactly_once(_study(name, url), len(lrs))


def test_late_worker_after_a_takeover_drops_its_result(pg_session_db: str, tmp_path: Path) -> None:
    """Item 6: a worker stopped past its heartbeat's grace is taken over; when it resumes it drops
    its result (exit 0, no traceback) and queues no repeat seed a second time."""
    url, name = pg_session_db, unique("late")
    spec = {"name": name, "objective": "hps_objectives:last_word", "metric": "loss", "direction": "minimize",
            "sampler": "random", "budget": {"trials": 2}, "repeats": 2, "seed": 7,
            "space": {"x": {"low": 0.0, "high": 1.0}}}
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", url, check=True)
    a = start_worker(name, url, "--heartbeat", "2", env=cli_env(HPS_LAST_WORD="2"))
    tail = Tail(a)
    tail.wait_for("last word of trial 0")
    a.send_signal(signal.SIGSTOP)
    study = _study(name, url)
    try:
        b = start_worker(name, url, "--heartbeat", "2", log=tmp_path / "b.log")
        deadline = time.monotonic() + 120
        while study.get_trials(deepcopy=False)[0].state != TrialState.FAIL:
            assert time.monotonic() < deadline, (tmp_path / "b.log").read_text()
            time.sleep(0.2)
        # B runs the retry of trial 0 (and its repeat seed) while A is still stopped.
        while not any(t.user_attrs.get("retry_of") == 0 and t.state == TrialState.COMPLETE
                      for t in study.get_trials(deepcopy=False)):
            assert time.monotonic() < deadline, (tmp_path / "b.log").read_text()
            time.sleep(0.2)
    finally:
        a.send_signal(signal.SIGCONT)
    assert a.wait(timeout=120) == 0, "".join(tail.lines)
    assert b.wait(timeout=120) == 0, (tmp_path / "b.log").read_text()
    out = "".join(tail.lines)
    assert "Traceback" not in out and "result dropped" in out, out
    assert "[trial 0] complete" not in out, out
    assert_exactly_once(study, 4)


def test_a_database_restart_longer_than_the_grace_reaps_nobody(throwaway_pg: Cluster, tmp_path: Path) -> None:
    """Item 7: an outage is not death; silence counts only while the server was up."""
    url = throwaway_pg.create_db("outage")
    name = unique("outage")
    _create(tmp_path, url, name, space={"lr": {"choices": [0.01, 0.02]}}, train={**SLOW_TRAIN, "epochs": 30})
    env = cli_env(HPSEARCH_DB_WAIT="120")
    workers = [start_worker(name, url, "--heartbeat", "2", "--device", "cpu", env=env, log=tmp_path / f"w{i}.log")
               for i in range(2)]
    study = _study(name, url)
    deadline = time.monotonic() + 120
    while sum(t.state == TrialState.RUNNING and len(t.intermediate_values) >= 2
              for t in study.get_trials(deepcopy=False)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    throwaway_pg.stop("fast")
    time.sleep(8)  # well past 1.5 heartbeats (3 s)
    throwaway_pg.start()
    _assert_nobody_reaped(workers, name, url, tmp_path)


def test_silence_while_the_server_was_down_is_not_counted(throwaway_pg: Cluster, tmp_path: Path) -> None:
    """Item 7, deterministic: a trial whose last heartbeat is old only because the server was down
    is not stale right after the restart (nobody could beat), and is once the server has been up
    for the grace (a dead worker is still found)."""
    from hpsearch.queue import claim as claim_mod
    from hpsearch.queue import study as study_mod
    from hpsearch.queue.faults import fail_and_requeue, stale_trials

    url = throwaway_pg.create_db("uptime")
    name = unique("uptime")
    _create(tmp_path, url, name, space={"lr": {"choices": [0.01, 0.02]}})
    study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=2))
    trial = claim_mod.claim(study)
    assert trial is not None
    study_mod.set_user_attrs(trial, {"hpsearch:heartbeat_interval": 2})
    with engine_of(url).begin() as conn:  # its worker last beat 30 s ago...
        conn.execute(sa.text("UPDATE trial_heartbeats SET heartbeat = now() - interval '30 seconds'"))
    throwaway_pg.stop("fast")  # ...and the server went down, then came back
    throwaway_pg.start()
    started = time.monotonic()
    assert stale_trials(study, 2) == []
    assert not fail_and_requeue(study, trial._trial_id, "stale: test", only_if_stale=3.0)
    assert study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING
    time.sleep(max(0.0, 3.5 - (time.monotonic() - started)))  # the server has been up for the grace
    assert [t for t, _, _ in stale_trials(study, 2)] == [trial._trial_id]
    assert fail_and_requeue(study, trial._trial_id, "stale: test", only_if_stale=3.0)


def _assert_nobody_reaped(workers: list[subprocess.Popen[str]], name: str, url: str, tmp_path: Path) -> None:
    """Both workers finish cleanly and each of the two trials ran once, never reaped and re-run."""
    codes = [w.wait(timeout=300) for w in workers]
    logs = "\n".join((tmp_path / f"w{i}.log").read_text() for i in range(len(workers)))
    assert codes == [0] * len(workers), logs
    trials = _study(name, url).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [(t.number, t.state, t.user_attrs) for t in trials]


# ---------------------------------------------------------------- journal: what a killed process leaves


def _journal_study(tmp_path: Path, name: str, env: dict[str, str] | None = None, **over: Any) -> tuple[str, optuna.Study]:
    url = f"journal:{tmp_path / 'journal.log'}"
    _create(tmp_path, url, name, env=env, **over)
    return url, _study(name, url)


def test_journal_hand_back_cut_between_its_two_writes_is_requeued(tmp_path: Path) -> None:
    """Item 1 on the journal: FAIL written, its retry not (the process died between the appends)."""
    name = unique("jhand")
    url, study = _journal_study(tmp_path, name)
    storage = study._storage
    first = study.get_trials(deepcopy=False)[0]
    storage.set_trial_state_values(first._trial_id, TrialState.RUNNING)
    storage.set_trial_user_attr(first._trial_id, "fail_reason", "preempted: SIGTERM")
    storage.set_trial_state_values(first._trial_id, TrialState.FAIL)
    _finish(name, url, tmp_path, "w.log")
    assert_exactly_once(_study(name, url), 4)


def test_journal_chunk_cut_before_its_count_runs_nothing_twice(tmp_path: Path) -> None:
    """Item 5 on the journal: two plan items enqueued, `issued` not yet advanced."""
    from hpsearch import space as space_mod
    from hpsearch.spec.loading import load_spec

    name = unique("jchunk")
    env = cli_env(HPSEARCH_ISSUE_CHUNK="2")
    lrs = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
    url, study = _journal_study(tmp_path, name, env=env, space={"lr": {"choices": lrs}})
    spec = load_spec(tmp_path / f"{name}.yaml")
    for i, (params, seed) in enumerate(space_mod.planned_trials(spec)[2:4], start=2):
        study.enqueue_trial(params, user_attrs={"seed": seed, "config_id": space_mod.config_id(params),
                                                "plan_index": i})
    _finish(name, url, tmp_path, "w.log", env=env)
    assert_exactly_once(_study(name, url), 6)


def test_journal_create_cut_after_the_spec_is_finished_by_a_worker(tmp_path: Path) -> None:
    """Item 2 on the journal: spec stored, 3 of 8 plan items enqueued, no ready flag."""
    from hpsearch import space as space_mod
    from hpsearch.spec.loading import load_spec

    name = unique("jcreate")
    lrs = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08]
    path = write_spec(tmp_path, tiny_spec(name, space={"lr": {"choices": lrs}}))
    spec = load_spec(path)
    url = f"journal:{tmp_path / 'journal.log'}"
    storage = open_storage(url, create=True)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("hpsearch:spec", spec.to_dict())
    study.set_user_attr("hpsearch:spec_hash", spec.hash())
    study.set_user_attr("hpsearch:planned", len(lrs))
    for i, (params, seed) in enumerate(space_mod.planned_trials(spec)[:3]):
        study.enqueue_trial(params, user_attrs={"seed": seed, "config_id": space_mod.config_id(params),
                                                "plan_index": i})
    _finish(name, url, tmp_path, "w.log")
    assert_exactly_once(_study(name, url), len(lrs))
    again = run_cli("create-study", str(path), "--storage", url, timeout=60)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr


def test_journal_lock_stall_is_not_death(tmp_path: Path) -> None:
    """Item 7 on the journal: every writer blocked for 8 s (past 1.5 heartbeats) reaps nobody."""
    name = unique("jstall")
    url, study = _journal_study(tmp_path, name, space={"lr": {"choices": [0.01, 0.02]}},
                                train={**SLOW_TRAIN, "epochs": 30})
    workers = [start_worker(name, url, "--heartbeat", "2", "--device", "cpu", log=tmp_path / f"w{i}.log")
               for i in range(2)]
    deadline = time.monotonic() + 120
    while sum(t.state == TrialState.RUNNING and len(t.intermediate_values) >= 2
              for t in _study(name, url).get_trials(deepcopy=False)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    lock = optuna_internals.journal_lock(optuna_internals.journal_backend(open_storage(url)))
    lock.acquire()  # the journal's append lock, as a writer takes it, and sit on it
    time.sleep(8)
    lock.release()
    _assert_nobody_reaped(workers, name, url, tmp_path)


HOLD_JOURNAL_LOCK = """
import os, signal, sys
from hpsearch.storage import optuna_internals
from hpsearch.storage.backend import open_storage
lock = optuna_internals.journal_lock(optuna_internals.journal_backend(open_storage(sys.argv[1])))
lock.acquire()
print("held", flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # dies holding it, as a worker killed mid-append does
"""


def test_a_writer_killed_holding_the_journal_lock_stalls_nobody(tmp_path: Path) -> None:
    """A SIGKILL while a process holds the journal's lock: the kernel drops it with the process, so
    the next worker neither waits out a stale lock file nor warns about one."""
    name = unique("jkill")
    url, _ = _journal_study(tmp_path, name)
    holder = subprocess.run([sys.executable, "-c", HOLD_JOURNAL_LOCK, url], capture_output=True, text=True,
                            env=cli_env(), timeout=120)
    assert holder.returncode == -signal.SIGKILL and holder.stdout.strip() == "held", holder.stderr
    out = _finish(name, url, tmp_path, "after.log")
    assert "longer than" not in out and "lock" not in out.lower(), out
    assert_exactly_once(_study(name, url), 4)


def test_a_second_sigterm_during_shutdown_still_exits_zero(journal_url: str, tmp_path: Path) -> None:
    """Item 13: SIGTERM again while the worker shuts down (a scheduler and a shell both forwarding
    it; the interpreter's shutdown restores the default handlers) is still a clean hand-back."""
    name = unique("twice")
    _create(tmp_path, journal_url, name, space={"lr": {"choices": [0.01, 0.02]}}, train=SLOW_TRAIN)
    w = start_worker(name, journal_url, "--heartbeat", "2", "--device", "cpu")
    tail = Tail(w)
    tail.wait_for("[trial 0] epoch 2/8")
    w.send_signal(signal.SIGTERM)
    tail.wait_for("handed back")
    while w.poll() is None:  # SIGTERM again and again through the whole shutdown
        w.send_signal(signal.SIGTERM)
        time.sleep(0.01)
    assert w.wait(timeout=120) == 0, "".join(tail.lines)
    _finish(name, journal_url, tmp_path, "after.log")
    assert_exactly_once(_study(name, journal_url), 2)


def test_replacing_the_study_under_a_worker_is_one_clear_line(journal_url: str, tmp_path: Path) -> None:
    """Item 13: not "KeyError: 'Record does not exist.'" but what happened."""
    name = unique("replaced")
    _create(tmp_path, journal_url, name, space={"lr": {"choices": [0.01, 0.02]}}, train=SLOW_TRAIN)
    w = start_worker(name, journal_url, "--heartbeat", "2", "--device", "cpu")
    tail = Tail(w)
    tail.wait_for("[trial 0] epoch 2/8")
    run_cli("create-study", str(tmp_path / f"{name}.yaml"), "--storage", journal_url, "--replace", check=True)
    code = w.wait(timeout=120)
    out = "".join(tail.lines)
    assert code != 0 and "Traceback" not in out and "Record does not exist" not in out, out
    assert "was deleted or replaced" in out, out


@pytest.mark.parametrize("backend", ["journal_url", "pg_session_db"])
def test_a_trial_that_kills_every_worker_stops_at_its_retry_limit(backend: str, request: pytest.FixtureRequest,
                                                                    tmp_path: Path) -> None:
    """A trial that crashes its worker each time is retried HPSEARCH_MAX_RETRIES times, then left
    failed with the reason; the other points run once and the study ends."""
    journal_url = request.getfixturevalue(backend)
    name = unique("crash")
    spec = {"name": name, "objective": "hps_objectives:suicidal", "metric": "x", "direction": "minimize",
            "sampler": "grid", "space": {"x": {"choices": [0.1, 0.9]}}}
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", journal_url, check=True)
    env = cli_env(HPSEARCH_MAX_RETRIES="1")
    codes = []
    for i in range(6):  # each run dies on the bad point or, once it is given up, finishes the study
        w = start_worker(name, journal_url, "--heartbeat", "1", env=env, log=tmp_path / f"w{i}.log")
        codes.append(w.wait(timeout=120))
        if codes[-1] == 0:
            break
    assert codes[-1] == 0 and codes.count(-signal.SIGKILL) == 2, codes  # the first run and one retry
    trials = _study(name, journal_url).get_trials(deepcopy=False)
    bad = [t for t in trials if t.params.get("x") == 0.1]
    assert [t.state for t in bad] == [TrialState.FAIL, TrialState.FAIL], [(t.number, t.user_attrs) for t in bad]
    assert bad[-1].user_attrs["retry_exhausted"] and bad[-1].user_attrs["fail_reason"].startswith("stale")
    good = [t for t in trials if t.params.get("x") == 0.9]
    assert [t.state for t in good] == [TrialState.COMPLETE]


def test_a_plugin_missing_on_the_worker_stops_it_before_it_claims_anything(journal_url: str,
                                                                         tmp_path: Path) -> None:
    """Item 12: the objective imported where create-study ran but not where the worker runs: one
    line and a non-zero exit, and every planned trial still waits (none burnt as failed)."""
    from conftest import ROOT

    name = unique("noplugin")
    spec = {"name": name, "objective": "hps_objectives:quadratic", "metric": "loss", "direction": "minimize",
            "sampler": "grid", "space": {"x": {"choices": [0.1, 0.2, 0.3]}}}
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", journal_url, check=True)
    w = start_worker(name, journal_url, env=cli_env(PYTHONPATH=str(ROOT)), log=tmp_path / "w.log")
    code = w.wait(timeout=120)
    out = (tmp_path / "w.log").read_text()
    assert code != 0 and "Traceback" not in out and "hps_objectives" in out, out
    assert [t.state for t in _study(name, journal_url).get_trials(deepcopy=False)] == [TrialState.WAITING] * 3
