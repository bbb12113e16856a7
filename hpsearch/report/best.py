"""Best configurations: the report's section and `hpsearch best` (table or --json), one ranking.

Both read report_stats.summarize: clean configurations (no pruned or failed seed) first, each
shown with its seed runs ("2 seeds, 1 pruned"); configurations that their surviving seeds alone
would have put in the top are listed apart, so a pruned seed can never make a clean-looking winner.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from hpsearch import schema
from hpsearch.report.render import Para, Section, Table
from hpsearch.report.stats import (
    NO_GROUP,
    ConfigSummary,
    Interval,
    baselines,
    best_per_group,
    params_text,
    set_aside,
)

if TYPE_CHECKING:
    import optuna

    from hpsearch.report.snapshot import Snapshot

RULE = ("A configuration is clean when every seed it ran completed. Clean configurations are ranked first; "
        "one with a pruned or failed seed is ranked after every clean one, on the mean of its complete seeds "
        "only, and its seeds column says what happened (\"2 seeds, 1 pruned\"). A pruned seed adds nothing "
        "to the mean: its last value is a partial-training number, not a result, and the seed that survived "
        "the pruner is the luckier one, so its value alone overstates the configuration. More seeds settle it: "
        "once seeds queued by `hpsearch repeat` (which run unpruned) have completed, it is ranked with the clean "
        "ones on the mean of those repeat seeds alone (\"3 seeds, 1 pruned; ranked on its 2 repeat seeds\"). "
        "Pending seeds (waiting or running) have no outcome yet and do not demote.")


# ---------------------------------------------------------------- report section


def _metric_columns(snap: Snapshot) -> list[str]:
    cols = [snap.metric]
    for m in (schema.VAL_ACC, schema.TEST_ACC):
        if m not in cols and any(c.metrics.get(m) is not None for c in snap.configs):
            cols.append(m)
    return cols


def _interval(i: Interval | None) -> list[str]:
    if i is None:
        return ["-", "-"]
    if i.low is None:
        return [f"{i.mean:.4f}", "n=1: no interval"]
    return [i.text(), f"[{i.low:.4f}, {i.high:.4f}]"]


def section(snap: Snapshot) -> Section:
    if snap.goals is not None and snap.goals.multi:
        from hpsearch.report.front import section as front_section

        return front_section(snap)
    sec = Section("Best configurations", "best")
    if not snap.configs:
        return sec.add(Para("No complete trial yet.", "note"))
    level, by, cols = f"{snap.opts.level:.0%}", snap.opts.group_by, _metric_columns(snap)
    headers = ["rank", *([by] if by else []), "configuration", "seeds"]
    for m in cols:
        headers += [f"{m} mean ± CI", f"{level} CI"]
    bounded = bool(snap.goals is not None and snap.goals.constraints)
    headers += [*(["constraints"] if bounded else []), "trials"]
    rows, marked = _config_rows(snap, cols, best_per_group(snap.configs, by, snap.opts.top))
    bases = _baseline_rows(snap, cols)
    per = f"Up to {snap.opts.top} configurations per {by}" if by else f"The {len(rows)} best configurations"
    better = "higher" if snap.maximize else "lower"
    sec.add(Para(f"{per} of {len(snap.configs)}, ranked by the mean validation {snap.metric} over complete seeds "
                 f"({better} is better); ★ marks the best clean configuration. ± is the half-width of the {level} "
                 "Student-t interval of the mean over seeds (scipy.stats.t.interval(level, n-1, loc=mean, "
                 "scale=sem)); one seed gives no interval. With few seeds a t-interval can reach past the metric's "
                 "range (below 0 for an accuracy); such an end is clipped to the range (0-1 for accuracy, >= 0 for "
                 "a loss) and the interval is shown as [low, high] (clipped). Test accuracy "
                 "is reported, never used to rank. Baselines are exact expected accuracies."))
    sec.add(Para(_flag_summary(snap.configs) + " " + RULE, "note"))
    infeasible = sum(1 for c in snap.configs if not c.feasible)
    if bounded:
        from hpsearch.metrics import describe_constraints

        sec.add(Para(f"Constraints: {describe_constraints(snap.goals.constraints)}. A configuration with a seed "  # type: ignore[union-attr]
                     f"that broke one is infeasible and ranks after every feasible one ({infeasible} of "
                     f"{len(snap.configs)}); the constraints column names the bounds broken.", "note"))
    from hpsearch.report.pruning import first_wave, note

    if wave := note(first_wave(snap.trials, snap.spec)):
        sec.add(Para(wave, "warn"))
    numeric = {i for i, h in enumerate(headers) if "mean" in h}
    sec.add(Table(headers, rows + bases, best=marked, baseline=set(range(len(rows), len(rows) + len(bases))),
                  numeric=numeric))
    aside = set_aside(snap.configs, by, snap.opts.top)
    if aside:
        rows, _ = _config_rows(snap, cols, aside, survivor=True)
        sec.add(Table(["rank (on surviving seeds)", *headers[1:]], rows, numeric=numeric,
                      title="Set aside: a seed was pruned or failed (mean over the surviving seeds only)"))
        sec.add(Para("These configurations would be in the table above if their pruned or failed seeds were "
                     "ignored. Their means are over the seeds that survived, so they overstate them. More seeds "
                     f"settle them: `hpsearch repeat {snap.name} --set-aside --top {snap.opts.top}"
                     + (f" --group-by {by}" if by else "") + " --seeds S`.", "note"))
    leaders = [c for _, cs in best_per_group(snap.configs, by, 1) for c in cs]
    return sec.add(*_overlap(snap), *_param_table(snap, leaders))


def _flag_summary(configs: list[ConfigSummary]) -> str:
    flagged = sum(1 for c in configs if not c.clean)
    if not flagged:
        return f"No configuration has a pruned or failed seed ({len(configs)} clean)."
    if flagged == len(configs):
        return f"Every one of the {flagged} configurations has a pruned or failed seed: none is clean."
    return (f"{flagged} of {len(configs)} configurations have a pruned or failed seed and rank after the "
            f"{len(configs) - flagged} clean one(s).")


def _config_rows(snap: Snapshot, cols: list[str], groups: list[tuple[Any, list[ConfigSummary]]],
                 survivor: bool = False) -> tuple[list[list[str]], set[int]]:
    """Rows of configurations per group, and the index of the best clean configuration's row."""
    by = snap.opts.group_by
    rows, marked = [], set()
    for group, configs in groups:
        for c in configs:
            winner = c.rank == 1 and c.clean and c.feasible and not survivor
            rank = f"{c.survivor_rank} (ranked {c.rank})" if survivor else f"{c.rank} ★" if winner else str(c.rank)
            row = [rank, *([_group_text(group)] if by else []), c.name, c.seeds_text()]
            for m in cols:
                row += _interval(c.value if m == snap.metric else c.metrics.get(m))
            if winner:
                marked.add(len(rows))
            if snap.goals is not None and snap.goals.constraints:
                row.append("; ".join(c.violations) or "met")
            rows.append([*row, _trial_list(c.trials)])
    return rows, marked


