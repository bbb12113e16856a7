"""Bad input: one clear line, a non-zero exit, never a traceback, and nothing stored changes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import optuna
import pytest

from conftest import cli_env, run_cli, tiny_spec, unique, write_spec
from hpsearch.queue import plan as plan_mod
from hpsearch.spec.loading import load_spec
from hpsearch.storage.backend import open_storage
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
    ("unknown-sampler", {}, ["--sampler", "bayes"], "sampler 'bayes' is not registered; known: cmaes, gp, grid, nsga2, nsga3, qmc, random, tpe"),
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
    plan_mod.create(load_spec(write_spec(tmp_path, tiny_spec(unique("keep")))), open_storage(url, create=True))
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
    _assert_one_line(bad, "HPSEARCH_DB_WAIT must be a number of seconds >= 0, but got 'ten minutes'")


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


# ---------------------------------------------------------------- hostile input (issue 11, items 10-12)


def _bomb(levels: int) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nname: *l{levels - 1}\n"


# (id, spec change or raw text, expected text in the one error line); each is refused before the
# storage is touched, so the storage must be byte-for-byte (journal) or study-for-study (PostgreSQL) as it was.
HOSTILE_SPECS: list[tuple[str, Any, str]] = [
    ("alias-bomb", _bomb(6), "must expand to at most 100,000 YAML nodes"),
    ("repeats-2e6", {"repeats": 2_000_000, "space": {"lr": {"choices": [0.1]}}},
     "repeats: must be at most 1,000,000 (planned trials), but got repeats=2000000"),
    ("grid-1e12", {"space": {"filters1": {"low": 1, "high": 10**12}}},
     "space: must plan at most 1,000,000 trials (grid points x repeats), but the grid has more than 1,000,000 points"),
    ("seed-2^64", {"seed": 2**64}, "seed: must be an integer in [0, 2**32-1], but got seed=18446744073709551616"),
    ("choices-1-true-1.0", {"space": {"kernel_size": {"choices": [1, True, 1.0]}}},
     "space.kernel_size.choices: must not repeat a value (1, 1.0 and true are equal)"),
    ("name-newline", {"name": "trailing\n"}, "name: must be a name of letters, digits, '_', '.', '-', but got name='trailing\\n'"),
    ("lr-negative", {"sampler": "random", "budget": 4, "space": {"lr": {"low": -0.5, "high": 0.1}}},
     "space.lr.low: must be a number > 0, but got low=-0.5"),
    ("plugin-missing", {"objective": "no_such_package.objectives:fn", "metric": "loss"},
     "objective 'no_such_package.objectives:fn': cannot import module 'no_such_package.objectives' here"),
    ("plugin-broken", {"objective": "broken_plugin:objective", "metric": "loss"},
     "objective 'broken_plugin:objective': cannot import module 'broken_plugin' here (searched: installed "
     "packages, PYTHONPATH, the current directory): RuntimeError: needs a GPU driver"),
]
HOSTILE_CASES = [(*c, "journal") for c in HOSTILE_SPECS] + [(*c, "postgres") for c in HOSTILE_SPECS if c[0] in (
    "repeats-2e6", "grid-1e12", "plugin-broken")]


@pytest.fixture(scope="module")
def kept(pg_session_db: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A journal and a PostgreSQL storage, each holding one study, and its name ("env" in commands)."""
    tmp = tmp_path_factory.mktemp("kept")
    name = unique("kept")
    urls = {"journal": f"journal:{tmp / 'j.log'}", "postgres": pg_session_db}
    for url in urls.values():
        plan_mod.create(load_spec(write_spec(tmp, tiny_spec(name))), open_storage(url, create=True))
    return {**urls, "name": name}


@pytest.mark.parametrize(("case", "change", "expected", "backend"), HOSTILE_CASES,
                         ids=[f"{c[0]}-{c[3]}" for c in HOSTILE_CASES])
def test_hostile_spec_is_one_line_and_changes_nothing(backend: str, case: str, change: Any, expected: str,
                                                      kept: dict[str, str], tmp_path: Path) -> None:
    url = kept[backend]
    before = _fingerprint(url)
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('needs a GPU driver')\n\ndef objective(trial, spec):\n"
                                               "    return 0.0\n")
    if isinstance(change, str):
        path = tmp_path / "bad.yaml"
        path.write_text(change)
    else:
        path = write_spec(tmp_path, _spec_with(change, unique("bad")), "bad.yaml")
    env = cli_env()
    env["PYTHONPATH"] += f":{tmp_path}"
    proc = run_cli("create-study", str(path), "--storage", url, env=env, timeout=60)
    _assert_one_line(proc, expected)
    assert _fingerprint(url) == before


