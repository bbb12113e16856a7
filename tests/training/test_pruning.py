"""Pruning stops a bad trial between epochs, never after its last one (a finished result is kept)."""

from __future__ import annotations

from pathlib import Path

import optuna

from conftest import run_cli, start_worker, tiny_spec, unique, write_spec
from hpsearch import schema
from hpsearch.storage.backend import open_storage


def test_a_trial_is_never_pruned_after_its_last_epoch(tmp_path: Path, journal_url: str) -> None:
    # One epoch: the pruner's only chance is after the last epoch. A hopeless learning rate run
    # after a good one is below the median there, and used to be recorded "pruned at epoch 1",
    # losing its result and its test. A second study with 2 epochs shows the same pruner does
    # prune it between epochs.
    for epochs, expect in ((1, "COMPLETE"), (2, "PRUNED")):
        name = unique("prune")
        spec = tiny_spec(name, pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
                         train={"epochs": epochs, "batch_size": 128, "model": "dense", "hidden_size": 16,
                                "hidden_layers": 1, "optimizer": "adam"},
                         space={"lr": {"choices": [0.01, 1.0e-7]}}, fuse=1)
        run_cli("create-study", str(write_spec(tmp_path, spec, f"{name}.yaml")), "--storage", journal_url,
                check=True)
        # One at a time: fused, the two would be judged at the same moment, before either completed.
        proc = start_worker(name, journal_url, "--fuse", "1")
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        trials = sorted(optuna.load_study(study_name=name, storage=open_storage(journal_url)).trials,
                        key=lambda t: t.number)
        assert trials[0].state.name == "COMPLETE"
        hopeless = trials[1]
        assert hopeless.state.name == expect, out
        if expect == "COMPLETE":
            assert schema.PRUNED_AT_EPOCH not in hopeless.user_attrs
            assert hopeless.user_attrs[schema.TEST_ACC] is not None and hopeless.value is not None
        else:
            assert hopeless.user_attrs[schema.PRUNED_AT_EPOCH] == 1