def _baseline_rows(snap: Snapshot, cols: list[str]) -> list[list[str]]:
    counts = snap.attrs.get(schema.CLASS_COUNTS_ATTR)
    if not counts or not counts.get("train"):
        return []
    rows = []
    for b in baselines(counts):
        row = ["-", *(["baseline"] if snap.opts.group_by else []), b.name, "-"]
        for m in cols:
            acc = {schema.VAL_ACC: b.val_acc, schema.TEST_ACC: b.test_acc}
            row += [_f(acc.get(m)), "exact" if m in acc else "-"]
        rows.append([*row, *(["-"] if snap.goals is not None and snap.goals.constraints else []), "-"])
    return rows


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"


def _group_text(group: Any) -> str:
    return "-" if group == NO_GROUP else str(group)


def _trial_list(numbers: list[int]) -> str:
    shown = ", ".join(f"#{n}" for n in numbers[:6])
    return shown + (f" (+{len(numbers) - 6})" if len(numbers) > 6 else "")


def _overlap(snap: Snapshot) -> list[Para]:
    """Is the best really better? Name the configurations its interval cannot tell apart."""
    top = snap.configs[0]
    if not top.clean:
        return [Para("No configuration ran all its seeds to completion: every one has a pruned or failed seed, "
                     "so none is a clean winner and every mean below is over surviving seeds only.", "warn")]
    if top.value.low is None:
        return [Para("The best configuration has a single seed: run `hpsearch repeat` to get an interval.", "note")]
    close = [c for c in snap.configs[1:] if c.value.low is not None and c.value.low <= top.value.high  # type: ignore[operator]
             and c.value.high >= top.value.low]  # type: ignore[operator]
    if not close:
        return [Para("The best configuration's interval does not overlap any other configuration's.", "note")]
    names = ", ".join(f"#{c.rank} {c.name}" for c in close[:5]) + (" ..." if len(close) > 5 else "")
    return [Para(f"Not resolved at this level: the intervals of {len(close)} other configuration(s) overlap the "
                 f"best's ({names}). More seeds (`hpsearch repeat`) would separate them.", "note")]


