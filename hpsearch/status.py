"""`hpsearch status`, `best` and `list`: what a study looks like right now, read from the storage."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group
from rich.table import Table

from hpsearch import fastread
from hpsearch import study as study_mod
from hpsearch.errors import HpsearchError
from hpsearch.storage import mask, open_storage, resolve_url

STATES = ("complete", "pruned", "failed", "running", "waiting")


def open_study(name: str, storage: str | None) -> tuple[optuna.Study, Any]:
    st = open_storage(storage)
    study = study_mod.load(name, st)
    try:
        spec = study_mod.stored_spec(study)
    except Exception:  # noqa: BLE001 - plain Optuna studies still get a status
        spec = None
    return study, spec


def snapshot(name: str, storage: str | None) -> dict[str, Any]:
    study, spec = open_study(name, storage)
    return snapshot_study(study, spec)


def snapshot_study(study: optuna.Study, spec: Any = None, now: float | None = None) -> dict[str, Any]:
    """Everything `status` shows, gathered in one pass over the trials (rendering is separate)."""
    now = time.time() if now is None else now
    # Only the attributes shown (curves and configs of running trials only): fast at 50k trials.
    trials = fastread.trials(study, keys=[study_mod.WORKER, "device", "duration_s", study_mod.RETRY_OF],
                             running_keys=["curve", "config"])
    attrs = study.user_attrs
    counts: Counter[str] = Counter()
    for t in trials:
        counts["failed" if t.state == TrialState.FAIL else t.state.name.lower()] += 1
    created = attrs.get(study_mod.CREATED_ATTR)
    finished = counts["complete"] + counts["pruned"] + counts["failed"]
    planned, issued = attrs.get(study_mod.PLANNED_ATTR), attrs.get(study_mod.ISSUED_ATTR)
    not_issued = max(0, int(planned) - int(issued)) if planned is not None and issued is not None else 0
    remaining = counts["waiting"] + counts["running"] + not_issued
    # Throughput over the time trials have actually been running, not since the study was created.
    starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start]
    ends = [t.datetime_complete.timestamp() for t in trials if t.datetime_complete]
    active = (now if counts["running"] else max(ends, default=now)) - min(starts, default=now)
    per_hour = finished / (active / 3600) if active > 0 and finished else 0.0
    workers, gpu_s = _workers(trials, spec, now)
    return {
        "study": study, "spec": spec, "counts": counts, "n": len(trials), "finished": finished,
        "elapsed": now - float(created) if created else active, "active": active, "per_hour": per_hour,
        "planned": planned, "issued": issued, "remaining": remaining,
        "eta": remaining / per_hour * 3600 if remaining and per_hour > 0 else None,
        "best": _best_trial(study), "gpu_hours": gpu_s / 3600, "workers": workers,
        "retried": sum(1 for t in trials if study_mod.RETRY_OF in t.user_attrs and t.state != TrialState.WAITING),
    }


def _workers(trials: list[FrozenTrial], spec: Any, now: float) -> tuple[dict[str, dict[str, Any]], float]:
    """Per worker: its running trial and epoch, trials finished, last finish; and GPU-seconds used."""
    workers: dict[str, dict[str, Any]] = {}
    gpu_s = 0.0
    default_epochs = (spec.train.get("epochs") if spec is not None else None) or None
    for t in trials:
        wid = t.user_attrs.get(study_mod.WORKER)
        if wid is None or t.datetime_start is None:
            continue
        w = workers.setdefault(str(wid), {"running": None, "epoch": None, "epochs": None, "done": 0,
                                          "last": None, "device": None, "since": None})
        device = t.user_attrs.get("device")
        if device:
            w["device"] = str(device)
        start = t.datetime_start.timestamp()
        if t.state == TrialState.RUNNING:
            curve = t.user_attrs.get("curve") or []
            w.update(running=t.number, since=start, epoch=len(curve) if curve else None,
                     epochs=(t.user_attrs.get("config") or {}).get("epochs") or default_epochs)
            continue
        if t.datetime_complete is not None:
            end = t.datetime_complete.timestamp()
            w["done"] += 1
            w["last"] = max(w["last"] or 0.0, end)
            if str(device or "").startswith("cuda"):
                gpu_s += float(t.user_attrs.get("duration_s") or end - start)
    for w in workers.values():  # a running trial uses the GPU its worker used for earlier trials
        if w["running"] is not None and str(w["device"] or "").startswith("cuda"):
            gpu_s += now - w["since"]
    return workers, gpu_s


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def render_status(snap: dict[str, Any], max_workers: int = 20) -> Group:
    """The summary table and, when workers are known, a per-worker activity table."""
    parts: list[Any] = [_summary_table(snap)]
    if snap["workers"]:
        parts.append(_workers_table(snap, max_workers))
    return Group(*parts)


def _summary_table(snap: dict[str, Any]) -> Table:
    study, spec, c = snap["study"], snap["spec"], snap["counts"]
    table = Table(title=f"study {study.study_name}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    if spec is not None:
        table.add_row("search", f"{spec.sampler['name']} sampler, {spec.pruner['name']} pruner, "
                      f"{spec.direction} {spec.metric}, repeats {spec.repeats}")
    table.add_row("trials", "  ".join(f"{k} {c.get(k, 0)}" for k in STATES) + f"  (total {snap['n']})")
    planned = f" of {snap['planned']} planned" if snap["planned"] is not None else ""
    table.add_row("progress", f"{snap['finished']} finished{planned}, {snap['remaining']} to go")
    table.add_row("elapsed", _fmt_time(snap["elapsed"]))
    table.add_row("throughput", f"{snap['per_hour']:.1f} trials/hour")
    if snap["eta"] is not None:
        exact = spec is not None and spec.is_grid
        table.add_row("eta", _fmt_time(snap["eta"]) + ("" if exact else " (budget; pruning shortens it)"))
    if snap["gpu_hours"]:
        table.add_row("gpu-hours", f"{snap['gpu_hours']:.2f}")
    if snap["retried"]:
        table.add_row("retries", f"{snap['retried']} trials re-queued after a dead or preempted worker")
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


def _workers_table(snap: dict[str, Any], limit: int) -> Table:
    now = time.time()
    rows = sorted(snap["workers"].items(), key=lambda kv: (kv[1]["running"] is None, kv[0]))
    busy = sum(1 for _, w in rows if w["running"] is not None)
    table = Table(title=f"workers ({busy} busy, {len(rows)} seen)", box=None)
    for col in ("worker", "now", "trials done", "last finished", "device"):
        table.add_column(col)
    for wid, w in rows[:limit]:
        if w["running"] is not None:
            epoch = f", epoch {w['epoch']}/{w['epochs'] or '?'}" if w["epoch"] is not None else ""
            doing = f"trial {w['running']}{epoch} ({_fmt_time(now - w['since'])})"
        else:
            doing = "-"
        last = f"{_fmt_time(now - w['last'])} ago" if w["last"] else "-"
        table.add_row(wid, doing, str(w["done"]), last, w["device"] or "-")
    if len(rows) > limit:
        table.add_row(f"... {len(rows) - limit} more", "", "", "", "")
    return table


def _v(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def print_status(name: str, storage: str | None) -> None:
    Console().print(render_status(snapshot(name, storage)))


def watch(name: str, storage: str | None, interval: float) -> int:
    """A live table until the study is done (nothing waits, runs or remains to be issued) or Ctrl-C."""
    from rich.live import Live

    if interval <= 0:
        raise HpsearchError(f"--interval must be > 0, but got interval={interval}")
    study, spec = open_study(name, storage)  # opened once: the journal is replayed incrementally
    snap = snapshot_study(study, spec)
    try:
        with Live(render_status(snap), refresh_per_second=4) as live:
            while not _done(snap):
                time.sleep(interval)
                snap = snapshot_study(study, spec)
                live.update(render_status(snap))
    except KeyboardInterrupt:
        pass  # leaving the view is the normal way out
    return 0


def _done(snap: dict[str, Any]) -> bool:
    return bool(snap["n"]) and snap["remaining"] == 0


def _console() -> Console:
    # Piped output (logs, CI, `make demo | tee`) gets a wide table instead of rich's 80 columns.
    import sys

    return Console() if sys.stdout.isatty() else Console(width=160)


def print_best(name: str, storage: str | None, top: int, level: float = 0.9) -> None:
    from hpsearch.report_stats import summarize

    study, spec = open_study(name, storage)
    complete = fastread.trials(study, keys=[study_mod.CONFIG_ID, "name", "test_acc", "val_acc", "val_loss",
                                            study_mod.SEED], states=(TrialState.COMPLETE,), with_params=True)
    # The same grouping and ranking as the report's table, so `best` and `report` agree.
    rows = summarize(complete, study.direction == optuna.study.StudyDirection.MAXIMIZE, level)
    console = _console()
    if not rows:
        console.print(f"study {name}: no complete trial yet")
        return
    metric = spec.metric if spec else "value"
    extra = [m for m in ("val_acc", "test_acc") if m != metric]  # the metric column already shows val_acc
    table = Table(title=f"best configurations of {name} ({'max' if study.direction.name == 'MAXIMIZE' else 'min'}imize "
                        f"{metric}, mean ± {level:.0%} t-interval over seeds)")
    for col in ("rank", metric, "seeds", *extra, "trials", "parameters"):
        table.add_column(col, justify="right" if col not in ("parameters", "trials") else "left")
    for r in rows[:top]:
        cells = [r.metrics[m].text() if r.metrics.get(m) is not None else "-" for m in extra]
        table.add_row(
            str(r.rank), r.value.text(), str(r.value.n), *cells,
            ",".join(map(str, r.trials[:6])) + ("…" if len(r.trials) > 6 else ""),
            ", ".join(f"{k}={_v(v)}" for k, v in r.params.items()) or "-",
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
        # Other tools' multi-objective studies may share the storage: list them, do not fail on them.
        direction = ", ".join(d.name.lower() for d in s.directions)
        table.add_row(s.study_name, str(s.n_trials), direction, best, created)
    console.print(table)
