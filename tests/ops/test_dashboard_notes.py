"""`hpsearch dashboard` writes what optuna-dashboard cannot know into the page: `best`'s ranking over
seeds (a table on the study's top page and the study's note) next to the Best Trial card, which is
a lucky seed here, and a note on a dead worker's trial that the dashboard shows as Running. A real
dashboard process in read-only mode, real workers (one killed with SIGKILL), headless Chromium."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from test_dashboard import TOKEN, _page_text, start_dashboard, stop, wait_for

from conftest import cli_env, run_cli, start_worker, tiny_spec, unique, write_spec
from faultkit import SLOW_TRAIN, Tail
from hpsearch import schema
from hpsearch import space as space_mod
from hpsearch.errors import HpsearchError
from hpsearch.ops import notes
from hpsearch.optuna_private import dashboard_note
from hpsearch.queue import claim as claim_mod
from hpsearch.queue import study as study_mod
from hpsearch.storage.backend import open_storage
from hpsearch.storage.optuna_internals import storage_of, study_id, trial_id


def _note(study: optuna.Study, trial: int | None) -> str:
    attrs = storage_of(study).get_study_system_attrs(study_id(study))
    return dashboard_note(attrs, None if trial is None else trial_id(study.trials[trial]))[1]


def _lucky_study(tmp_path: Path, url: str) -> tuple[str, optuna.Study]:
    """3 configurations x 2 seeds: A = 0.99 and a pruned seed (the best single trial, set aside),
    B = 0.8 and 0.7 (best's first), C = 0.6 and a seed whose worker is killed mid-trial (stale)."""
    name = unique("notes")
    spec = tiny_spec(name, repeats=2, space={"lr": {"choices": [0.01, 0.1, 0.3]}}, train=SLOW_TRAIN)
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", url, check=True)
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    for value in (0.99, None, 0.8, 0.7, 0.6):
        trial = claim_mod.claim(study)
        assert trial is not None
        space_mod.suggest(trial, study_mod.stored_spec(study).space)
        study.tell(trial, value, state=TrialState.PRUNED if value is None else None)
    configs = [t.user_attrs[schema.CONFIG_ID] for t in study.trials]
    assert configs[0] == configs[1] != configs[2] == configs[3] != configs[4]
    victim = start_worker(name, url, "--device", "cpu", "--heartbeat", "2", "--checkpoint-every", "0")
    Tail(victim).wait_for("[trial 5] epoch 1/8")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    return name, study


def test_the_page_shows_best_ranking_beside_the_lucky_best_trial_and_a_dead_workers_trial(
        tmp_path: Path, journal_url: str, browser: Any) -> None:
    from optuna_dashboard import save_note

    name, study = _lucky_study(tmp_path, journal_url)
    save_note(study, "My own remark on this study.")  # what a user wrote in a writable dashboard stays
    server, base = start_dashboard(journal_url, "--read-only",
                                   env=cli_env(HPSEARCH_TOKEN=TOKEN, HPSEARCH_DASHBOARD_NOTES="1"))
    browser.set_window_size(1400, 1000)
    try:
        browser.get(f"{base}/dashboard?token={TOKEN}")
        wait_for(lambda: name in _page_text(browser), 60, f"study {name} on the study list")
        sid = study_id(study)
        # --- the top page: the ranking's table beside the Best Trial card ----------------------
        browser.get(f"{base}/dashboard/studies/{sid}")
        wait_for(lambda: "Best Trial (number=0)" in _page_text(browser), 60, "the Best Trial card")
        wait_for(lambda: "the Best Trial card (trial 0) is a lucky seed of a set-aside configuration"
                 in _page_text(browser), 60, "hpsearch's table on the top page")
        text = _page_text(browser)
        # B's mean first, A (its surviving seed alone) after every clean configuration.
        assert text.index("0.7500 [") < text.index("0.9900 (1 seed)"), text

        # --- the study's note: the ranking, under the user's own remark ------------------------
        browser.get(f"{base}/dashboard/studies/{sid}/note")
        wait_for(lambda: f"as hpsearch best {name} ranks them" in _page_text(browser), 60, "the study note")
        text = _page_text(browser)
        assert text.index("My own remark on this study.") < text.index("Written by hpsearch"), text
        assert "Best Trial (number=0) on the card: one seed (val_acc 0.99) of a configuration that is set aside" \
            in text, text

        # --- the trials: the card's lucky seed says so; the dead worker's trial is stale -------
        browser.get(f"{base}/dashboard/studies/{sid}/trials?numbers=0")
        wait_for(lambda: "This is the dashboard's Best Trial: one seed" in _page_text(browser), 60,
                 "the Best Trial's note")
        browser.get(f"{base}/dashboard/studies/{sid}/trials?numbers=5")
        wait_for(lambda: "Stale: its worker is presumed dead." in _page_text(browser), 60, "trial 5's note")
        assert "Running" in _page_text(browser)

        # --- a worker re-queues it and runs it: the stale note goes, the ranking follows ------
        worker = start_worker(name, journal_url, "--device", "cpu", "--heartbeat", "2")
        out, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0 and "study done" in out, out
        wait_for(lambda: "Stale" not in _note(study, 5), 30, "trial 5's stale note dropped")
        wait_for(lambda: "| 2 seeds | 4, 6 |" in _note(study, None), 30, "configuration C's retry in the ranking")
        assert _note(study, None).startswith("My own remark on this study.")
    finally:
        stop(server)


def test_notes_are_written_only_when_they_change(tmp_path: Path, journal_url: str) -> None:
    name, study = _lucky_study(tmp_path, journal_url)
    spec = study_mod.stored_spec(study)
    assert notes.refresh(study, spec) >= 3  # the table, the study's note, the card's trial (+ trial 5 once silent)

    def stale_noted() -> bool:
        notes.refresh(study, spec)
        return "Stale" in _note(study, 5)

    wait_for(stale_noted, 30, "trial 5's stale note")
    assert notes.refresh(study, spec) == 0  # nothing changed: nothing written (the journal does not grow)
    assert notes.split(_note(study, 5))[0] == ""


@pytest.mark.parametrize("raw, every", [("", notes.NOTES_EVERY), ("5", 5.0), ("off", 0.0), ("0", 0.0)])
def test_the_refresh_interval_comes_from_the_environment(raw: str, every: float,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPSEARCH_DASHBOARD_NOTES", raw)
    assert notes.interval_from_env() == every


@pytest.mark.parametrize("raw", ["soon", "-1", "nan"])
def test_a_bad_refresh_interval_is_one_line(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPSEARCH_DASHBOARD_NOTES", raw)
    with pytest.raises(HpsearchError, match="HPSEARCH_DASHBOARD_NOTES must be seconds >= 0 or 'off'"):
        notes.interval_from_env()
