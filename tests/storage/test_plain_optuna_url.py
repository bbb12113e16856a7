"""The storage URL the README teaches works in plain Optuna tools, not only in hpsearch.

SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; hpsearch opens its own storage through
psycopg2 (postgresql+psycopg2://), so both drivers are dependencies. These tests run plain Optuna
in a fresh process, as a user pasting the URL would.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import _create_db, _drop_db, cli_env, run_cli, tiny_spec, unique, write_spec


@pytest.fixture
def fresh_db(pg_server: str) -> Iterator[str]:
    """A new database, with the URL exactly as the README writes it (no driver in the scheme)."""
    name = _create_db("hpsearch_plain")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    _drop_db(name)


@pytest.mark.postgres
def test_a_study_hpsearch_created_opens_in_plain_optuna_with_the_same_url(fresh_db: str, tmp_path: Path) -> None:
    name = unique("plain")
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name))), "--storage", fresh_db, check=True)

    code = ("import sys, optuna\n"
            "study = optuna.load_study(study_name=sys.argv[1], storage=sys.argv[2])\n"
            "print(study.study_name, len(study.trials), study.direction.name)\n")
    proc = subprocess.run([sys.executable, "-c", code, name, fresh_db], capture_output=True, text=True,
                          timeout=120, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [name, "4", "MAXIMIZE"]  # the 4 grid points hpsearch enqueued


@pytest.mark.postgres
def test_the_optuna_command_lists_the_study_with_the_same_url(fresh_db: str, tmp_path: Path) -> None:
    name = unique("plain")
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name))), "--storage", fresh_db, check=True)
    optuna_cli = Path(sys.executable).parent / "optuna"
    proc = subprocess.run([str(optuna_cli), "studies", "--storage", fresh_db, "-f", "value"], capture_output=True,
                          text=True, timeout=120, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    assert name in proc.stdout
