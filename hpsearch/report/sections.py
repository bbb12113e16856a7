"""The report's sections, each a function Snapshot -> Section (data from report_*, layout here).

The best-configurations section lives in report_best, beside `hpsearch best`, which shares its ranking.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from optuna.trial import TrialState

from hpsearch import schema
from hpsearch.metrics import describe_constraints
from hpsearch.report import interactive as live
from hpsearch.report import plots
from hpsearch.report.render import Para, Section, Table
from hpsearch.report.stats import baselines

if TYPE_CHECKING:
    from hpsearch.report.snapshot import Snapshot

MAX_LISTED = 40  # rows of a filter's trial list before "... N more"
MAX_FLAGS = 200  # rows of a divergent/under-trained list (the count above it is always complete)


def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _hours(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def meta(snap: Snapshot) -> list[str]:
    when = datetime.fromtimestamp(snap.taken, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"Snapshot of the storage taken {when}; {len(snap.trials)} trials."]
    if snap.spec is not None:
        s = snap.spec
        goals = ", ".join(f"{d} {m}" for m, d in zip(s.metrics, s.directions, strict=True))
        bounds = f"; constraints {describe_constraints(s.constraints)}" if s.constraints else ""
        lines.append(f"Search: {s.sampler['name']} sampler, {s.pruner['name']} pruner, {goals} (validation){bounds}, "
                     f"{s.repeats} seed(s) per configuration, dataset {s.dataset.get('name')}.")
        if s.multi_objective:
            lines.append(f"Several objectives: the Pareto front below ranks configurations by all of them; the other "
                         f"views (history, slices, contours, importance, correlations) are of the first, {s.metric}.")
    states = snap.frame["state"].value_counts().to_dict() if len(snap.frame) else {}
    planned, issued = snap.attrs.get(schema.PLANNED_ATTR), snap.attrs.get(schema.ISSUED_ATTR)
    unissued = max(0, int(planned) - int(issued)) if planned is not None and issued is not None else 0
    if states.get("running") or states.get("waiting") or unissued:
        later = f", {unissued} planned but not queued yet" if unissued else ""
        lines.append(f"The study is still running ({states.get('running', 0)} running, "
                     f"{states.get('waiting', 0)} waiting{later}): every number below is a snapshot.")
    return lines


# ---------------------------------------------------------------- 1. dataset and baselines


def dataset(snap: Snapshot) -> Section:
    sec = Section("Dataset and baselines", "dataset")
    counts = snap.attrs.get(schema.CLASS_COUNTS_ATTR)
    if not counts or not counts.get("train"):
        return sec.add(Para("Class counts are not recorded: no worker has loaded the dataset yet, or the study "
                            "uses its own objective. Baselines need them.", "note"))
    classes = list(counts.get("classes") or range(len(counts["train"])))
    splits = [s for s in ("train", "val", "test") if counts.get(s)]
    if len(classes) <= 30:
        rows = [[str(c), *(f"{counts[s][i]} ({counts[s][i] / (sum(counts[s]) or 1):.1%})" for s in splits)]
                for i, c in enumerate(classes)]
        rows.append(["total", *(str(sum(counts[s])) for s in splits)])
        sec.add(Table(["class", *splits], rows, numeric=set(range(1, len(splits) + 1))))
    sec.add(snap.figure("class_histogram", "Share of each class in the train, validation and test splits",
                        lambda p: plots.class_histogram(counts, p), lambda: live.class_histogram(counts)))
    rows = [[b.name, b.definition, _f(b.val_acc), _f(b.test_acc)] for b in baselines(counts)]
    sec.add(Table(["baseline", "definition", "val_acc", "test_acc"], rows, numeric={2, 3},
                  title="Accuracy of models that ignore the input"))
    return sec.add(Para(
        "Two random models: uniform guessing is the chance level of the task (1/K); a guesser that draws from "
        "the training class frequencies is the level a model reaches by learning only the label distribution. "
        "The majority-class model is what a collapsed network outputs. All three are expected accuracies "
        "computed from the class counts, not measured.", "note"))


# ---------------------------------------------------------------- 3. parallel coordinates


def parallel(snap: Snapshot) -> Section:
    from hpsearch.report.axes import is_log

    sec = Section("Parallel coordinates", "parallel")
    logs = [p for p in snap.params if is_log(p, snap.complete)]
    sec.add(Para("One line per complete trial, coloured by the validation metric (bright = better). Drag along "
                 "an axis in the interactive figure to select a range."
                 + (f" Log axes: {', '.join(logs)}." if logs else ""), "note"))
    sec.add(*_parallel_view(snap, snap.complete, "parallel_all", f"All complete trials ({len(snap.complete)})"))
    from hpsearch.report.where import select

    for i, expr in enumerate(snap.opts.where, 1):
        chosen = select(expr, snap.frame)
        numbers = set(chosen["number"].tolist())
        matched = [t for t in snap.complete if t.number in numbers]
        sec.add(Para(f"Filter {i}: {expr} - {len(chosen)} trial(s) match, {len(matched)} complete."))
        sec.add(*_parallel_view(snap, matched, f"parallel_where{i}", f"Trials where {expr} ({len(matched)})"))
        rows = [[str(r.number), r.state, r.name, _f(r.value), _f(r.test_acc), _f(r.seed)]
                for r in chosen.head(MAX_LISTED).itertuples()]
        if rows:
            sec.add(Table(["trial", "state", "configuration", snap.metric, "test_acc", "seed"], rows, numeric={3, 4}))
        if len(chosen) > MAX_LISTED:
            sec.add(Para(f"... and {len(chosen) - MAX_LISTED} more (hpsearch export lists them all).", "note"))
    if not snap.opts.where:
        sec.add(Para('Filtered views: add --where "test_acc < 0.15" or --where "val_acc > 0.95" (repeatable).',
                     "note"))
    return sec


def _parallel_view(snap: Snapshot, trials: list[Any], stem: str, title: str) -> list[Any]:
    """Axes, scales and colours of all complete trials, so a filtered view reads like the full one."""
    from hpsearch.report.axes import parallel_axes

    if not trials:
        return [Para("No complete trial to draw.", "note")]
    everything = parallel_axes(snap.complete, snap.params, snap.metric)
    where = {t.number: i for i, t in enumerate(snap.complete)}
    index = [where[t.number] for t in trials]
    axes = [a.subset(index) for a in everything]
    values = [float(t.value) for t in snap.complete]
    color, crange = [values[i] for i in index], (min(values), max(values))
    return [snap.figure(stem, title,
                        lambda p: plots.parallel_coordinates(axes, color, crange, snap.metric, p, title,
                                                             snap.maximize),
                        lambda: live.parallel_coordinates(axes, color, crange, snap.metric, title, snap.maximize))]


# ---------------------------------------------------------------- 3b. history, slice, contour


def views(snap: Snapshot) -> Section:
    """Optuna's optimization-history, slice and contour views (the choices that differ: report.views)."""
    from hpsearch.report import views as v

    sec = Section("Optimization history, slices and contours", "views")
    h = v.history(snap.trials, snap.maximize)
    if not h.values:
        return sec.add(Para("No complete trial yet.", "note"))
    unit = ("the best configuration's mean over its complete seeds so far (as `best` ranks them, not the best "
            "single seed)" if h.seeds else "the best value so far")
    sec.add(Para(f"History: every complete trial in the order it finished (parallel workers finish out of number "
                 f"order); the line is {unit}.", "note"))
    sec.add(snap.figure("history", f"Optimization history of {snap.metric}",
                        lambda p: plots.history(h, snap.metric, snap.maximize, p),
                        lambda: live.history(h, snap.metric, snap.maximize)))
    panels = v.slices(snap.trials, snap.params)
    if panels:
        sec.add(snap.figure("slice", f"{snap.metric} against each parameter; darker = finished later",
                            lambda p: plots.slices(panels, snap.metric, snap.maximize, p),
                            lambda: live.slices(panels, snap.metric, snap.maximize)))
    pairs = v.contours(snap.trials, snap.params)
    if pairs:
        sec.add(Para(f"Contour: each cell is the mean {snap.metric} of the complete trials that fell in it, over "
                     f"the parameter's own values or {v.BINS} bins of its range (of the first "
                     f"{v.MAX_CONTOUR_PARAMS} parameters that vary); a blank cell had no trial. Unlike an "
                     "interpolated surface, no cell shows a value nobody measured; a cell averages over the other "
                     "parameters.", "note"))
        sec.add(snap.figure("contour", "Mean metric over pairs of parameters",
                            lambda p: plots.contours(pairs, snap.metric, snap.maximize, p),
                            lambda: live.contours(pairs, snap.metric, snap.maximize)))
    return sec


