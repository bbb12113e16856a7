"""`hpsearch status`, `best` and `list`: what a study looks like right now, read from the storage."""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from hpsearch import study as study_mod
from hpsearch.storage import mask, open_storage, resolve_url

STATES = ("complete", "pruned", "failed", "running", "waiting")


def _open(name: str, storage: str | None) -> tuple[optuna.Study, Any]:
    st = open_storage(storage)
    study = study_mod.load(name, st)
    try:
        spec = study_mod.stored_spec(study)
    except Exception:  # noqa: BLE001 - plain Optuna studies still get a status
        spec = None
    return study, spec


def snapshot(name: str, storage: str | None) -> dict[str, Any]:
    study, spec = _open(name, storage)
    trials = study.get_trials(deepcopy=False)
    counts: Counter[str] = Counter()
    for t in trials:
        counts["failed" if t.state == TrialState.FAIL else t.state.name.lower()] += 1
    created = study.user_attrs.get(study_mod.CREATED_ATTR)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    elapsed = time.time() - created if created else (
        (max(t.datetime_complete or t.datetime_start for t in trials if t.datetime_start) - min(starts)).total_seconds()
        if starts else 0.0)
    finished = counts["complete"] + counts["pruned"] + counts["failed"]
    best = _best_trial(study)
    gpu_s = sum(float(t.user_attrs.get("duration_s", 0) or 0) for t in trials
                if str(t.user_attrs.get("device", "")).startswith("cuda"))
    workers = Counter(str(t.user_attrs.get(study_mod.WORKER)) for t in trials if t.state == TrialState.RUNNING)
    retried = sum(1 for t in trials if study_mod.RETRY_OF in t.user_attrs and t.state != TrialState.WAITING)
    return {
        "study": study, "spec": spec, "counts": counts, "elapsed": elapsed, "finished": finished,
        "per_hour": finished / (elapsed / 3600) if elapsed > 0 else 0.0, "best": best, "n": len(trials),
        "planned": study.user_attrs.get(study_mod.PLANNED_ATTR), "gpu_hours": gpu_s / 3600,
        "workers": workers, "retried": retried,
    }


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def render_status(snap: dict[str, Any]) -> Table:
    study, spec, c = snap["study"], snap["spec"], snap["counts"]
    table = Table(title=f"study {study.study_name}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    if spec is not None:
        table.add_row("search", f"{spec.sampler['name']} sampler, {spec.pruner['name']} pruner, "
                      f"{spec.direction} {spec.metric}, repeats {spec.repeats}")
    table.add_row("trials", "  ".join(f"{k} {c.get(k, 0)}" for k in STATES) + f"  (total {snap['n']})")
    remaining = c.get("waiting", 0) + c.get("running", 0)
    table.add_row("progress", f"{snap['finished']} finished, {remaining} to go")
    table.add_row("elapsed", _fmt_time(snap["elapsed"]))
    table.add_row("throughput", f"{snap['per_hour']:.1f} trials/hour")
    if remaining and snap["per_hour"] > 0:
        table.add_row("eta", _fmt_time(remaining / snap["per_hour"] * 3600))
    if snap["gpu_hours"]:
        table.add_row("gpu-hours", f"{snap['gpu_hours']:.2f}")
    if snap["retried"]:
        table.add_row("retries", f"{snap['retried']} trials re-queued after a dead or preempted worker")
    if snap["workers"]:
        table.add_row("workers", ", ".join(f"{w} ({n})" for w, n in snap["workers"].items()))
    best = snap["best"]
    if best is not None:
        metric = spec.metric if spec else "value"
        extra = best.user_attrs.get("test_acc")
        test = f", test_acc {extra:.4f}" if isinstance(extra, float) else ""
        table.add_row("best", f"{metric} {best.value:.4f} (trial {best.number}{test})")
        table.add_row("params", ", ".join(f"{k}={_v(v)}" for k, v in best.params.items()) or "-")
    else:
        table.add_row("best", "no complete trial yet")
    return table


def _v(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def print_status(name: str, storage: str | None) -> None:
    Console().print(render_status(snapshot(name, storage)))


def watch(name: str, storage: str | None, interval: float) -> int:
    from rich.live import Live

    with Live(render_status(snapshot(name, storage)), refresh_per_second=4) as live:
        while True:
            time.sleep(interval)
            snap = snapshot(name, storage)
            live.update(render_status(snap))
            c = snap["counts"]
            if c.get("waiting", 0) + c.get("running", 0) == 0 and snap["n"]:
                return 0


def rows_by_config(study: optuna.Study) -> list[dict[str, Any]]:
    """Complete trials grouped by configuration (repeats over seeds): mean and spread per group."""
    groups: dict[str, list[FrozenTrial]] = defaultdict(list)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        groups[t.user_attrs.get(study_mod.CONFIG_ID) or str(sorted(t.params.items()))].append(t)
    rows = []
    for cid, ts in groups.items():
        vals = [t.value for t in ts if t.value is not None]
        tests = [t.user_attrs["test_acc"] for t in ts if isinstance(t.user_attrs.get("test_acc"), (int, float))]
        vaccs = [t.user_attrs["val_acc"] for t in ts if isinstance(t.user_attrs.get("val_acc"), (int, float))]
        rows.append({
            "config_id": cid, "params": ts[0].params, "n": len(ts), "trials": [t.number for t in ts],
            "value": statistics.fmean(vals) if vals else float("nan"),
            "value_sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "val_acc": statistics.fmean(vaccs) if vaccs else None,
            "test_acc": statistics.fmean(tests) if tests else None,
        })
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    rows.sort(key=lambda r: r["value"], reverse=maximize)
    return rows


def print_best(name: str, storage: str | None, top: int) -> None:
    study, spec = _open(name, storage)
    rows = rows_by_config(study)
    console = Console()
    if not rows:
        console.print(f"study {name}: no complete trial yet")
        return
    metric = spec.metric if spec else "value"
    table = Table(title=f"best configurations of {name} ({'max' if study.direction.name == 'MAXIMIZE' else 'min'}imize {metric})")
    for col in ("rank", metric, "seeds", "val_acc", "test_acc", "trials", "parameters"):
        table.add_column(col, justify="right" if col not in ("parameters", "trials") else "left")
    for i, r in enumerate(rows[:top], 1):
        value = f"{r['value']:.4f}" + (f" ± {r['value_sd']:.4f}" if r["n"] > 1 else "")
        table.add_row(
            str(i), value, str(r["n"]),
            f"{r['val_acc']:.4f}" if r["val_acc"] is not None else "-",
            f"{r['test_acc']:.4f}" if r["test_acc"] is not None else "-",
            ",".join(map(str, r["trials"][:6])) + ("…" if len(r["trials"]) > 6 else ""),
            ", ".join(f"{k}={_v(v)}" for k, v in r["params"].items()) or "-",
        )
    console.print(table)


def print_list(storage: str | None) -> None:
    url = resolve_url(storage)
    st = open_storage(url)
    studies = optuna.get_all_study_summaries(st, include_best_trial=True)
    console = Console()
    if not studies:
        console.print(f"no studies in {mask(url)}")
        return
    table = Table(title=f"studies in {mask(url)}")
    for col in ("study", "trials", "direction", "best", "created"):
        table.add_column(col)
    for s in studies:
        best = f"{s.best_trial.value:.4f}" if s.best_trial is not None and s.best_trial.value is not None else "-"
        created = s.datetime_start.strftime("%Y-%m-%d %H:%M") if s.datetime_start else "-"
        table.add_row(s.study_name, str(s.n_trials), s.direction.name.lower(), best, created)
    console.print(table)
