"""`hpsearch list` (done/planned, the study's creation time, the best configuration's mean) and
`status` (elapsed stops with the study; a reaped trial's silence is not busy time): constructed
studies with known answers, read through the CLI as a user reads them."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from conftest import run_cli, tiny_spec, unique
from hpsearch import schema
from hpsearch import space as space_mod
from hpsearch.ops import status
from hpsearch.queue import claim as claim_mod
from hpsearch.queue import plan as plan_mod
from hpsearch.queue import study as study_mod
from hpsearch.spec.parse import parse_spec
from hpsearch.storage.backend import open_storage


def _add(study: optuna.Study, state: TrialState, value: float | None = None, start: float | None = None,
         end: float | None = None, params: dict[str, Any] | None = None, **attrs: Any) -> None:
    dists = {k: optuna.distributions.CategoricalDistribution([v]) for k, v in (params or {}).items()}
    trial = optuna.trial.create_trial(state=state, value=value, params=params, distributions=dists,
                                      user_attrs=attrs)
    if start is not None:
        trial.datetime_start = datetime.fromtimestamp(start)
    if end is not None:
        trial.datetime_complete = datetime.fromtimestamp(end)
    study.add_trial(trial)


def _finish_next(study: optuna.Study, value: float) -> dict[str, Any]:
    """Claim the next waiting trial as a worker does and complete it with `value`; its user attrs."""
    trial = claim_mod.claim(study)
    assert trial is not None
    space_mod.suggest(trial, study_mod.stored_spec(study).space)
    attrs = dict(trial.user_attrs)
    study.tell(trial, value)
    return attrs


def test_list_shows_done_of_planned_creation_time_and_the_best_configurations_mean(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A grid of 8 configurations x 2 seeds = 16 planned; create-study enqueues it in chunks, so the
    # tickets issued so far are not the plan. One configuration has a lucky seed (0.99) and a bad
    # one (0.01): the best single trial, but not the best configuration (0.8 and 0.7 -> 0.75).
    name = unique("list")
    raw = tiny_spec(name, repeats=2, space={"lr": {"choices": [0.1, 0.01, 0.001, 0.0001]},
                                            "optimizer": {"choices": ["sgd", "adam"]}})
    monkeypatch.setenv("HPSEARCH_ISSUE_CHUNK", "6")
    before = time.time()
    study, _ = plan_mod.create(parse_spec(raw, "test"), open_storage(pg_url, create=True))
    assert study.user_attrs[schema.ISSUED_ATTR] == 6  # the tickets issued so far are not the plan
    study.set_user_attr(schema.CREATED_ATTR, before - 7200)  # created two hours before any trial ran
    done = [_finish_next(study, v) for v in (0.99, 0.01, 0.8, 0.7)]
    assert done[0][schema.CONFIG_ID] == done[1][schema.CONFIG_ID] != done[2][schema.CONFIG_ID]

    records = json.loads(run_cli("list", "--storage", pg_url, "--json", check=True).stdout)
    (r,) = [r for r in records if r["study"] == name]
    assert (r["finished"], r["planned"], r["planned_upper_bound"]) == (4, 16, False)
    assert r["best_value"] == pytest.approx(0.75) and r["best_configuration"]["seeds"] == 2
    assert abs(datetime.fromisoformat(r["created"]).timestamp() - (before - 7200)) < 1

    text = run_cli("list", "--storage", pg_url, check=True).stdout
    line = next(line for line in text.splitlines() if name in line)
    assert "4/16" in line and "0.7500 (2 seeds)" in line and "0.99" not in line
    assert datetime.fromtimestamp(before - 7200).astimezone().strftime("%Y-%m-%d") in line
    assert "best configuration" in text and "done/planned" in text


def test_list_of_a_plain_optuna_study_without_trials_says_dash(journal_url: str) -> None:
    name = unique("plain")
    optuna.create_study(storage=open_storage(journal_url, create=True), study_name=name)
    (r,) = json.loads(run_cli("list", "--storage", journal_url, "--json", check=True).stdout)
    assert (r["finished"], r["planned"], r["best_configuration"], r["created"]) == (0, 0, None, None)
    line = next(line for line in run_cli("list", "--storage", journal_url, check=True).stdout.splitlines()
                if name in line)
    assert "0/0" in line and line.count("-") >= 2


def test_elapsed_stops_at_the_last_trials_end_once_the_study_is_done(journal_url: str) -> None:
    name = unique("elapsed")
    study, _ = plan_mod.create(parse_spec(tiny_spec(name), "test"), open_storage(journal_url, create=True))
    spec = study_mod.stored_spec(study)
    now = time.time()
    created = now - 3 * 3600
    study.set_user_attr(schema.CREATED_ATTR, created)
    for i in range(4):
        _finish_next(study, 0.5 + i / 100)
    last = max(t.datetime_complete.timestamp() for t in study.get_trials(deepcopy=False))

    snap = status.snapshot_study(study, spec, now=now + 86400)  # looked at a day later
    assert snap["remaining"] == 0
    assert snap["elapsed"] == pytest.approx(last - created, abs=1)
    record = json.loads(run_cli("status", name, "--storage", journal_url, "--json", check=True).stdout)
    assert record["elapsed_seconds"] == pytest.approx(last - created, abs=1)


def test_elapsed_keeps_counting_while_trials_wait(journal_url: str) -> None:
    name = unique("elapsed")
    study, _ = plan_mod.create(parse_spec(tiny_spec(name), "test"), open_storage(journal_url, create=True))
    now = time.time()
    study.set_user_attr(schema.CREATED_ATTR, now - 600)
    snap = status.snapshot_study(study, study_mod.stored_spec(study), now=now)
    assert snap["remaining"] == 4 and snap["elapsed"] == pytest.approx(600, abs=1)


def test_a_reaped_trials_silence_is_not_busy_time(journal_url: str) -> None:
    study = optuna.create_study(storage=open_storage(journal_url, create=True), study_name=unique("reaped"))
    now = time.time()
    for i in range(5):  # five 60 s trials, back to back
        _add(study, TrialState.COMPLETE, 1.0, start=now - 4000 + 60 * i, end=now - 4000 + 60 * (i + 1))
    # A worker died 60 s into its trial; the reaper failed it 3,000 s later (no worker ran meanwhile).
    _add(study, TrialState.FAIL, start=now - 3700, end=now - 640,
         fail_reason="stale: no heartbeat for 3000s (limit 45s); worker presumed dead")
    _add(study, TrialState.WAITING)

    snap = status.snapshot_study(study, now=now)
    assert snap["window_trials"] == 6
    assert snap["window_s"] == pytest.approx(6 * 60, abs=1)  # not 5 * 60 + 3,060
    assert snap["per_hour"] == pytest.approx(60, rel=0.01)
    assert snap["eta"] == pytest.approx(60, rel=0.01)  # one waiting trial at one a minute


def test_the_reports_compute_time_ends_a_reaped_trial_at_its_last_heartbeat(journal_url: str) -> None:
    from hpsearch.report.cost import cost

    study = optuna.create_study(storage=open_storage(journal_url, create=True), study_name=unique("cost"))
    now = time.time()
    _add(study, TrialState.COMPLETE, 1.0, start=now - 4000, end=now - 3940)
    _add(study, TrialState.FAIL, start=now - 3700, end=now - 640,
         fail_reason="stale: no heartbeat for 3000s (limit 45s); worker presumed dead")
    _add(study, TrialState.FAIL, start=now - 600, end=now - 540, fail_reason="RuntimeError: boom")
    assert cost(study.get_trials(deepcopy=False), now=now).compute_s == pytest.approx(3 * 60, abs=1)