def _param_table(snap: Snapshot, leaders: list[ConfigSummary]) -> list[Table]:
    params = [p for p in snap.params if any(p in c.params for c in leaders)]
    if not params:
        return []
    rows = [[str(c.rank), c.name, *(f"{c.params[p]:.6g}" if isinstance(c.params.get(p), float)
                                    else str(c.params.get(p, "-")) for p in params)] for c in leaders]
    return [Table(["rank", "configuration", *params], rows, title="Parameters of the best configuration"
                  + (f" of each {snap.opts.group_by}" if snap.opts.group_by else ""))]


# ---------------------------------------------------------------- `hpsearch best`


def best_data(study: optuna.Study, spec: Any, top: int, level: float = 0.9) -> dict[str, Any]:
    """What `best` shows, as plain data (the --json output; keys documented in the README)."""
    from hpsearch.errors import HpsearchError
    from hpsearch.report import front
    from hpsearch.report.export import METRICS
    from hpsearch.report.stats import check_level, rank
    from hpsearch.storage import bulk

    check_level(level)
    if top < 1:
        raise HpsearchError(f"--top must be >= 1, but got {top=}")
    goals = front.goals_of(study, spec)
    # Every state: pruned, failed and pending seeds are counted, not only the complete ones.
    keys = [schema.CONFIG_ID, schema.NAME, *METRICS, schema.SEED, schema.RETRY_OF, schema.RETRY_HISTORY,
            schema.FAIL_REASON, schema.WORKER, schema.FUSED, schema.IS_REPEAT, schema.DUPLICATE_OF, *goals.keys()]
    trials = bulk.trials(study, keys=keys, with_params=True) if spec is not None or not goals.multi else (
        study.get_trials(deepcopy=False))  # a plain Optuna study's objectives are in Optuna's table alone
    maximize, metric = goals.maximize[0], goals.metrics[0]
    rows = rank(trials, goals, level)
    order = list(spec.space) if spec is not None else []
    for r in rows:  # the spec's order on every row (the storage returns parameters in any order)
        r.params = in_order(r.params, order)
    if goals.multi:  # the whole Pareto front; set aside: a flagged configuration its survivors put on it
        shown, aside = [r for r in rows if r.rank == 1], [r for r in rows if not r.clean and r.survivor_rank == 1
                                                            and r.rank != 1 and r.feasible]
    else:
        shown, aside = rows[:top], [c for _, cs in set_aside(rows, None, top) for c in cs]
    return {
        "study": study.study_name, "metric": metric,
        "direction": "maximize" if maximize else "minimize", "level": level, "top": top,
        "metrics": list(goals.metrics), "directions": ["maximize" if up else "minimize" for up in goals.maximize],
        "constraints": {m: dict(b) for m, b in goals.constraints.items()},
        "n_configurations": len(rows), "n_flagged": sum(1 for r in rows if not r.clean),
        "n_infeasible": sum(1 for r in rows if not r.feasible),
        "pareto": front.pareto_summary(rows, goals) if goals.multi else None,
        "configurations": [config_record(r) for r in shown],
        "set_aside": [config_record(r) for r in aside],
        "failures": _failures(trials),
        "first_wave": _first_wave(trials, spec),
    }


