"""Several objectives: the Pareto-optimal configurations in `best` and the report's front.

A configuration is a point of the means over its complete seeds, one per objective (each shown
with its t-interval, as one objective's mean is). Its rank is its Pareto front (stats._rank_fronts):
rank 1, the front, is the set of feasible clean configurations no other one dominates, i.e. is at
least as good in every objective and better in one. Every other feasible clean configuration is
dominated by some configuration of the front; flagged (a failed seed) and infeasible (a constraint
broken) ones rank after the front whether dominated or not, and are counted apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpsearch.metrics import describe_constraints
from hpsearch.report.objectives import Goals, dominates
from hpsearch.report.render import Para, Section, Table
from hpsearch.report.stats import ConfigSummary

if TYPE_CHECKING:
    import optuna

    from hpsearch.report.snapshot import Snapshot

KINDS = ("Pareto-optimal", "dominated", "set aside", "infeasible")  # how the figure draws a configuration


def goals_of(study: optuna.Study, spec: Any) -> Goals:
    """The spec's objectives and constraints; a plain Optuna study's from its directions and metric names."""
    import optuna

    maximize = tuple(d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions)
    if spec is not None:
        return Goals.of(spec)
    names = study.metric_names or (["value"] if len(maximize) == 1 else [f"value_{i}" for i in range(len(maximize))])
    return Goals(tuple(names), maximize)


def _means(r: ConfigSummary, goals: Goals) -> list[float]:
    return [r.objectives[m].mean for m in goals.metrics]


def pareto_summary(rows: list[ConfigSummary], goals: Goals) -> dict[str, Any]:
    """How large the front is and how many of the other configurations it dominates (on their means);
    the others it does not dominate rank after it for another reason (infeasible, a failed seed)."""
    front = [r for r in rows if r.rank == 1]
    others = [r for r in rows if r.rank != 1]
    dominated = {r.config_id for r in others
                 if any(dominates(_means(f, goals), _means(r, goals), goals.maximize) for f in front)}
    beside = [r for r in others if r.config_id not in dominated]
    return {"size": len(front), "others": len(others), "dominated": len(dominated),
            "not_dominated": {"infeasible": sum(1 for r in beside if not r.feasible),
                              "flagged": sum(1 for r in beside if r.feasible and not r.clean)}}


def front_line(data: dict[str, Any]) -> str:
    p = data["pareto"]
    size, others, dominated = p["size"], p["others"], p["dominated"]
    if not others:
        return f"all {size} configuration{'s are' if size != 1 else ' is'} on the front: none dominates another"
    text = (f"the front's {size} configuration{'s' if size != 1 else ''} dominate{'s' if size == 1 else ''} "
            f"{dominated} of the {others} other configuration{'s' if others != 1 else ''}")
    beside = [f"{n} {what}" for what, n in (("infeasible", p["not_dominated"]["infeasible"]),
                                             ("with a failed seed", p["not_dominated"]["flagged"])) if n]
    if beside:
        text += f"; the other {others - dominated} rank after it undominated: " + ", ".join(beside)
    return text


def infeasible_line(data: dict[str, Any]) -> str:
    n, total = data["n_infeasible"], data["n_configurations"]
    return (f"{n} of {total} configuration{'s' if total != 1 else ''} broke a constraint "
            f"({describe_constraints(data['constraints'])}) and rank after every feasible one")


# ---------------------------------------------------------------- `hpsearch best`


def print_front(console: Any, data: dict[str, Any]) -> None:
    goals = ", ".join(f"{d} {m}" for m, d in zip(data["metrics"], data["directions"], strict=True))
    title = (f"Pareto-optimal configurations of {data['study']} ({goals}; mean ± {data['level']:.0%} t-interval "
             "over complete seeds)")
    console.print(_table(title, data["configurations"], data))
    console.print(front_line(data), highlight=False, markup=False)
    if data["n_infeasible"]:
        console.print(infeasible_line(data), highlight=False, markup=False)
    if data["set_aside"]:
        console.print(_table("set aside: a seed failed; on its surviving seeds alone each would be on the front",
                             data["set_aside"], data))
    if not data["configurations"][0]["clean"]:
        console.print("every configuration has a failed seed: the front is over surviving seeds only",
                      highlight=False, markup=False)


def _table(title: str, records: list[dict[str, Any]], data: dict[str, Any]) -> Any:
    from rich.table import Table as RichTable

    from hpsearch.report.best import interval_text, seeds_text, trial_list
    from hpsearch.report.stats import params_text

    bounded = bool(data["constraints"])
    table = RichTable(title=title)
    for col in (*data["metrics"], "seeds", *(["constraints"] if bounded else []), "trials", "parameters"):
        table.add_column(col, justify="right" if col in data["metrics"] else "left")
    for r in records:
        cells = [interval_text(r["objectives"].get(m), m) for m in data["metrics"]]
        cells.append(seeds_text(r["seeds"], r.get("settled_by_repeats", 0)))
        if bounded:
            cells.append("; ".join(r["violations"]) or "met")
        table.add_row(*cells, trial_list(r["trials"]), params_text(r["params"]) or "-")
    return table


# ---------------------------------------------------------------- the report


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


@dataclass
class Point:
    """One configuration in the front's figure."""

    name: str
    values: list[float]
    kind: str  # one of KINDS


