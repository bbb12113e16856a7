"""Bad input: one clear line, a non-zero exit, never a traceback, and nothing stored changes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import optuna
import pytest

from conftest import cli_env, run_cli, tiny_spec, unique, write_spec
from hpsearch import study as study_mod
from hpsearch.spec import load_spec
from hpsearch.storage import open_storage
from pgcluster import free_port


def _spec_with(change: dict[str, Any], name: str) -> dict[str, Any]:
    spec = tiny_spec(name)
    for key, value in change.items():
        if key in ("space", "train"):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


# (id, spec change or raw text, extra CLI args, expected text in the one error line)
BAD_SPECS: list[tuple[str, Any, list[str], str]] = [
    ("malformed-yaml", "name: x\nspace: {lr: [0.1,\n", [], "malformed YAML"),
    ("unknown-key", {"samplr": "grid"}, [], "samplr: unknown field (did you mean 'sampler'?)"),
    ("unknown-model", {"train": {"model": "resnt"}}, [], "model 'resnt' is not registered; known:"),
    ("unknown-dataset", {"dataset": {"name": "cifar1000"}}, [], "dataset 'cifar1000' is not registered; known:"),
    ("unknown-optimizer", {"space": {"optimizer": {"choices": ["sgd", "adamm"]}}}, [],
     "optimizer 'adamm' is not registered; known:"),
    ("unknown-sampler", {}, ["--sampler", "bayes"], "sampler 'bayes' is not registered; known: grid, qmc, random, tpe"),
    ("unknown-pruner", {}, ["--pruner", "hyperbnd"], "pruner 'hyperbnd' is not registered; known:"),
    ("empty-choices", {"space": {"lr": {"choices": []}}}, [], "space.lr.choices: must be a non-empty list"),
    ("inverted-range", {"space": {"dropout": {"low": 0.5, "high": 0.1, "step": 0.1}}}, [],
     "space.dropout: must have low <= high, but got low=0.5, high=0.1"),
    ("log-through-zero", {"sampler": "random", "budget": 4, "space": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, [],
     "space.lr.low: must be > 0 for a log range, but got low=0.0"),
    ("grid-continuous", {"space": {"lr": {"low": 0.001, "high": 0.1}}}, [],
     "space.lr: grid search needs a finite set: give `step` or `choices`"),
    ("undefined-condition", {"space": {"momentum": {"choices": [0.9], "when": {"solver": "sgd"}}}}, [],
     "space.momentum.when.solver: conditions must name a parameter of space:"),
]


def _fingerprint(url: str) -> Any:
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    storage = open_storage(url)
    return sorted((s.study_name, s.n_trials) for s in optuna.get_all_study_summaries(storage))


def _assert_one_line(proc: Any, expected: str) -> None:
    assert proc.returncode != 0, proc.stdout
    err = proc.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert expected in err, err
    assert err.startswith("hpsearch: error: ")


CASES = [(*c, "journal") for c in BAD_SPECS] + [(*c, "postgres") for c in BAD_SPECS if c[0] in (
    "malformed-yaml", "unknown-model", "unknown-sampler", "log-through-zero", "grid-continuous")]


@pytest.mark.parametrize(("case", "change", "args", "expected", "backend"), CASES,
                         ids=[f"{c[0]}-{c[4]}" for c in CASES])
def test_bad_spec_is_one_line_and_changes_nothing(backend: str, case: str, change: Any, args: list[str], expected: str,
                                                  request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue("pg_session_db") if backend == "postgres" else f"journal:{tmp_path / 'j.log'}"
    # A study already in the storage, which a bad create-study must leave exactly as it is.
    study_mod.create(load_spec(write_spec(tmp_path, tiny_spec(unique("keep")))), open_storage(url, create=True))
    before = _fingerprint(url)
    if isinstance(change, str):
        path = tmp_path / "bad.yaml"
        path.write_text(change)
    else:
        path = write_spec(tmp_path, _spec_with(change, unique("bad")), "bad.yaml")
    proc = run_cli("create-study", str(path), "--storage", url, *args)
    _assert_one_line(proc, expected)
    assert str(path) in proc.stderr or case in ("unknown-sampler", "unknown-pruner")
    assert _fingerprint(url) == before


def test_every_error_of_a_spec_is_listed_with_its_field(tmp_path: Path) -> None:
    spec = tiny_spec("many", repeats=0, direction="up")
    spec["space"]["dropout"] = {"low": 1, "high": 0, "step": 0.1}
    proc = run_cli("create-study", str(write_spec(tmp_path, spec, "many.yaml")), "--storage",
                   f"journal:{tmp_path / 'j.log'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3
    assert all("many.yaml: " in line for line in lines)
    assert not (tmp_path / "j.log").exists()  # nothing created for an invalid spec


@pytest.mark.parametrize("command", [["status", "nope"], ["best", "nope"], ["worker", "--study", "nope"]])
def test_unknown_study_is_one_line(command: list[str], journal_url: str, tmp_path: Path) -> None:
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec("exists"))), "--storage", journal_url, check=True)
    before = _fingerprint(journal_url)
    proc = run_cli(*command, "--storage", journal_url)
    _assert_one_line(proc, "study 'nope' does not exist; known: exists")
    assert _fingerprint(journal_url) == before


def test_unreachable_database_is_one_masked_line(tmp_path: Path) -> None:
    url = f"postgresql://hp:topsecret@127.0.0.1:{free_port()}/db"
    for args in (["create-study", str(write_spec(tmp_path, tiny_spec("x")))], ["status", "x"], ["worker", "--study", "x"]):
        proc = run_cli(*args, "--storage", url, timeout=60)
        _assert_one_line(proc, "cannot open storage postgresql://hp:***@127.0.0.1")
        assert "topsecret" not in proc.stdout + proc.stderr


def test_a_bad_wait_setting_is_one_line_and_a_good_one_works(pg_session_db: str, tmp_path: Path) -> None:
    name = unique("wait")
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name))), "--storage", pg_session_db, check=True)
    good = run_cli("status", name, "--storage", pg_session_db, env=cli_env(HPSEARCH_DB_WAIT="30"))
    assert good.returncode == 0, good.stderr
    bad = run_cli("status", name, "--storage", pg_session_db, env=cli_env(HPSEARCH_DB_WAIT="ten minutes"))
    _assert_one_line(bad, "HPSEARCH_DB_WAIT must be a number of seconds, but got 'ten minutes'")


def test_missing_storage_file_and_bad_url(tmp_path: Path) -> None:
    _assert_one_line(run_cli("status", "x", "--storage", str(tmp_path / "none.log")), "does not exist")
    _assert_one_line(run_cli("list", "--storage", "redis://u:pw@host/0"), "storage 'redis://u:***@host/0' must be")


def test_missing_dataset_files_stop_the_worker_before_claiming(tmp_path: Path, journal_url: str) -> None:
    spec = tiny_spec(unique("mnist"), dataset={"name": "mnist", "root": str(tmp_path / "empty"),
                                                       "download": False})
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", journal_url, check=True)
    before = _fingerprint(journal_url)
    proc = run_cli("worker", "--study", spec["name"], "--storage", journal_url)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "empty" in proc.stderr and "mnist" in proc.stderr.lower()
    assert _fingerprint(journal_url) == before  # no trial was claimed or failed


def test_spec_file_missing(tmp_path: Path) -> None:
    _assert_one_line(run_cli("create-study", str(tmp_path / "nope.yaml")), "nope.yaml: spec file not found")
