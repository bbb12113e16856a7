"""`hpsearch repeat --set-aside` and `--config`: more seeds for the configurations the set-aside
table points at, or for named ones (issue 21); what to repeat must be said, once."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from conftest import run_cli, tiny_spec, unique
from hpsearch import schema
from hpsearch import space as space_mod
from hpsearch.queue import claim as claim_mod
from hpsearch.queue import plan as plan_mod
from hpsearch.queue import study as study_mod
from hpsearch.spec.parse import parse_spec
from hpsearch.storage.backend import open_storage


def _run(study: optuna.Study, outcome: float | None) -> str:
    """Claim the next trial as a worker does; complete it with `outcome` or prune it (None)."""
    trial = claim_mod.claim(study)
    assert trial is not None
    space_mod.suggest(trial, study_mod.stored_spec(study).space)
    cid = str(trial.user_attrs[schema.CONFIG_ID])
    if outcome is None:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, outcome)
    return cid


@pytest.fixture
def flagged(journal_url: str) -> tuple[str, str, list[str]]:
    """4 configurations x 2 seeds: a clean best (0.90, 0.88), a lucky one with a pruned seed (0.97,
    pruned: set aside in the top 1), and two clean weak ones."""
    name = unique("aside")
    study, _ = plan_mod.create(parse_spec(tiny_spec(name, repeats=2), "test"), open_storage(journal_url, create=True))
    outcomes = [0.90, 0.88, 0.97, None, 0.50, 0.52, 0.60, 0.62]
    cids = [_run(study, v) for v in outcomes]
    return name, journal_url, cids[::2]


def _repeats(name: str, url: str) -> dict[str, list[int]]:
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    out: dict[str, list[int]] = {}
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get(schema.IS_REPEAT):
            out.setdefault(str(t.user_attrs[schema.CONFIG_ID]), []).append(int(t.user_attrs[schema.SEED]))
    return out


def test_set_aside_repeats_exactly_the_configurations_the_set_aside_table_lists(
        flagged: tuple[str, str, list[str]]) -> None:
    name, url, cids = flagged
    best = json.loads(run_cli("best", name, "--storage", url, "--top", "1", "--json", check=True).stdout)
    assert [c["config_id"] for c in best["set_aside"]] == [cids[1]]
    text = run_cli("best", name, "--storage", url, "--top", "1", check=True).stdout
    assert f"hpsearch repeat {name} --set-aside --top 1" in text

    out = run_cli("repeat", name, "--storage", url, "--set-aside", "--top", "1", "--seeds", "2", check=True).stdout
    assert "queued 2 repeat trial(s) for 1 configuration(s)" in out and "2 seeds, 1 pruned" in out
    assert _repeats(name, url) == {cids[1]: [2, 3]}  # above the seeds it used (0 and 1)


def test_config_repeats_configurations_by_id_prefix_name_or_printed_parameters(flagged: tuple[str, str, list[str]]) -> None:
    name, url, cids = flagged
    best = json.loads(run_cli("best", name, "--storage", url, "--top", "4", "--json", check=True).stdout)
    by_id = {c["config_id"]: c["name"] for c in best["configurations"]}
    params = {c["config_id"]: c["params"] for c in best["configurations"]}
    printed = ", ".join(f"{k}={v}" for k, v in reversed(params[cids[0]].items()))  # in any order
    run_cli("repeat", name, "--storage", url, "--config", cids[2][:8], "--config", by_id[cids[3]],
            "--config", printed, "--seeds", "1", check=True)
    assert _repeats(name, url) == {cids[2]: [2], cids[3]: [2], cids[0]: [2]}
    text = run_cli("best", name, "--storage", url, "--top", "4", check=True).stdout
    assert f"optimizer={params[cids[0]]['optimizer']}" in text


@pytest.mark.parametrize("args, message", [
    ([], "must be told what to repeat (--top K, --set-aside or --config ID), but got none"),
    (["--config", "nosuch"], "is not a configuration of"),
    (["--config", "x", "--top", "2"], "--config must name the configurations alone"),
    (["--set-aside", "--top", "0"], "--top must be >= 1, but got top=0"),
])
def test_bad_selections_are_one_line(flagged: tuple[str, str, list[str]], args: list[str], message: str) -> None:
    name, url, _ = flagged
    proc = run_cli("repeat", name, "--storage", url, "--seeds", "1", *args)
    assert proc.returncode != 0 and message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert _repeats(name, url) == {}


def test_set_aside_with_nothing_set_aside_says_so(journal_url: str) -> None:
    name = unique("clean")
    study, _ = plan_mod.create(parse_spec(tiny_spec(name), "test"), open_storage(journal_url, create=True))
    for v in (0.9, 0.8, 0.7, 0.6):
        _run(study, v)
    proc = run_cli("repeat", name, "--storage", journal_url, "--set-aside", "--seeds", "1")
    assert proc.returncode != 0 and "must find a configuration set aside in the top 5, but got none" in proc.stderr


@pytest.mark.parametrize("repeat_values, rank", [((0.95, 0.93), 1), ((0.30, 0.32), 4)])
def test_completed_repeats_settle_a_set_aside_configuration_on_their_own_mean(
        flagged: tuple[str, str, list[str]], repeat_values: tuple[float, float], rank: int) -> None:
    name, url, cids = flagged
    run_cli("repeat", name, "--storage", url, "--set-aside", "--top", "1", "--seeds", "2", check=True)
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    for v in repeat_values:
        assert _run(study, v) == cids[1]
    data = json.loads(run_cli("best", name, "--storage", url, "--top", "4", "--json", check=True).stdout)
    (lucky,) = [c for c in data["configurations"] if c["config_id"] == cids[1]]
    # Ranked with the clean ones on the two unpruned repeat seeds alone, not on the seed that survived
    # the pruner (0.97): (0.95 + 0.93) / 2 tops the clean 0.89; (0.30 + 0.32) / 2 is last.
    assert lucky["clean"] and lucky["settled_by_repeats"] == 2 and lucky["rank"] == rank
    assert lucky["value"]["mean"] == pytest.approx(sum(repeat_values) / 2) and lucky["value"]["n"] == 2
    assert lucky["seeds"] == {"seeds": 4, "complete": 3, "pruned": 1, "failed": 0, "pending": 0}
    assert data["set_aside"] == [] and data["n_flagged"] == 0
    assert "4 seeds, 1 pruned; ranked on its 2 repeat seeds" in run_cli("best", name, "--storage", url, "--top", "4",
                                                                        check=True).stdout


def test_a_failed_repeat_leaves_the_configuration_set_aside(flagged: tuple[str, str, list[str]]) -> None:
    name, url, cids = flagged
    run_cli("repeat", name, "--storage", url, "--set-aside", "--top", "1", "--seeds", "2", check=True)
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    _run(study, 0.95)
    trial = claim_mod.claim(study)
    assert trial is not None
    study.tell(trial, state=TrialState.FAIL)
    data = json.loads(run_cli("best", name, "--storage", url, "--top", "1", "--json", check=True).stdout)
    assert [c["config_id"] for c in data["set_aside"]] == [cids[1]] and not data["set_aside"][0]["clean"]


def _run_with(study: optuna.Study, values: float | list[float], n_params: int) -> str:
    """Claim the next trial as a worker does; record its parameter count and complete it."""
    trial = claim_mod.claim(study)
    assert trial is not None
    space_mod.suggest(trial, study_mod.stored_spec(study).space)
    trial.set_user_attr(schema.N_PARAMETERS, n_params)
    study.tell(trial, values)
    return str(trial.user_attrs[schema.CONFIG_ID])


@pytest.mark.parametrize("goals", ["constrained", "two objectives"])
def test_top_repeats_what_best_ranks_first(journal_url: str, goals: str) -> None:
    # Constrained: the best validation accuracy belongs to a configuration that breaks the bound.
    # Two objectives: best's top 3 is the front (0.97/5000, 0.90/800, 0.50/700), while accuracy
    # alone ranks 0.60/900 (dominated by 0.90/800) third. repeat --top ranked by the first objective
    # alone: it queued seeds of the infeasible one, and of the dominated one.
    name = unique("top-goals")
    extra: dict = ({"constraints": {"n_params": {"max": 1000}}} if goals == "constrained"
                   else {"metrics": {"val_acc": "maximize", "n_params": "minimize"}, "pruner": "none"})
    study, _ = plan_mod.create(parse_spec(tiny_spec(name, repeats=1, **extra), "test"),
                               open_storage(journal_url, create=True))
    accs, sizes = [0.97, 0.90, 0.60, 0.50], [5000, 800, 900, 700]
    cids = [_run_with(study, a if goals == "constrained" else [a, s], s) for a, s in zip(accs, sizes, strict=True)]
    top = 1 if goals == "constrained" else 3
    best = json.loads(run_cli("best", name, "--storage", journal_url, "--json", check=True).stdout)
    ranked = [c["config_id"] for c in best["configurations"]][:top]
    assert ranked == ([cids[1]] if goals == "constrained" else [cids[0], cids[1], cids[3]])
    (listed,) = [r for r in json.loads(run_cli("list", "--storage", journal_url, "--json", check=True).stdout)
                 if r["study"] == name]  # `list` ranks as best does too
    if goals == "constrained":
        assert listed["best_configuration"]["config_id"] == cids[1] and listed["best_value"] == 0.90
        # ... and a warm start from it takes best's first, not the infeasible 0.97.
        from hpsearch.ops import warm

        new = parse_spec(tiny_spec(unique("warm"), sampler="random", budget=4, warm_start={"from": name, "top": 1}),
                         "test")
        resolved, _ = warm.resolve(new, open_storage(journal_url))
        (chosen,) = resolved.warm_start["configs"]
        assert space_mod.config_id(chosen["params"]) == cids[1]
    else:
        assert listed["pareto_front"] == 3 and listed["best_configuration"] is None
        assert "a Pareto front of 3 configurations" in run_cli("list", "--storage", journal_url, check=True).stdout
    run_cli("repeat", name, "--storage", journal_url, "--top", str(top), "--seeds", "1", check=True)
    assert sorted(_repeats(name, journal_url)) == sorted(ranked)