def points(rows: list[ConfigSummary], goals: Goals) -> list[Point]:
    def kind(r: ConfigSummary) -> str:
        if not r.feasible:
            return "infeasible"
        if r.rank == 1:
            return "Pareto-optimal"
        return "set aside" if not r.clean else "dominated"

    return [Point(r.name, _means(r, goals), kind(r)) for r in rows]


def section(snap: Snapshot) -> Section:
    """The report's best configurations with several objectives: the Pareto front, its table and figure."""
    from hpsearch.report import interactive as live
    from hpsearch.report import plots

    goals = snap.goals
    assert goals is not None
    sec = Section("Pareto front", "best")
    if not snap.configs:
        return sec.add(Para("No complete trial yet.", "note"))
    level = f"{snap.opts.level:.0%}"
    stated = ", ".join(f"{'maximize' if up else 'minimize'} {m}" for m, up in zip(goals.metrics, goals.maximize,
                                                                                   strict=True))
    sec.add(Para(f"Objectives: {stated}. Each configuration is the point of its means over complete seeds; the "
                 "front is the set of feasible configurations, all of whose seeds completed, that no other one "
                 "dominates (at least as good in every objective and better in one). ± is the half-width of the "
                 f"{level} Student-t interval of the mean over seeds; one seed gives no interval. Test accuracy is "
                 "reported, never used to choose."
                 + (f" Constraints: {describe_constraints(goals.constraints)}; a configuration with a seed that "
                    "broke one is infeasible and never on the front." if goals.constraints else "")))
    front = [r for r in snap.configs if r.rank == 1]
    headers = ["configuration", *(f"{m} mean ± CI" for m in goals.metrics), "test_acc", "seeds",
               *(["constraints"] if goals.constraints else []), "trials"]
    rows = [[r.name, *(r.objectives[m].text(metric=m) for m in goals.metrics),
             r.metrics["test_acc"].text() if r.metrics.get("test_acc") else "-", r.seeds_text(),
             *(["; ".join(r.violations) or "met"] if goals.constraints else []),
             ", ".join(f"#{n}" for n in r.trials[:6])] for r in front]
    sec.add(Table(headers, rows, numeric=set(range(1, len(goals.metrics) + 2)),
                  title=f"The {len(front)} Pareto-optimal configurations of {len(snap.configs)}"))
    summary = {"pareto": pareto_summary(snap.configs, goals), "n_infeasible": sum(not r.feasible for r in snap.configs),
               "n_configurations": len(snap.configs), "constraints": goals.constraints}
    sec.add(Para(_sentence(front_line(summary))
                 + (" " + _sentence(infeasible_line(summary)) if summary["n_infeasible"] else "")))
    if not front[0].clean:
        sec.add(Para("Every configuration has a failed seed: the front is over surviving seeds only.", "warn"))
    pts = points(snap.configs, goals)
    caption = ("Configurations by their means over seeds, one panel per pair of objectives: the front in black "
               "(joined, with two objectives), dominated ones in blue, set aside (a failed seed) in orange, "
               "infeasible ones as grey crosses" + (", bounds dashed" if goals.constraints else ""))
    metrics, up, bounds = list(goals.metrics), list(goals.maximize), {m: dict(b) for m, b in goals.constraints.items()}
    return sec.add(snap.figure("pareto_front", caption, lambda p: plots.pareto_front(pts, metrics, up, p, bounds),
                               lambda: live.pareto_front(pts, metrics, up, bounds)))
