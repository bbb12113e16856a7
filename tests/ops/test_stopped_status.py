"""A study stopped with `hpsearch stop` reads as stopped in `status` and `list`, text and --json,
with the line that resumes it; its figures still add up, it has no ETA, and its clock stops once
its running trials have ended. Real CLI processes on a real journal storage."""

from __future__ import annotations

import json
import time
from typing import Any

import optuna

from conftest import cli_env, run_cli, tiny_spec, unique
from hpsearch import schema
from hpsearch.ops import status
from hpsearch.queue import claim as claim_mod
from hpsearch.queue import plan as plan_mod
from hpsearch.queue import study as study_mod
from hpsearch.spec.parse import parse_spec
from hpsearch.storage.backend import open_storage


def _claim(study: optuna.Study) -> optuna.Trial:
    trial = claim_mod.claim(study)  # its grid point's parameters are not needed here
    assert trial is not None
    return trial


def _status(name: str, url: str) -> tuple[dict[str, Any], str]:
    record = json.loads(run_cli("status", name, "--storage", url, "--json", check=True).stdout)
    # Wide enough that rich does not wrap a row (piped output is 80 columns otherwise).
    return record, run_cli("status", name, "--storage", url, env=cli_env(COLUMNS="300"), check=True).stdout


def _listed(name: str, url: str) -> tuple[dict[str, Any], str]:
    (record,) = [r for r in json.loads(run_cli("list", "--storage", url, "--json", check=True).stdout)
                 if r["study"] == name]
    return record, run_cli("list", "--storage", url, check=True).stdout


def test_a_stopped_study_reads_as_stopped_in_status_and_list_until_resumed(journal_url: str) -> None:
    name = unique("stopped")
    study, _ = plan_mod.create(parse_spec(tiny_spec(name), "test"), open_storage(journal_url, create=True))
    study.set_user_attr(schema.CREATED_ATTR, time.time() - 3600)
    for value in (0.5, 0.6):
        study.tell(_claim(study), value)
    running = _claim(study)  # a worker is in the middle of a trial when the study is stopped
    run_cli("stop", name, "--storage", journal_url, check=True)

    record, text = _status(name, journal_url)
    assert (record["state"], record["resume"]) == ("stopped", f"hpsearch resume {name}")
    assert record["stopped_at"] and record["eta_seconds"] is None
    assert record["progress"] == {"unit": "trials", "finished": 2, "planned": 4, "to_go": 2, "upper_bound": False}
    assert (record["trials"]["running"], record["trials"]["waiting"]) == (1, 1)
    assert "STOPPED since" in text and "its 1 running trial finish first; 1 to go stay queued" in text, text
    assert f"resume with: hpsearch resume {name}" in text and "none while stopped" in text, text

    listed, table = _listed(name, journal_url)
    assert (listed["state"], listed["finished"], listed["planned"]) == ("stopped", 2, 4)
    assert listed["stopped_at"] == record["stopped_at"]
    row = next(line for line in table.splitlines() if name in line and "/4" in line)
    assert "stopped" in row and "2/4" in row, table
    assert f"{name}: stopped since {record['stopped_at']}; resume with: hpsearch resume {name}" in table, table

    # Once its last running trial has ended, nothing is spent: the clock stops there.
    study.tell(running, 0.7)
    last = max(t.datetime_complete.timestamp() for t in study.get_trials(deepcopy=False) if t.datetime_complete)
    created = study.user_attrs[schema.CREATED_ATTR]
    later = status.snapshot_study(study, study_mod.stored_spec(study), now=time.time() + 86400)
    assert later["state"] == "stopped" and abs(later["elapsed"] - (last - created)) < 1
    assert status._done(later)  # `status --watch` returns: nothing changes until a resume

    run_cli("resume", name, "--storage", journal_url, check=True)
    record, text = _status(name, journal_url)
    assert (record["state"], record["stopped_at"], record["resume"]) == ("active", None, None)
    assert "STOPPED" not in text and "hpsearch resume" not in text, text
    listed, table = _listed(name, journal_url)
    assert listed["state"] == "active" and "hpsearch resume" not in table


def test_a_stopped_study_with_nothing_left_is_done(journal_url: str) -> None:
    name = unique("stopdone")
    study, _ = plan_mod.create(parse_spec(tiny_spec(name), "test"), open_storage(journal_url, create=True))
    for value in (0.1, 0.2, 0.3, 0.4):
        study.tell(_claim(study), value)
    run_cli("stop", name, "--storage", journal_url, check=True)
    record, text = _status(name, journal_url)
    assert (record["state"], record["resume"]) == ("done", None)  # nothing to resume
    assert "hpsearch resume" not in text and "done: nothing waits" in text, text
    assert _listed(name, journal_url)[0]["state"] == "done"