def _first_wave(trials: list[Any], spec: Any) -> dict[str, Any] | None:
    from dataclasses import asdict

    from hpsearch.report.pruning import first_wave, note

    wave = first_wave(trials, spec)
    return None if wave is None else {**asdict(wave), "note": note(wave)}


def in_order(params: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """Parameters in the spec's space order, then any others by name."""
    rank = {p: i for i, p in enumerate(order)}
    return {k: params[k] for k in sorted(params, key=lambda k: (rank.get(k, len(rank)), k))}


def _failures(trials: list[Any]) -> list[dict[str, Any]]:
    """Failed trials that no retry follows, by reason (most first): what is not ranked, and why."""
    from optuna.trial import TrialState

    retried = {n for t in trials for n in t.user_attrs.get(schema.RETRY_HISTORY) or []}
    by_reason: dict[str, list[int]] = {}
    for t in trials:
        if t.state == TrialState.FAIL and t.number not in retried:
            reason = str(t.user_attrs.get(schema.FAIL_REASON) or "no reason recorded")
            by_reason.setdefault(reason, []).append(t.number)
    return [{"reason": r, "trials": ns} for r, ns in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0]))]


def config_record(r: ConfigSummary) -> dict[str, Any]:
    def interval(i: Interval | None) -> dict[str, Any] | None:
        return None if i is None else {"mean": i.mean, "n": i.n, "low": i.low, "high": i.high, "clipped": i.clipped}

    return {
        "rank": r.rank, "survivor_rank": r.survivor_rank, "clean": r.clean, "config_id": r.config_id,
        "name": r.name, "seeds": r.runs.as_dict(), "settled_by_repeats": r.settled_by, "value": interval(r.value),
        "metrics": {m: interval(i) for m, i in r.metrics.items()}, "trials": r.trials,
        "representative": r.representative, "params": r.params,
        # A constrained study: whether every seed met the bounds, and the ones broken.
        "feasible": r.feasible, "violations": list(r.violations),
        # Several objectives: each one's mean and interval over seeds (`rank` is the Pareto front).
        **({"objectives": {m: interval(i) for m, i in r.objectives.items()}} if r.objectives else {}),
    }