# ---------------------------------------------------------------- 4. importance


def importance(snap: Snapshot) -> Section:
    from hpsearch.report.importance import correlations, importances

    sec = Section("Hyperparameter importance", "importance")
    imp = importances(snap.trials, snap.maximize)
    if imp.by_method:
        params = imp.params()
        methods = list(imp.by_method)
        rows = [[p, *(_f(imp.by_method[m].get(p), 3) for m in methods)] for p in params]
        sec.add(Para("One point per configuration (the mean of its complete seeds). "
                     "fANOVA: share of the metric's variance explained by the parameter (random-forest "
                     "surrogate). PED-ANOVA: how differently the parameter is distributed in the top 10% of "
                     "trials. MDI: a random forest's mean decrease in impurity. Each sums to 1; conditional "
                     "parameters are left out by fANOVA and MDI.", "note"))
        sec.add(Table(["parameter", *methods], rows, numeric=set(range(1, len(methods) + 1))))
        sec.add(snap.figure("importance", "Importance of each parameter by method",
                            lambda p: plots.importance_bars(imp.by_method, params, p),
                            lambda: live.importance_bars(imp.by_method, params)))
    for note in imp.notes:
        sec.add(Para(note, "note"))
    corr = correlations(snap.trials, snap.maximize, snap.opts.level)
    if corr:
        rows = [[c.param, c.kind, c.statistic, _f(c.value, 3), _p(c.p_value), str(c.n), c.best] for c in corr]
        sec.add(Table(["parameter", "kind", "statistic", "value", "p-value", "n", "reading"], rows, numeric={3, 4, 5},
                      title=f"Correlation of each parameter with {snap.metric}"))
        alpha = 1 - snap.opts.level
        sec.add(Para("Spearman's rho for numeric parameters (rank based: log scale needs no transform); "
                     "for categorical ones eta² (share of variance explained) with a Kruskal-Wallis p-value. "
                     "The unit is the configuration: each counts once, with the mean of its complete seeds "
                     "(n counts configurations; its seeds are repeated measurements of one point, not independent "
                     "ones). A reading names a direction (or a best level) only "
                     f"where its test is significant at the report's level ({snap.opts.level:.0%}: p < {alpha:.2g}); "
                     "otherwise it says there is no evidence of an effect, which is not evidence of none.", "note"))
    return sec


