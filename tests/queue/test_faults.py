"""Nothing lost, nothing run twice: kill -9, SIGTERM, database restarts, failing trials."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState

from conftest import cli_env, run_cli, start_worker, tiny_spec, unique, write_spec
from faultkit import SLOW_TRAIN, Tail
from hpsearch.storage.backend import open_storage
from pgcluster import Cluster


def _study(name: str, url: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def _create(tmp_path: Path, url: str, name: str, **over: object) -> None:
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name, **over))), "--storage", url, check=True)


def _wait_state(study: optuna.Study, number: int, state: TrialState, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if study.get_trials(deepcopy=False)[number].state == state:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"trial {number} not {state.name} after {timeout}s")


def _assert_grid_complete_once(study: optuna.Study, n_points: int) -> list[optuna.trial.FrozenTrial]:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    keys = Counter((t.user_attrs["config_id"], t.user_attrs["seed"]) for t in complete)
    assert len(keys) == n_points and set(keys.values()) == {1}, keys
    assert not [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    return complete


def test_kill9_mid_trial_is_requeued_and_resumed_from_its_checkpoint(pg_session_db: str, tmp_path: Path) -> None:
    name = unique("kill")
    heartbeat = 3
    _create(tmp_path, pg_session_db, name, space={"lr": {"choices": [0.01, 0.02]}}, train=SLOW_TRAIN)
    victim = start_worker(name, pg_session_db, "--heartbeat", str(heartbeat), "--device", "cpu",
                          "--checkpoint-every", "0")
    tail = Tail(victim)
    tail.wait_for("[trial 0] epoch 4/8")
    other = start_worker(name, pg_session_db, "--heartbeat", str(heartbeat), "--device", "cpu",
                         log=tmp_path / "other.log")
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.wait()
    study = _study(name, pg_session_db)
    requeue_after = _wait_state(study, 0, TrialState.FAIL, timeout=60)
    assert other.wait(timeout=300) == 0, (tmp_path / "other.log").read_text()

    # Re-queued by the other worker's reaper, and not before 1.5 heartbeats of silence (how soon
    # after the kill depends on how fast the other worker starts on a loaded machine: not asserted).
    assert time.monotonic() - killed_at >= requeue_after
    trials = study.get_trials(deepcopy=False)
    original = trials[0]
    assert original.state == TrialState.FAIL and original.user_attrs["fail_reason"].startswith("stale")
    silent = float(original.user_attrs["fail_reason"].split("no heartbeat for ")[1].split("s")[0])
    assert silent >= 1.5 * heartbeat - 0.5, original.user_attrs["fail_reason"]
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 0)
    # The lineage as Optuna's own tooling (and optuna-dashboard users' scripts) read it.
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(retry) == [0]
    assert retry.state == TrialState.COMPLETE and retry.params == original.params
    assert retry.user_attrs["seed"] == original.user_attrs["seed"]
    resumed = retry.user_attrs["resumed_from_epoch"]
    assert resumed >= 3  # epochs 1..3 were checkpointed before the kill at epoch 4
    assert retry.user_attrs["epochs_trained"] == 8 - resumed  # only the missing epochs ran again
    assert [r["epoch"] for r in retry.user_attrs["curve"]] == list(range(1, 9))
    assert sorted(retry.intermediate_values) == list(range(1, 9))
    _assert_grid_complete_once(study, 2)
    print(f"kill -> requeue {requeue_after:.1f}s (heartbeat {heartbeat}s); resumed at epoch {resumed} of 8")


def test_sigterm_hands_the_trial_back_and_exits_zero(journal_url: str, tmp_path: Path) -> None:
    name = unique("term")
    _create(tmp_path, journal_url, name, space={"lr": {"choices": [0.01]}}, train=SLOW_TRAIN)
    worker = start_worker(name, journal_url, "--heartbeat", "5", "--device", "cpu", "--checkpoint-every", "0")
    tail = Tail(worker)
    tail.wait_for("[trial 0] epoch 3/8")
    worker.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    assert worker.wait(timeout=30) == 0, "".join(tail.lines)
    assert time.monotonic() - sent < 10  # bounded: at most one batch plus bookkeeping
    assert any("handed back" in line for line in tail.lines)
    study = _study(name, journal_url)
    first = study.get_trials(deepcopy=False)[0]
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"].startswith("preempted")
    assert study.get_trials(deepcopy=False)[1].state == TrialState.WAITING

    again = start_worker(name, journal_url, "--device", "cpu", log=tmp_path / "again.log")
    assert again.wait(timeout=120) == 0
    retry = study.get_trials(deepcopy=False)[1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0
    assert retry.user_attrs["resumed_from_epoch"] >= 2


def test_failing_trials_are_recorded_and_the_worker_goes_on(journal_url: str, tmp_path: Path) -> None:
    name = unique("nan")
    # lr 1e4 with plain SGD diverges at once; 0.05 trains normally.
    _create(tmp_path, journal_url, name, space={"lr": {"choices": [10000.0, 0.05]}},
            train={"epochs": 2, "batch_size": 64, "model": "dense", "hidden_size": 16, "hidden_layers": 1,
                   "optimizer": "sgd"})
    out = start_worker(name, journal_url, "--device", "cpu", log=tmp_path / "w.log")
    assert out.wait(timeout=120) == 0, (tmp_path / "w.log").read_text()
    diverged, ok = _study(name, journal_url).get_trials(deepcopy=False)
    assert diverged.state == TrialState.FAIL and diverged.user_attrs["divergent"] is True
    assert "Divergent: loss became" in diverged.user_attrs["fail_reason"]
    assert ok.state == TrialState.COMPLETE


def test_a_broken_plugin_fails_its_trials_and_a_broken_node_stops(journal_url: str, tmp_path: Path) -> None:
    name = unique("broken")
    spec = {"name": name, "objective": "hps_objectives:broken", "sampler": "random", "budget": 10,
            "metric": "loss", "direction": "minimize", "space": {"x": {"low": 0.0, "high": 1.0}}}
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", journal_url, check=True)
    proc = start_worker(name, journal_url, "--max-failures", "3", log=tmp_path / "w.log")
    assert proc.wait(timeout=60) == 1
    log = (tmp_path / "w.log").read_text()
    assert "3 trials failed in a row" in log and "Traceback" not in log
    trials = _study(name, journal_url).get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 3
    assert all(t.user_attrs["fail_reason"] == "ZeroDivisionError: user plugin bug: division by zero" for t in failed)
    assert sum(t.state == TrialState.WAITING for t in trials) >= 7 - 3  # the rest of the queue is untouched


def test_database_restart_mid_study_loses_nothing(throwaway_pg: Cluster, tmp_path: Path) -> None:
    url = throwaway_pg.create_db("restart")
    name = unique("restart")
    lrs = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
    train = {**SLOW_TRAIN, "epochs": 3, "hidden_size": 128}
    _create(tmp_path, url, name, space={"lr": {"choices": lrs}}, repeats=2, train=train)
    env = cli_env(HPSEARCH_DB_WAIT="120")
    workers = [start_worker(name, url, "--heartbeat", "10", "--device", "cpu", env=env, log=tmp_path / f"w{i}.log")
               for i in range(3)]
    study = _study(name, url)
    deadline = time.monotonic() + 120
    while sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    throwaway_pg.stop("fast")  # kills every connection of every worker mid-trial
    time.sleep(3)
    throwaway_pg.start()
    codes = [w.wait(timeout=300) for w in workers]
    logs = "\n".join((tmp_path / f"w{i}.log").read_text() for i in range(3))
    assert codes == [0, 0, 0], logs
    assert "storage unreachable" in logs  # they did see the outage and waited it out
    _assert_grid_complete_once(_study(name, url), len(lrs) * 2)


def test_wrong_password_is_one_masked_line(throwaway_pg: Cluster, tmp_path: Path) -> None:
    bad = throwaway_pg.url(password="wrong-pass-123")
    spec = write_spec(tmp_path, tiny_spec("pw"))
    for args in (["create-study", str(spec), "--storage", bad], ["status", "pw", "--storage", bad],
                 ["list", "--storage", bad]):
        proc = run_cli(*args)
        assert proc.returncode != 0
        assert "wrong-pass-123" not in proc.stderr + proc.stdout
        assert "postgres:***@" in proc.stderr and "password authentication failed" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_one_heartbeat_beats_a_group_until_each_member_is_released(tmp_path: Path) -> None:
    """A fused group's heartbeat: every member beats from the start, a released member stops beating
    while the others go on, and releasing the last stops the thread."""
    from hpsearch.queue.faults import Heartbeat
    from hpsearch.storage.optuna_internals import storage_of, trial_id

    study = optuna.create_study(storage=open_storage(f"journal:{tmp_path / 'j.log'}", create=True))
    trials = [study.ask() for _ in range(3)]
    ids = [trial_id(t) for t in trials]

    def beats() -> list[float]:
        return [storage_of(study).get_trial(i).user_attrs["hpsearch:beat"] for i in ids]

    beat = Heartbeat(study, ids, interval=0.4)
    with beat:
        first = beats()  # every member at once, before anything else happens
        beat.release(ids[0])
        released = beats()[0]
        time.sleep(1.0)  # five beat periods
        later = beats()
        assert later[0] == released and all(b > a for b, a in zip(later[1:], first[1:], strict=True))
        beat.release(ids[1])
        beat.release(ids[2])
        assert not beat._thread.is_alive()


def test_a_reaped_trials_silence_reads_back_from_its_reason() -> None:
    from hpsearch.queue.retries import retryable, stale_reason, stale_silence

    reason = stale_reason(47.4, 45.0)
    assert stale_silence(reason) == 47.0 and retryable(reason)
    assert stale_silence("preempted: stop requested") is None