WORKER_ARGS = [("--n-trials", "-1", "an integer >= 1"), ("--timeout", "-1", "a number > 0"),
               ("--max-failures", "-1", "an integer >= 1"), ("--heartbeat", "0", "an integer in [1, 86400]"),
               ("--heartbeat", "100000000000", "an integer in [1, 86400]"), ("--stop-timeout", "-1", "a number >= 0"),
               ("--checkpoint-every", "-1", "a number >= 0"), ("--seed", str(2**64), "an integer in [0, 4294967295]")]


@pytest.mark.parametrize(("option", "value", "accepted"), WORKER_ARGS, ids=[f"{o}={v}" for o, v, _ in WORKER_ARGS])
def test_nonsense_worker_options_are_one_line_exit_2(option: str, value: str, accepted: str,
                                                     kept: dict[str, str]) -> None:
    before = _fingerprint(kept["journal"])
    proc = run_cli("worker", "--study", kept["name"], "--storage", kept["journal"], option, value)
    _assert_one_line(proc, f"argument {option}: must be {accepted}, but got {value!r}")
    assert proc.returncode == 2
    assert _fingerprint(kept["journal"]) == before  # nothing claimed


@pytest.mark.parametrize(("variable", "value", "command"), [
    ("HPSEARCH_HEARTBEAT", "thirty", ["status", "env"]),  # a worker setting must not break other commands
    ("HPSEARCH_HEARTBEAT", "thirty", ["worker", "--study", "env"]),
    ("HPSEARCH_HEARTBEAT", "0", ["launch", "local", "--study", "env"]),
    ("HPSEARCH_CHECKPOINT_EVERY", "often", ["worker", "--study", "env"]),
    ("HPSEARCH_DB_WAIT", "nan", ["worker", "--study", "env"]),
    ("HPSEARCH_DB_WAIT", "inf", ["status", "env"]),
    ("HPSEARCH_CONNECT_WAIT", "-5", ["status", "env"]),
    ("HPSEARCH_ISSUE_CHUNK", "-5", ["worker", "--study", "env"]),
    ("HPSEARCH_ISSUE_CHUNK", "lots", ["create-study", "SPEC"]),
    ("HPSEARCH_MAX_RETRIES", "-1", ["worker", "--study", "env"]),
], ids=lambda v: v if isinstance(v, str) else "-".join(v[:1]))
def test_bad_environment_settings_are_one_line_and_change_nothing(variable: str, value: str, command: list[str],
                                                                  kept: dict[str, str], tmp_path: Path) -> None:
    url = kept["postgres"]
    before = _fingerprint(url)
    other = write_spec(tmp_path, tiny_spec(unique("env2")), "other.yaml")
    args = [str(other) if a == "SPEC" else kept["name"] if a == "env" else a for a in command]
    proc = run_cli(*args, "--storage", url, env=cli_env(**{variable: value}), cwd=tmp_path, timeout=60)
    if variable == "HPSEARCH_HEARTBEAT" and command[0] == "status":
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    else:
        _assert_one_line(proc, f"{variable} must be ")
        assert repr(value) in proc.stderr
    assert _fingerprint(url) == before


@pytest.mark.parametrize("where", ["argument", "environment"])
def test_raw_at_in_password_says_percent_encode_without_echoing_it(where: str) -> None:
    url = "postgresql://hp:pa@ss-w0rd-7781@127.0.0.1:5432/db"
    if where == "argument":
        proc = run_cli("status", "x", "--storage", url, timeout=60)
    else:
        proc = run_cli("status", "x", env=cli_env(HPSEARCH_STORAGE=url), timeout=60)
    _assert_one_line(proc, "the storage URL's password contains '@': percent-encode it as %40")
    assert "ss-w0rd" not in proc.stdout + proc.stderr and "w0rd" not in proc.stdout + proc.stderr


def test_argparse_errors_are_one_masked_line() -> None:
    proc = run_cli("status", "--storage", "postgresql://hp:s3cr3t-pw@h/db", "x", "--frobnicate")
    _assert_one_line(proc, "unrecognized arguments: --frobnicate")
    assert proc.returncode == 2 and "s3cr3t" not in proc.stderr


