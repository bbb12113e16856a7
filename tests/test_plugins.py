"""Extending from outside the package: a spec's `plugins:` modules register models, optimizers and
datasets by plain name, at create-study and in every worker (real CLI, real worker processes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, cli_env, run_cli, start_worker, tiny_spec, unique, write_spec
from hpsearch.storage.backend import open_storage


def _plugin_spec(name: str, plugins: object = ("hps_registered",)) -> dict:
    """Every name the trainer looks up comes from the plugin: model, one optimizer, the dataset."""
    return tiny_spec(name, plugins=list(plugins) if isinstance(plugins, tuple) else plugins,
                     dataset={"name": "plugin_blobs", "n": 120, "val_fraction": 0.25},
                     train={"epochs": 1, "batch_size": 32, "model": "plugin_mlp", "hidden_size": 8},
                     space={"lr": {"choices": [0.05, 0.1]}, "optimizer": {"choices": ["plugin_sgd", "sgd"]}})


def _trials(name: str, url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)


def test_plugin_names_run_in_every_worker(pg_session_db: str, tmp_path: Path) -> None:
    name = unique("plugins")
    run_cli("create-study", str(write_spec(tmp_path, _plugin_spec(name))), "--storage", pg_session_db, check=True)
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [start_worker(name, pg_session_db, "--device", "cpu", "--heartbeat", "5", log=log) for log in logs]
    for worker, log in zip(workers, logs, strict=True):
        assert worker.wait(timeout=300) == 0, log.read_text()
    trials = _trials(name, pg_session_db)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, [log.read_text() for log in logs]
    assert {t.user_attrs["config"]["model"] for t in trials} == {"plugin_mlp"}
    assert {t.params["optimizer"] for t in trials} == {"plugin_sgd", "sgd"}
    assert {t.user_attrs["config"]["dataset"]["name"] for t in trials} == {"plugin_blobs"}


def test_without_the_plugin_the_same_spec_is_refused(tmp_path: Path) -> None:
    spec = _plugin_spec(unique("noplug"))
    del spec["plugins"]
    proc = run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", f"journal:{tmp_path / 'j.log'}")
    assert proc.returncode == 2 and "model 'plugin_mlp' is not registered" in proc.stderr, proc.stderr


@pytest.mark.parametrize(("module", "why"), [
    ("hps_no_such_plugin", "ModuleNotFoundError: No module named 'hps_no_such_plugin'"),
    ("hps_broken_plugin", "RuntimeError: this plugin is broken"),
])
def test_a_plugin_that_does_not_import_is_one_line_and_nothing_is_stored(tmp_path: Path, module: str,
                                                                         why: str) -> None:
    (tmp_path / "hps_broken_plugin.py").write_text('raise RuntimeError("this plugin is broken")\n')
    env = cli_env(PYTHONPATH=os.pathsep.join([cli_env()["PYTHONPATH"], str(tmp_path)]))
    url = f"journal:{tmp_path / 'j.log'}"
    spec = write_spec(tmp_path, _plugin_spec(unique("broken"), plugins=["hps_registered", module]))
    proc = run_cli("create-study", str(spec), "--storage", url, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"plugins[1]: cannot import plugin module {module!r}" in lines[0], proc.stderr
    assert why in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "j.log").exists()  # refused before the storage was opened: nothing stored


@pytest.mark.parametrize("bad", ["mypkg models", ["ok.mod", 3], {"a": 1}, "-bad"])
def test_plugins_must_be_module_names(tmp_path: Path, bad: object) -> None:
    proc = run_cli("create-study", str(write_spec(tmp_path, _plugin_spec(unique("bad"), plugins=bad))),
                   "--storage", f"journal:{tmp_path / 'j.log'}")
    assert proc.returncode == 2 and "plugins: must be a list of module names" in proc.stderr, proc.stderr


def test_a_worker_without_the_plugin_stops_before_claiming(tmp_path: Path) -> None:
    """The stored spec is read without the plugins; the worker's registry check imports them."""
    name, url = unique("lost"), f"journal:{tmp_path / 'j.log'}"
    run_cli("create-study", str(write_spec(tmp_path, _plugin_spec(name))), "--storage", url, check=True)
    log = tmp_path / "worker.log"
    worker = start_worker(name, url, "--device", "cpu", env=cli_env(PYTHONPATH=str(ROOT)), log=log)
    assert worker.wait(timeout=120) == 2, log.read_text()
    text = log.read_text()
    assert "plugins[0]: cannot import plugin module 'hps_registered'" in text and "Traceback" not in text, text
    assert {t.state for t in _trials(name, url)} == {TrialState.WAITING}  # nothing claimed, nothing failed


def test_catalog_lists_every_kind_and_what_plugins_register() -> None:
    plain = json.loads(run_cli("catalog", "--json", check=True).stdout)
    assert set(plain) >= {"models", "optimizers", "datasets", "samplers", "pruners"}
    assert {"dense", "cnn"} <= set(plain["models"]) and "plugin_mlp" not in plain["models"]
    assert "grid" in plain["samplers"] and "median" in plain["pruners"] and "digits" in plain["datasets"]
    extended = json.loads(run_cli("catalog", "--plugin", "hps_registered", "--json", check=True).stdout)
    assert "plugin_mlp" in extended["models"] and "plugin_sgd" in extended["optimizers"]
    assert "plugin_blobs" in extended["datasets"]
    text = run_cli("catalog", check=True).stdout
    assert text.startswith("models:") and "package.module:function" in text
    missing = run_cli("catalog", "--plugin", "hps_no_such_plugin")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr


def test_a_module_in_the_current_directory_is_found_by_the_hpsearch_script_and_worker_py(tmp_path: Path) -> None:
    """`hpsearch` (a console script) and `python worker.py` do not put the current directory on
    sys.path as `python -m` does; a user's module beside their spec must be found all the same."""
    import subprocess
    import sys

    (tmp_path / "hps_here.py").write_text("def objective(trial, spec):\n    return trial.params['x'] ** 2\n")
    name, url = unique("here"), f"journal:{tmp_path / 'j.log'}"
    spec = {"name": name, "objective": "hps_here:objective", "metric": "loss", "direction": "minimize",
            "sampler": "grid", "space": {"x": {"choices": [1.0, 2.0]}}, "tracking": "none"}
    env = cli_env(PYTHONPATH=str(ROOT))  # not the test's plugin folder, not tmp_path
    script = Path(sys.executable).parent / "hpsearch"
    created = subprocess.run([str(script), "create-study", str(write_spec(tmp_path, spec)), "--storage", url],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert created.returncode == 0, created.stderr
    worker = subprocess.run([sys.executable, str(ROOT / "worker.py"), "--study", name, "--storage", url],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert sorted(t.value for t in _trials(name, url)) == [1.0, 4.0]
