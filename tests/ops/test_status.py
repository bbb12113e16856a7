"""`hpsearch status`, `best --json`, `list --json` and `--version`: one unit (trials), stale trials,
hand-backs, an ETA from recent throughput; constructed studies with known answers, and a worker
killed with SIGKILL."""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from rich.console import Console

from conftest import run_cli, start_worker, tiny_spec, unique
from hpsearch import schema
from hpsearch import space as space_mod
from hpsearch.ops import status
from hpsearch.queue import claim as claim_mod
from hpsearch.queue import plan as plan_mod
from hpsearch.queue import study as study_mod
from hpsearch.spec.parse import parse_spec
from hpsearch.storage.backend import open_storage


def _text(snap: dict[str, Any]) -> str:
    console = Console(width=200, record=True)
    console.print(status.render_status(snap))
    return console.export_text()


def _add(study: optuna.Study, state: TrialState, value: float | None = None, start: float | None = None,
         end: float | None = None, **attrs: Any) -> int:
    trial = optuna.trial.create_trial(state=state, value=value, user_attrs=attrs)
    if start is not None:
        trial.datetime_start = datetime.fromtimestamp(start)
    if end is not None:
        trial.datetime_complete = datetime.fromtimestamp(end)
    study.add_trial(trial)
    return len(study.get_trials(deepcopy=False)) - 1


# ---------------------------------------------------------------- units


def test_progress_counts_trials_and_adds_up_for_a_sampled_study_with_repeats(journal_url: str) -> None:
    # The case: a random budget of 3 configurations x 2 seeds once read "6 finished of 3 planned".
    raw = tiny_spec(unique("units"), sampler="random", budget=3, repeats=2, space={"lr": {"low": 0.01, "high": 0.1}})
    study, _ = plan_mod.create(parse_spec(raw, "test"), open_storage(journal_url, create=True))
    spec = study_mod.stored_spec(study)

    def run_next(prune: bool = False) -> None:
        trial = claim_mod.claim(study)
        assert trial is not None
        params = space_mod.suggest(trial, spec.space)
        if prune:
            study.tell(trial, state=TrialState.PRUNED)  # a pruned first seed queues no other seed
            return
        if schema.REPEAT_OF not in trial.user_attrs:
            plan_mod.enqueue_repeats(study, trial, spec, params, [1])  # what the worker does on completion
        study.tell(trial, 0.5)

    run_next()
    snap = status.snapshot_study(study, spec)
    # 1 done; waiting: 2 first seeds + 1 second seed; each waiting first seed may bring 1 more.
    assert (snap["finished"], snap["remaining"], snap["planned"], snap["upper_bound"]) == (1, 5, 6, True)
    text = _text(snap)
    assert "1 finished of at most 6 planned, at most 5 to go (trials" in text
    assert "budget 3 configurations" in text

    run_next(prune=True)
    while study_mod.active_counts(study)[0]:
        run_next()
    snap = status.snapshot_study(study, spec)
    assert (snap["finished"], snap["remaining"], snap["planned"], snap["upper_bound"]) == (5, 0, 5, False)
    assert "5 finished of 5 planned, 0 to go (trials" in _text(snap)
    record = status.status_record(snap)
    assert record["progress"] == {"unit": "trials", "finished": 5, "planned": 5, "to_go": 0, "upper_bound": False}
    assert record["plan"] == {"unit": "configurations", "size": 3, "seeds_per_configuration": 2}


# ---------------------------------------------------------------- stale trials and hand-backs


def test_stale_running_trials_are_marked_and_hand_backs_are_not_failures(journal_url: str) -> None:
    study = optuna.create_study(storage=open_storage(journal_url, create=True), study_name=unique("stale"),
                                direction="maximize")
    now = time.time()
    curve = [{"epoch": e} for e in range(1, 15)]
    dead = _add(study, TrialState.RUNNING, **{schema.WORKER: "node1:11", schema.BEAT: now - 100,
                                              schema.BEAT_INTERVAL: 10, "curve": curve, "config": {"epochs": 30}})
    live = _add(study, TrialState.RUNNING, **{schema.WORKER: "node2:22", schema.BEAT: now,
                                              schema.BEAT_INTERVAL: 30})
    _add(study, TrialState.FAIL, fail_reason="preempted: stopped during epoch 3; resumes from epoch 2")
    _add(study, TrialState.FAIL, fail_reason="RuntimeError: CUDA error: an illegal memory access")
    _add(study, TrialState.COMPLETE, 0.9)

    snap = status.snapshot_study(study)
    assert set(snap["stale"]) == {dead} and live not in snap["stale"]
    age, limit = snap["stale"][dead]
    assert age >= 100 and limit == 15  # 1.5 heartbeat intervals, as the reaper judges
    assert (snap["counts"]["handed back"], snap["counts"]["failed"], snap["counts"]["running"]) == (1, 1, 2)
    text = _text(snap)
    assert "failed 1  handed back 1  running 2 (1 stale)" in text
    assert f"trial {dead}, epoch 14/30" in text and "STALE: no heartbeat for 1m4" in text
    assert "workers (1 busy, 2 seen, 1 silent)" in text and f"trial {dead}: no heartbeat for" in text
    record = status.status_record(snap)
    assert record["trials"]["stale"] == 1 and record["trials"]["handed_back"] == 1 and record["trials"]["failed"] == 1
    assert [w["stale"] for w in record["workers"]] == [True, False]