def test_dashboard_answers_a_missing_artifact_with_404_and_no_traceback(kept: dict[str, str]) -> None:
    import json
    import re
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    token = "artifact-test-token-0123456789"  # every dashboard wants hpsearch's token (issue 20)
    proc = subprocess.Popen([sys.executable, "-m", "hpsearch", "dashboard", "--storage", kept["journal"], "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=cli_env(HPSEARCH_TOKEN=token))
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        base = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert base, line
        # Unknown study, unknown trial, known trial but no such artifact, a study-level artifact.
        for path in ("/artifacts/99/1/0a1b-2c", "/artifacts/0/99/0a1b-2c", "/artifacts/0/0/0a1b-2c", "/artifacts/0/0a1b"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(urllib.request.Request(base[0] + path, headers={
                    "Authorization": f"Bearer {token}"}), timeout=30)
            assert info.value.code == 404, path
            assert json.loads(info.value.read()) == {"reason": f"no artifact at {path}"}
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "Traceback" not in out and "500" not in out, out


# ---------------------------------------------------------------- hostile input (issue 20)


@pytest.mark.parametrize("kind", ["directory", "fifo", "urandom"])
def test_a_spec_path_that_is_not_a_regular_file_says_what_it_is(kind: str, tmp_path: Path) -> None:
    import os

    path, expected = {"directory": (tmp_path, "but it is a directory"),
                      "fifo": (tmp_path / "spec.fifo", "but it is a FIFO (named pipe)"),
                      "urandom": (Path("/dev/urandom"), "but it is a character device")}[kind]
    if kind == "fifo":
        os.mkfifo(path)  # nobody writes to it: reading it would block forever
    proc = run_cli("create-study", str(path), "--storage", f"journal:{tmp_path / 'j.log'}", timeout=60)
    _assert_one_line(proc, f"{path}: must be a spec file (a regular file), {expected}")
    assert not (tmp_path / "j.log").exists()


@pytest.mark.parametrize(("backend", "length"), [("postgres", 600), ("journal", 100_000)])
def test_a_study_name_too_long_for_any_backend_is_one_line(backend: str, length: int, kept: dict[str, str],
                                                            tmp_path: Path) -> None:
    url = kept[backend]
    before = _fingerprint(url)
    path = write_spec(tmp_path, tiny_spec("n" * length), "long.yaml")
    proc = run_cli("create-study", str(path), "--storage", url, timeout=60)
    _assert_one_line(proc, f"long.yaml: name: must be at most 128 characters, but got a name of {length:,} characters")
    assert _fingerprint(url) == before


def test_a_database_lost_during_create_study_is_one_masked_line(throwaway_pg: Any, tmp_path: Path) -> None:
    """Not "OperationalError: (psycopg2.OperationalError) ...": which storage, what the driver said,
    and that create-study is to be run again (it finishes an interrupted creation)."""
    import subprocess
    import sys
    import time

    import sqlalchemy as sa

    from conftest import ROOT

    url = throwaway_pg.create_db("lost")
    open_storage(url, create=True)  # the schema exists: create-study's first write waits on the lock below
    spec = write_spec(tmp_path, tiny_spec(unique("lost")))
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    holder = engine.connect()
    holder.begin()
    holder.execute(sa.text("LOCK TABLE studies IN ACCESS EXCLUSIVE MODE"))
    proc = subprocess.Popen([sys.executable, "-m", "hpsearch", "create-study", str(spec), "--storage", url],
                            env=cli_env(HPSEARCH_DB_WAIT="0"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    stopped = False
    try:
        deadline = time.monotonic() + 60
        while True:  # polled from another session: pg_stat_activity is frozen inside a transaction
            with engine.connect() as conn:
                if conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hpsearch' "
                                        "AND wait_event_type = 'Lock'")).scalar():
                    break
            assert time.monotonic() < deadline and proc.poll() is None, "create-study never waited for the lock"
            time.sleep(0.05)
        throwaway_pg.stop("fast")  # the server goes away while create-study is inside its write
        stopped = True
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if stopped:
            throwaway_pg.start()
        try:
            holder.close()
        except Exception:  # noqa: BLE001 - its server was stopped under it
            pass
        engine.dispose()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    masked = url.replace(f":{url.split(':')[2].split('@')[0]}@", ":***@")
    _assert_one_line(done, f"hpsearch: error: storage {masked} became unreachable during create-study: ")
    assert "run it again once the database is back" in stderr and done.returncode == 4
    assert "OperationalError" not in stderr and url.split(":")[2].split("@")[0] not in stderr
    again = run_cli("create-study", str(spec), "--storage", url, timeout=120)  # and running it again finishes it
    assert again.returncode == 0, again.stderr
