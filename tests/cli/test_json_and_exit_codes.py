"""Every read command's --json parses and has the keys README's "Output for scripts" lists; the
exit codes of its table hold for the errors a script meets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ROOT, cli_env, run_cli, start_worker, tiny_spec, unique, write_spec


def documented_keys(command: str) -> tuple[bool, set[str]]:
    """(is a list of objects, the top-level keys) of `command --json`, read from README's bullet."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Output for scripts"):]
    bullet = re.search(rf"^- `{command} --json`: (.*?)(?=^- |^\n)", section, re.S | re.M)
    assert bullet, f"README documents no `{command} --json`"
    body = " ".join(bullet[1].split())
    is_list = body.startswith("a list of {")
    target = 1 if is_list else 0  # a list's keys are those inside its first {...}
    keys, depth, i = set(), 0, 0
    while i < len(body):
        c = body[i]
        if c in "{[(":
            depth += 1
        elif c in "}])":
            depth -= 1
        elif c == "`":
            end = body.index("`", i + 1)
            if depth == target:
                keys.add(body[i + 1:end])
            i = end
        i += 1
    assert keys, body
    return is_list, keys


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A small study on a journal, run to the end by a real worker."""
    tmp = tmp_path_factory.mktemp("json")
    name, url = unique("json"), f"journal:{tmp / 'journal.log'}"
    run_cli("create-study", str(write_spec(tmp, tiny_spec(name, repeats=2))), "--storage", url, check=True)
    worker = start_worker(name, url, "--device", "cpu", "--quiet")
    out, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0, out
    return name, url


@pytest.mark.parametrize("command", ["status", "best", "list", "report"])
def test_json_of_every_read_command_has_the_documented_keys(command: str, finished: tuple[str, str],
                                                            tmp_path: Path) -> None:
    name, url = finished
    args = {"status": [name], "best": [name], "list": [], "report": [name, "--out", str(tmp_path / "r")]}[command]
    proc = run_cli(command, *args, "--storage", url, "--json", check=True)
    data = json.loads(proc.stdout)  # stdout is the JSON and nothing else
    is_list, keys = documented_keys(command)
    rows = data if is_list else [data]
    assert isinstance(data, list if is_list else dict) and rows
    for row in rows:
        assert keys <= set(row), f"{command} --json lacks {sorted(keys - set(row))}"


def test_export_json_is_one_object_per_trial(finished: tuple[str, str]) -> None:
    name, url = finished
    rows = json.loads(run_cli("export", name, "--storage", url, "--format", "json", check=True).stdout)
    assert len(rows) == 8 and all(isinstance(r, dict) and "state" in r for r in rows)


@pytest.mark.parametrize("command", ["status", "best", "report", "export", "stop", "resume", "delete"])
def test_an_unknown_study_exits_3_with_one_line(command: str, finished: tuple[str, str], tmp_path: Path) -> None:
    name, url = finished
    extra = {"report": ["--out", str(tmp_path)], "export": ["--format", "csv"], "delete": ["--yes"]}.get(command, [])
    proc = run_cli(command, name + "x", "--storage", url, *extra)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"did you mean {name!r}" in proc.stderr, proc.stderr


@pytest.mark.parametrize("args", [["best", "s", "--top", "0"], ["status", "s", "--watch", "--json"],
                                  ["create-study", "no-such-spec.yaml"], ["launch", "moon", "--study", "s"]])
def test_bad_input_exits_2_with_one_line(args: list[str], finished: tuple[str, str]) -> None:
    proc = run_cli(*args, "--storage", finished[1])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("storage", ["journal:/nonexistent/journal.log", "postgresql://postgres@127.0.0.1:1/none"])
def test_an_unreachable_storage_exits_4_with_one_line(storage: str) -> None:
    env = cli_env(HPSEARCH_CONNECT_WAIT="0", HPSEARCH_DB_WAIT="0")
    for command in ("status", "list"):
        proc = run_cli(*([command, "s"] if command == "status" else [command]), "--storage", storage, env=env,
                       timeout=120)
        assert proc.returncode == 4, (command, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