def _p(p: float | None) -> str:
    return "-" if p is None else (f"{p:.3g}" if p >= 1e-4 else "<1e-4")


# ---------------------------------------------------------------- 5. learning curves


def curves(snap: Snapshot) -> Section:
    from hpsearch.report.curves import divergent_runs, under_trained_runs

    sec = Section("Learning curves", "curves")
    metric, maximize = snap.curve_metric
    divergent = divergent_runs(snap.trials)
    under = under_trained_runs(snap.trials, metric, maximize, snap.opts.window, snap.opts.min_gain)
    flags = {f.number: "under-trained" for f in under} | {f.number: "divergent" for f in divergent}
    if snap.configs:
        flags |= {n: "best configuration" for n in snap.configs[0].trials if n not in flags}
    drawn = [t for t in snap.trials if t.state != TrialState.WAITING and (t.intermediate_values
                                                                          or t.user_attrs.get(schema.CURVE))]
    drawn, hidden = _curves_to_draw(drawn, flags, snap)
    if hidden:
        sec.add(Para(f"{hidden} curves not drawn: at most {snap.opts.max_curves} flagged and "
                     f"{snap.opts.max_curves} other runs (the best-valued ones) keep the figure readable.", "note"))
    if drawn:
        sec.add(snap.figure("learning_curves", "Training loss, validation metric and validation loss (or accuracy) "
                            "per epoch",
                            lambda p: plots.learning_curves(drawn, flags, metric, p),
                            lambda: live.learning_curves(drawn, flags, metric)))
    else:
        sec.add(Para("No trial has reported an epoch yet.", "note"))
    gain = f"+{snap.opts.min_gain:g} absolute" if maximize else f"{snap.opts.min_gain:.0%} relative"
    sec.add(Para(f"Divergent ({len(divergent)}): the loss went NaN/inf (the worker failed the trial), a curve "
                 "value is not finite, or the last epoch's training loss is not below the first epoch's."))
    sec.add(*_flag_table(divergent))
    sec.add(Para(f"Under-trained ({len(under)}): complete runs whose validation {metric} still improved by "
                 f"at least {gain} over their last {snap.opts.window} epochs (fewer for shorter runs): more epochs "
                 "would likely have helped (--window and --min-gain set the rule)."))
    return sec.add(*_flag_table(under))


def _curves_to_draw(trials: list[Any], flags: dict[int, str], snap: Snapshot) -> tuple[list[Any], int]:
    def best_first(t: Any) -> tuple[bool, float]:
        return t.value is None, -(t.value or 0.0) if snap.maximize else (t.value or 0.0)

    cap = snap.opts.max_curves
    flagged = sorted((t for t in trials if t.number in flags), key=best_first)
    others = sorted((t for t in trials if t.number not in flags), key=best_first)
    chosen = flagged[:cap] + others[:cap]
    return chosen, len(trials) - len(chosen)


