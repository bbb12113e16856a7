"""A trial's result is a finite number, or the trial fails saying what it got: the worker's line, the
trial's fail_reason, `status` and `best` all show it, and nothing non-finite is ever ranked."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import run_cli, unique, write_spec
from faultkit import assert_exactly_once
from hpsearch.objective import BadResult, checked
from hpsearch.storage.backend import open_storage

# hps_objectives.returns gives back what its `result` parameter names (its RESULTS), or prunes.
RESULTS = ["ok", "nan", "inf", "-inf", "abc", "none", "tuple"]
# The trial's fail_reason and the worker's line for each result that is not a finite number.
EXPECTED = {
    "nan": "the objective's result must be a finite number, but got loss=nan (diverged?)",
    "inf": "the objective's result must be a finite number, but got loss=inf (diverged?)",
    "-inf": "the objective's result must be a finite number, but got loss=-inf (diverged?)",
    "abc": "the objective's result must be a finite number, but got loss='abc' (str)",
    "none": "the objective's result must be a finite number, but got loss=None (NoneType)",
    "tuple": "the objective's result must be a finite number, but got loss=(0.1, 0.2) (tuple: one value is expected)",
}


def test_results_that_are_not_finite_numbers_fail_with_their_reason_everywhere(pg_session_db: str,
                                                                                tmp_path: Path) -> None:
    url, name = pg_session_db, unique("results")
    spec = {"name": name, "objective": "hps_objectives:returns", "metric": "loss", "direction": "minimize",
            "sampler": "grid", "pruner": "none", "space": {"result": {"choices": [*RESULTS, "pruned"]}}}
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", url, check=True)

    worker = run_cli("worker", "--study", name, "--storage", url, timeout=180)

    out = worker.stdout + worker.stderr
    assert worker.returncode == 0 and "Traceback" not in out, out
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    by_result = {t.params["result"]: t for t in study.get_trials(deepcopy=False)}
    assert len(by_result) == len(RESULTS) + 1  # nothing retried: a bad result is the objective's, not the worker's
    for result, reason in EXPECTED.items():
        t = by_result[result]
        assert t.state == TrialState.FAIL and t.value is None, result
        assert t.user_attrs["fail_reason"] == reason
        # A non-finite number is what a diverged loss gives: marked as the built-in trainer marks its own.
        assert t.user_attrs["divergent"] is (result in ("nan", "inf", "-inf"))
        assert f"[trial {t.number}] failed: {reason}" in out
    ok, pruned = by_result["ok"], by_result["pruned"]
    assert ok.state == TrialState.COMPLETE and ok.value == 0.25
    assert pruned.state == TrialState.PRUNED
    assert f"[trial {pruned.number}] pruned at step 2 (reported 0.5)\n" in out  # was "[trial 7] " and nothing
    assert "complete: loss=nan" not in out
    assert "(1 complete, 3 divergent, 3 failed, 1 pruned)" in out  # the worker's summary line
    assert_exactly_once(study, planned=2)

    # `best` ranks the one finite result (-inf is not the best of a minimised loss) and says why the others failed.
    best = json.loads(run_cli("best", name, "--storage", url, "--json", check=True).stdout)
    assert [c["value"]["mean"] for c in best["configurations"]] == [0.25]
    assert {f["reason"]: f["trials"] for f in best["failures"]} == {
        reason: [by_result[r].number] for r, reason in EXPECTED.items()}
    text = run_cli("best", name, "--storage", url, check=True).stdout
    assert "6 trials failed" in text and "loss=-inf" in text
    # `status` says why they failed, and its best trial is the finite one.
    status = json.loads(run_cli("status", name, "--storage", url, "--json", check=True).stdout)
    assert status["best_trial"]["number"] == ok.number
    assert {f["reason"]: f["trials"] for f in status["failures"]} == {reason: 1 for reason in EXPECTED.values()}
    text = run_cli("status", name, "--storage", url, check=True).stdout
    assert "loss='abc'" in " ".join(text.split())


@pytest.mark.parametrize("value", [1, 0.5, -3.0, 10**30])
def test_a_finite_number_is_a_result(value: float) -> None:
    assert checked(value, "loss") == float(value)


def test_numpy_and_torch_scalars_are_results_and_arrays_are_not() -> None:
    import numpy as np
    import torch

    assert checked(np.float32(0.5), "loss") == 0.5 and checked(torch.tensor(0.25), "loss") == 0.25
    with pytest.raises(BadResult, match=r"but got loss=array\(\[1., 2.\]\) \(ndarray\)"):
        checked(np.array([1.0, 2.0]), "loss")
    with pytest.raises(BadResult, match="diverged"):
        checked(torch.tensor(math.nan), "loss")


@pytest.mark.parametrize("value", [True, [0.1], {"loss": 0.1}, b"1", "1.5", object()])
def test_anything_else_is_not(value: object) -> None:
    with pytest.raises(BadResult) as info:
        checked(value, "loss")
    assert not info.value.divergent