def print_best(name: str, storage: str | None, top: int, level: float = 0.9, as_json: bool = False) -> None:
    from hpsearch.report.snapshot import open_study

    study, spec = open_study(name, storage)
    data = best_data(study, spec, top, level)
    if as_json:
        import json

        json.dump(data, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
        return
    _print_tables(data)


def _print_tables(data: dict[str, Any]) -> None:
    from rich.console import Console

    from hpsearch.report import front

    # Piped output (logs, CI, `make demo | tee`) gets a wide table instead of rich's 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    if not data["configurations"]:
        console.print(f"study {data['study']}: no complete trial yet")
        _print_failures(console, data["failures"])
        return
    if data["pareto"] is not None:
        front.print_front(console, data)
        _print_failures(console, data["failures"])
        return
    metric, level = data["metric"], data["level"]
    title = (f"best configurations of {data['study']} ({data['direction']} {metric}, mean ± {level:.0%} "
             "t-interval over complete seeds; clean configurations first)")
    console.print(_rich_table(title, data["configurations"], metric, "rank"))
    if data["n_infeasible"]:
        console.print(front.infeasible_line(data), highlight=False, markup=False)
    flagged = data["n_flagged"]
    if flagged and flagged < data["n_configurations"]:
        console.print(f"{flagged} of {data['n_configurations']} configurations have a pruned or failed seed: "
                      "ranked after every clean one, on their surviving seeds only.")
    if data["set_aside"]:
        console.print(_rich_table(f"set aside: a seed was pruned or failed; on its surviving seeds alone each would "
                                  f"be in the top {data['top']}", data["set_aside"], metric, "surviving-seed rank"))
        console.print(f"more seeds settle them: hpsearch repeat {data['study']} --set-aside --top {data['top']} "
                      "--seeds S (or one: --config 'PARAMETERS as printed')", highlight=False, markup=False)
    if not data["configurations"][0]["clean"]:
        console.print(f"every one of the {data['n_configurations']} configurations has a pruned or failed seed, so "
                      "there is no clean winner: the values above are over surviving seeds only")
    _print_failures(console, data["failures"])
    if data["first_wave"] and data["first_wave"]["note"]:
        console.print(data["first_wave"]["note"], highlight=False, markup=False)


def _print_failures(console: Any, failures: list[dict[str, Any]]) -> None:
    if not failures:
        return
    n = sum(len(f["trials"]) for f in failures)
    console.print(f"{n} trial{'s' if n > 1 else ''} failed (not retried) and {'are' if n > 1 else 'is'} not ranked:",
                  highlight=False)
    for f in failures[:5]:
        console.print(f"  {_trial_list(f['trials'])}: {f['reason']}", highlight=False, markup=False)
    if len(failures) > 5:
        console.print(f"  ... {len(failures) - 5} other reasons (`hpsearch best --json` lists each)", highlight=False)


def _rich_table(title: str, records: list[dict[str, Any]], metric: str, rank_col: str) -> Any:
    from rich.table import Table as RichTable

    extra = [m for m in (schema.VAL_ACC, schema.TEST_ACC) if m != metric]  # the metric column already shows val_acc
    bounded = any(r.get("violations") for r in records) or any(not r.get("feasible", True) for r in records)
    table = RichTable(title=title)
    for col in (rank_col, metric, "seeds", *extra, *(["constraints"] if bounded else []), "trials", "parameters"):
        table.add_column(col, justify="right" if col not in ("parameters", "trials", "seeds", "constraints") else "left")
    for r in records:
        cells = [interval_text(r["metrics"].get(m)) for m in extra]
        if bounded:
            cells.append("; ".join(r["violations"]) or "met")
        rank = str(r["rank"]) if rank_col == "rank" else f"{r['survivor_rank']} (ranked {r['rank']})"
        table.add_row(rank, interval_text(r["value"]), seeds_text(r["seeds"], r.get("settled_by_repeats", 0)),
                      *cells, trial_list(r["trials"]), params_text(r["params"]) or "-")
    return table


def trial_list(numbers: list[int]) -> str:
    return ",".join(map(str, numbers[:6])) + ("…" if len(numbers) > 6 else "")


def interval_text(i: dict[str, Any] | None, metric: str | None = None) -> str:
    if i is None:
        return "-"
    return Interval(i["mean"], i["n"], 0.0, i["low"], i["high"], bool(i.get("clipped"))).text(metric=metric)


def seeds_text(seeds: dict[str, int], settled_by: int = 0) -> str:
    from hpsearch.report.export import SeedRuns

    text = SeedRuns(seeds["complete"], seeds["pruned"], seeds["failed"], seeds["pending"]).text()
    return text + (f"; ranked on its {settled_by} repeat seed{'s' if settled_by != 1 else ''}" if settled_by else "")