def _flag_table(flags: list[Any]) -> list[Table | Para]:
    if not flags:
        return [Para("None.", "note")]
    rows = [[f"#{f.number}", f.name, f.state, f.reason] for f in flags[:MAX_FLAGS]]
    more = [Para(f"... and {len(flags) - MAX_FLAGS} more.", "note")] if len(flags) > MAX_FLAGS else []
    return [Table(["trial", "configuration", "state", "why"], rows), *more]


# ---------------------------------------------------------------- 6. confusion matrix


def confusion(snap: Snapshot) -> Section:
    sec = Section("Confusion matrix of the best configuration", "confusion")
    if not snap.configs:
        return sec.add(Para("No complete trial yet.", "note"))
    top = snap.configs[0]
    by_number = {t.number: t for t in snap.complete}
    mats = [by_number[n].user_attrs.get(schema.CONFUSION_MATRIX) for n in top.trials]
    mats = [m for m in mats if m]
    if not mats:
        return sec.add(Para(f"Configuration {top.name} recorded no confusion matrix (user objective?).", "note"))
    k = len(mats[0])
    pooled = [[sum(m[i][j] for m in mats) for j in range(k)] for i in range(k)]
    counts = snap.attrs.get(schema.CLASS_COUNTS_ATTR) or {}
    classes = [str(c) for c in counts.get("classes") or range(k)]
    classes = classes if len(classes) == k else [str(i) for i in range(k)]
    title = f"{top.name}: test set, {len(mats)} seed(s) pooled"
    sec.add(Para(f"Best configuration by validation: {top.name} (rank 1). The matrix sums the test-set confusion "
                 f"matrices of its {len(mats)} seed(s); rows are true classes. Per-class accuracy is the share of "
                 "each true class predicted right (recall)."))
    sec.add(snap.figure("confusion", title, lambda p: plots.confusion(pooled, classes, p, title),
                        lambda: live.confusion(pooled, classes, title)))
    rows, accs = [], []
    for i, c in enumerate(classes):
        total = sum(pooled[i])
        acc = pooled[i][i] / total if total else None
        if acc is not None:
            accs.append(acc)
        rows.append([c, str(total), str(pooled[i][i]), _f(acc)])
    worst = sorted(range(k), key=lambda i: pooled[i][i] / (sum(pooled[i]) or 1))[:min(3, k - 1)]
    sec.add(Table(["class", "test samples", "correct", "accuracy"], rows, numeric={1, 2, 3},
                  title="Per-class accuracy"))
    overall = sum(pooled[i][i] for i in range(k)) / (sum(map(sum, pooled)) or 1)
    return sec.add(Para(f"Accuracy {overall:.4f}; mean per-class (balanced) accuracy "
                        f"{sum(accs) / len(accs) if accs else float('nan'):.4f}; weakest: "
                        + ", ".join(classes[i] for i in worst) + "."))


# ---------------------------------------------------------------- 7. cost


def cost(snap: Snapshot) -> Section:
    from hpsearch.report.cost import cost as compute

    epochs = snap.spec.train.get("epochs") if snap.spec is not None else None
    c = compute(snap.trials, int(epochs) if isinstance(epochs, int) else None, now=snap.taken)
    sec = Section("Cost of the search", "cost")
    states = ", ".join(f"{n} {s}" for s, n in c.by_state.items())
    share = f" ({c.saved_share:.0%} of what the pruned trials would have trained)" if c.saved_share is not None else ""
    rows = [
        ["trials by state", f"{states} (total {sum(c.by_state.values())})"],
        ["repeats queued by hpsearch repeat", str(c.repeats)],
        ["retries after a dead or preempted worker", str(c.retries)],
        ["divergent trials", str(c.divergent)],
        ["epochs trained", str(c.epochs_trained)],
        ["epochs saved by pruning", f"{c.epochs_saved}{share}"],
        ["wall time (first start to last finish)", _hours(c.wall_s)],
        ["compute time (sum over trials)", _hours(c.compute_s)],
        ["GPU-hours", f"{c.gpu_hours:.2f}"],
        ["trials per hour (finished / wall time)", f"{c.trials_per_hour:.1f}"],
    ]
    sec.add(Table(["measure", "value"], rows))
    if c.still_running:
        sec.add(Para("Still running: wall time runs to the snapshot.", "note"))
    return sec