def test_status_after_sigkill_of_the_only_worker_shows_its_trial_stale(tmp_path: Path) -> None:
    name, url = unique("killed"), f"journal:{tmp_path / 'journal.log'}"
    spec = tiny_spec(name, train={"epochs": 500, "batch_size": 128, "model": "dense", "hidden_size": 16,
                                  "hidden_layers": 1})
    plan_mod.create(parse_spec(spec, "test"), open_storage(url, create=True))
    proc = start_worker(name, url, "--device", "cpu", "--heartbeat", "1", "--quiet", log=tmp_path / "w.log")
    try:
        storage = open_storage(url)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until a trial has trained a few epochs
            running = storage.get_all_trials(storage.get_study_id_from_name(name), states=(TrialState.RUNNING,))
            if running and len(running[0].user_attrs.get("curve") or []) >= 3:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no trial reached epoch 3: " + (tmp_path / "w.log").read_text())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    time.sleep(2.0)  # past 1.5 heartbeat intervals
    record = json.loads(run_cli("status", name, "--storage", url, "--json", check=True).stdout)
    # Every trial the killed worker ran (one, or a fused group) is stale.
    assert record["trials"]["running"] >= 1 and record["trials"]["stale"] == record["trials"]["running"]
    (worker,) = record["workers"]
    assert worker["stale"] and worker["running_trial"] in {s["trial"] for s in record["stale"]}
    assert record["stale"][0]["heartbeat_age_seconds"] > record["stale"][0]["limit_seconds"] == 1.5


# ---------------------------------------------------------------- ETA


def test_eta_comes_from_the_recent_busy_pace_not_the_studys_whole_life(journal_url: str) -> None:
    study = optuna.create_study(storage=open_storage(journal_url, create=True), study_name=unique("eta"))
    now = time.time()
    old = now - 3 * 86400
    for i in range(40):  # three days ago: 4 trials an hour, then the study sat idle
        _add(study, TrialState.COMPLETE, 1.0, start=old + 900 * i, end=old + 900 * i + 800)
    for i in range(25):  # the last 500 s: one 15 s trial every 20 s
        end = now - 500 + 20 * i
        _add(study, TrialState.COMPLETE, 1.0, start=end - 15, end=end)
    _add(study, TrialState.RUNNING, start=now - 10, **{schema.BEAT: now, schema.BEAT_INTERVAL: 30})
    for _ in range(50):
        _add(study, TrialState.WAITING)

    snap = status.snapshot_study(study, now=now)
    busy = 25 * 15 + 10  # the 25 trials of the last 10 minutes and the running one; the gaps are idle
    assert snap["window_trials"] == 25 and snap["window_s"] == pytest.approx(busy, abs=0.01)
    assert snap["per_hour"] == pytest.approx(25 / busy * 3600, rel=1e-6)
    assert snap["eta"] == pytest.approx(51 / (25 / busy * 3600) * 3600, rel=1e-6)  # 50 waiting + 1 running
    assert "over the last 25 finished trials" in _text(snap)


def test_throughput_ignores_an_idle_spell_inside_the_last_twenty_trials() -> None:
    from types import SimpleNamespace

    def trial(number: int, start: float, end: float) -> Any:
        return SimpleNamespace(number=number, state=TrialState.COMPLETE, datetime_start=datetime.fromtimestamp(start),
                               datetime_complete=datetime.fromtimestamp(end))

    now = time.time()
    # 15 one-minute trials, two idle days, then 5 more; nothing runs now.
    trials = [trial(i, now - 2 * 86400 - 60 * (15 - i), now - 2 * 86400 - 60 * (14 - i)) for i in range(15)]
    trials += [trial(15 + i, now - 60 * (6 - i), now - 60 * (5 - i)) for i in range(5)]
    per_hour, n, busy = status.recent_throughput(trials, now)
    assert (n, busy) == (20, pytest.approx(20 * 60)) and per_hour == pytest.approx(60)
    assert status.recent_throughput([], now) == (0.0, 0, 0.0)


# ---------------------------------------------------------------- for scripts


def test_json_output_of_status_best_and_list_and_the_version(journal_url: str) -> None:
    study = optuna.create_study(storage=open_storage(journal_url, create=True), study_name=unique("json"),
                                direction="maximize")
    for seed, (state, value) in enumerate([(TrialState.COMPLETE, 0.9), (TrialState.PRUNED, None)]):
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value, params={"lr": 0.1},
            distributions={"lr": optuna.distributions.FloatDistribution(0.01, 1)},
            user_attrs={"config_id": "c1", "seed": seed}, intermediate_values={1: 0.5}))
    name = study.study_name

    record = json.loads(run_cli("status", name, "--storage", journal_url, "--json", check=True).stdout)
    assert record["trials"] == {"complete": 1, "pruned": 1, "failed": 0, "handed_back": 0, "running": 0,
                                "waiting": 0, "stale": 0, "total": 2}
    assert record["best_trial"]["value"] == 0.9 and record["progress"]["unit"] == "trials"
    best = json.loads(run_cli("best", name, "--storage", journal_url, "--json", check=True).stdout)
    (config,) = best["configurations"]
    assert config["seeds"] == {"seeds": 2, "complete": 1, "pruned": 1, "failed": 0, "pending": 0}
    assert config["clean"] is False and config["value"]["mean"] == 0.9 and config["value"]["low"] is None
    studies = json.loads(run_cli("list", "--storage", journal_url, "--json", check=True).stdout)
    (listed,) = studies
    assert {k: listed[k] for k in ("study", "trials", "finished", "planned", "directions", "best_value")} == {
        "study": name, "trials": 2, "finished": 2, "planned": 2, "directions": ["maximize"], "best_value": 0.9}
    version = run_cli("--version", check=True).stdout
    assert version.startswith(f"hpsearch {__import__('hpsearch').__version__} (optuna {optuna.__version__}")
