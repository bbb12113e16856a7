"""README's getting started: two set-up commands, and what a new user needs right after them."""

from __future__ import annotations

import re

from conftest import ROOT


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.index("\n## ", start + 1)
    return " ".join(text[start:end].split())


def test_set_up_is_exactly_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Set up")
    block = text[text.index("```sh", start) + 5:text.index("```", text.index("```sh", start) + 5)]
    commands = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]


def test_getting_started_says_what_a_new_user_trips_on() -> None:
    setup = _section("Set up")
    assert "source .venv/bin/activate" in setup and ".venv/bin/hpsearch" in setup  # the venv
    assert "createdb" in setup or "CREATE DATABASE" in setup  # the PostgreSQL database
    assert "HPSEARCH_DATA" in setup and "~/.cache/hpsearch/data" in setup  # where data goes
    assert "worker.py" in setup and "repository's root" in setup and "hpsearch worker --study" in setup
    assert "well under a minute" not in setup
    minutes = re.search(r"first run takes about (\d+) to (\d+) minutes", setup)
    assert minutes and int(minutes[1]) >= 2  # the install comes first: ~90 s before the study starts
    assert "optuna.load_study" in setup and "psycopg" in setup  # the URL works in plain Optuna, and why
