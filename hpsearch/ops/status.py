"""`hpsearch status` and `list`: what a study looks like right now, read from the storage.

One unit everywhere: trials. Every seed of a configuration, every `hpsearch repeat` seed and every
retry of a trial handed back by a dead or preempted worker is one trial, so "finished of planned"
and "to go" always add up (planned = finished + to go). A sampled (random/TPE) study's budget
counts configurations, whose other seeds are queued only when the first completes: its "to go"
is then an upper bound and says so.

Running trials whose heartbeat is older than the reaper's grace (1.5 intervals, hpsearch.queue.faults)
are shown as stale: their worker is presumed dead. Trials a worker handed back on preemption
are counted as "handed back", not failed (their retry is queued). The ETA comes from the recent
throughput (the last 20 finished trials, or the last 10 minutes when more finished in them, per
hour of busy time), not from the study's whole life with its idle spells.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group
from rich.table import Table

from hpsearch import schema
from hpsearch.errors import HpsearchError
from hpsearch.queue import control
from hpsearch.queue import study as study_mod
from hpsearch.report.cost import last_alive
from hpsearch.report.snapshot import open_study
from hpsearch.storage import bulk
from hpsearch.storage.backend import mask, open_storage, resolve_url
from hpsearch.storage.bulk import trial_id

STATES = ("complete", "pruned", "failed", "handed back", "running", "waiting")
RECENT_TRIALS = 20  # the ETA's throughput: at least the last 20 finished trials ...
RECENT_SECONDS = 600.0  # ... or all of the last 10 minutes when more than 20 finished in them
HANDED_BACK = "preempted"  # how the worker's fail_reason of a hand-back starts
MAX_REASONS = 5  # distinct failure reasons shown in the table (--json has them all)


def snapshot(name: str, storage: str | None) -> dict[str, Any]:
    study, spec = open_study(name, storage)
    return snapshot_study(study, spec)


def state_of(trial: Any) -> str:
    """The state as `status` counts it: a failed trial handed back on preemption is not a failure."""
    if trial.state == TrialState.FAIL:
        reason = str(trial.user_attrs.get(schema.FAIL_REASON) or "")
        return "handed back" if reason.startswith(HANDED_BACK) else "failed"
    return trial.state.name.lower()


def snapshot_study(study: optuna.Study, spec: Any = None, now: float | None = None) -> dict[str, Any]:
    """Everything `status` shows, gathered in one pass over the trials (rendering is separate)."""
    now = time.time() if now is None else now
    # Only the attributes shown (curves and configs of running trials only): fast at 50k trials.
    trials = bulk.trials(study, keys=[schema.WORKER, schema.DEVICE, schema.DURATION_S, schema.RETRY_OF,
                                          schema.FAIL_REASON, schema.REPEAT_OF],
                             running_keys=[schema.CURVE, schema.CONFIG])
    attrs = study.user_attrs
    counts, finished, plan, issued, remaining, more_seeds = progress(trials, attrs, spec)
    created = attrs.get(schema.CREATED_ATTR)
    stale = stale_trials(study, trials)
    per_hour, window_n, window_s = recent_throughput(trials, now, stale)
    starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start]
    ends = [t.datetime_complete.timestamp() for t in trials if t.datetime_complete]
    stopped = control.stopped_in(attrs)
    state = study_state(len(trials), remaining, stopped)
    # A finished study's clock stops at its last trial's end, and a stopped one's once its running
    # trials have ended: nothing is being spent after it (a stop before any trial: the stop's time).
    idle = state == "done" or (state == "stopped" and not counts["running"])
    until = max(ends, default=created_time(stopped) or now) if idle else now
    active = (now if counts["running"] else max(ends, default=now)) - min(starts, default=now)
    workers, gpu_s = _workers(trials, spec, now, stale)
    return {
        "study": study, "spec": spec, "counts": counts, "n": len(trials), "finished": finished,
        "state": state, "stopped_at": stopped,
        "elapsed": _elapsed(created, until, active), "active": active,
        "per_hour": per_hour, "window_trials": window_n, "window_s": window_s,
        "plan": plan, "issued": issued, "planned": finished + remaining, "remaining": remaining,
        "upper_bound": more_seeds > 0, "stale": stale,
        # Stopped: no worker claims anything until `hpsearch resume`, so no time of arrival.
        "eta": remaining / per_hour * 3600 if remaining and per_hour > 0 and state != "stopped" else None,
        "best": _best_trial(study), "gpu_hours": gpu_s / 3600, "workers": workers, "failures": failure_reasons(trials),
        "retried": sum(1 for t in trials if schema.RETRY_OF in t.user_attrs and t.state != TrialState.WAITING),
    }


def progress(trials: list[Any], attrs: dict[str, Any], spec: Any) -> tuple[Counter[str], int, Any, Any, int, int]:
    """(counts by state, finished, plan, issued, remaining, seeds to come): the trials that make
    "finished of planned" (planned = finished + remaining), for `status` and `list` alike."""
    counts: Counter[str] = Counter(state_of(t) for t in trials)
    finished = sum(counts[s] for s in ("complete", "pruned", "failed", "handed back"))
    plan, issued = attrs.get(schema.PLANNED_ATTR), attrs.get(schema.ISSUED_ATTR)
    not_issued = max(0, int(plan) - int(issued)) if plan is not None and issued is not None else 0
    more_seeds = _seeds_to_come(trials, spec, not_issued)
    remaining = counts["waiting"] + counts["running"] + not_issued + more_seeds
    return counts, finished, plan, issued, remaining, more_seeds


def study_state(n_trials: int, remaining: int, stopped: str | None) -> str:
    """'done' (trials, and nothing waits, runs or remains to be issued), 'stopped' (`hpsearch stop`
    with work left: workers claim nothing until `hpsearch resume`) or 'active'."""
    if n_trials and remaining == 0:
        return "done"
    return "stopped" if stopped else "active"


def resume_hint(name: str) -> str:
    return f"resume with: hpsearch resume {name}"


def _elapsed(created: Any, until: float, active: float) -> float:
    """From create-study to now, or to the last trial's end once nothing waits or runs."""
    start = created_time(created)
    return active if start is None else max(0.0, until - start)


def created_time(created: Any) -> float | None:
    """The study's creation time (unix seconds) from its stored attribute: create-study writes
    time.time(); an ISO text is read too."""
    if created is None or isinstance(created, bool):
        return None
    if isinstance(created, (int, float)):
        return float(created)
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(created)).timestamp()
    except ValueError:
        return None


def failure_reasons(trials: list[Any]) -> list[tuple[str, int]]:
    """(reason, trials) of failed trials (not handed back), the most frequent first: why they failed."""
    reasons = Counter(str(t.user_attrs.get(schema.FAIL_REASON) or "no reason recorded") for t in trials
                      if state_of(t) == "failed")
    return sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))


def _seeds_to_come(trials: list[Any], spec: Any, not_issued: int) -> int:
    """At most how many seeds sampled configurations still queue: each first seed that may yet
    complete brings repeats - 1 more (a grid queues every seed up front)."""
    if spec is None or spec.is_grid or spec.repeats <= 1:
        return 0
    first_seeds = sum(1 for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)
                      and schema.REPEAT_OF not in t.user_attrs)
    return (first_seeds + not_issued) * (spec.repeats - 1)


def stale_trials(study: optuna.Study, trials: list[Any]) -> dict[int, tuple[float, float]]:
    """Trial number -> (seconds since its heartbeat, the grace it exceeded) of silent running trials.

    The same judgement as the reaper's (hpsearch.queue.faults): a live worker's reaper re-queues them soon;
    with no worker left, they stay running in the storage until one starts.
    """
    from hpsearch.queue import faults

    running = {trial_id(t): t.number for t in trials if t.state == TrialState.RUNNING}
    if not running:
        return {}
    default = float(os.environ.get("HPSEARCH_HEARTBEAT") or 30)
    return {running[tid]: (age, limit) for tid, age, limit in faults.stale_trials(study, default) if tid in running}


def recent_throughput(trials: list[Any], now: float, stale: Iterable[int] = ()) -> tuple[float, int, float]:
    """(trials/hour, trials counted, busy seconds): the pace of the last RECENT_TRIALS finished trials,
    or of all that finished in the last RECENT_SECONDS when they are more.

    Only busy time counts: the union of the counted trials' start-finish spans (and of live running
    trials' spans up to now), so idle spells between runs, and a dead worker's stale trial, are
    not the search's pace. With parallel workers the union is the wall time anyone was busy.
    """
    done = sorted((t for t in trials if t.datetime_complete is not None and t.state.is_finished()),
                  key=lambda t: t.datetime_complete)
    if not done:
        return 0.0, 0, 0.0
    latest = [t for t in done if t.datetime_complete.timestamp() >= now - RECENT_SECONDS]
    counted = latest if len(latest) > RECENT_TRIALS else done[-RECENT_TRIALS:]
    spans = [_span(t, last_alive(t)) for t in counted]
    floor = now - RECENT_SECONDS if counted is latest else min(start for start, _ in spans)
    dead = set(stale)
    spans += [_span(t, now) for t in trials if t.state == TrialState.RUNNING and t.number not in dead
              and t.datetime_start is not None]
    busy, reach = 0.0, floor
    for start, end in sorted((max(a, floor), b) for a, b in spans):
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return (len(counted) / busy * 3600 if busy > 0 else 0.0), len(counted), busy


def _span(trial: Any, end: float) -> tuple[float, float]:
    return (trial.datetime_start.timestamp() if trial.datetime_start else end), end


def _workers(trials: list[Any], spec: Any, now: float,
             stale: dict[int, tuple[float, float]]) -> tuple[dict[str, dict[str, Any]], float]:
    """Per worker: its running trial and epoch, trials finished, last finish; and GPU-seconds used."""
    workers: dict[str, dict[str, Any]] = {}
    gpu_s = 0.0
    default_epochs = (spec.train.get("epochs") if spec is not None else None) or None
    for t in trials:
        wid = t.user_attrs.get(schema.WORKER)
        if wid is None or t.datetime_start is None:
            continue
        w = workers.setdefault(str(wid), {"running": None, "epoch": None, "epochs": None, "done": 0,
                                          "last": None, "device": None, "since": None, "stale": None})
        device = t.user_attrs.get(schema.DEVICE)
        if device:
            w["device"] = str(device)
        start = t.datetime_start.timestamp()
        if t.state == TrialState.RUNNING:
            curve = t.user_attrs.get(schema.CURVE) or []
            w.update(running=t.number, since=start, epoch=len(curve) if curve else None,
                     epochs=(t.user_attrs.get(schema.CONFIG) or {}).get("epochs") or default_epochs,
                     stale=stale.get(t.number))
            continue
        if t.datetime_complete is not None:
            end = last_alive(t)
            w["done"] += 1
            w["last"] = max(w["last"] or 0.0, end)
            if str(device or "").startswith("cuda"):
                gpu_s += float(t.user_attrs.get(schema.DURATION_S) or end - start)
    for w in workers.values():  # a running trial uses the GPU its worker used for earlier trials
        if w["running"] is not None and w["stale"] is None and str(w["device"] or "").startswith("cuda"):
            gpu_s += now - w["since"]
    return workers, gpu_s


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except (ValueError, RuntimeError):  # none yet (or none feasible); several objectives have no single best
        return None


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# ---------------------------------------------------------------- rendering


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
        goals = ", ".join(f"{d} {m}" for m, d in zip(spec.metrics, spec.directions, strict=True))
        table.add_row("search", f"{spec.sampler['name']} sampler, {spec.pruner['name']} pruner, "
                      f"{goals}, {spec.repeats} seed(s) per configuration")
        table.add_row("plan", _plan_text(snap))
    table.add_row("state", _state_text(snap))
    stale = f" ({len(snap['stale'])} stale)" if snap["stale"] else ""
    table.add_row("trials", "  ".join(f"{k} {c.get(k, 0)}" + (stale if k == "running" else "") for k in STATES)
                  + f"  (total {snap['n']})")
    bound = "at most " if snap["upper_bound"] else ""
    table.add_row("progress", f"{snap['finished']} finished of {bound}{snap['planned']} planned, {bound}"
                  f"{snap['remaining']} to go (trials: each seed, repeat and retry is one)")
    table.add_row("elapsed", _fmt_time(snap["elapsed"]))
    if snap["window_trials"]:
        table.add_row("throughput", f"{snap['per_hour']:.1f} trials/hour over the last {snap['window_trials']} "
                      f"finished trials ({_fmt_time(snap['window_s'])} busy)")
    else:
        table.add_row("throughput", "no finished trial yet")
    if snap["eta"] is not None:
        notes = []
        if snap["upper_bound"]:
            notes.append("at most: a pruned or failed first seed queues no more seeds")
        if c.get("running", 0) <= len(snap["stale"]):
            notes.append("at the recent pace, once a worker runs: none is running now")
        table.add_row("eta", _fmt_time(snap["eta"]) + (f" ({'; '.join(notes)})" if notes else ""))
    elif snap["state"] == "stopped":
        table.add_row("eta", f"none while stopped ({resume_hint(study.study_name)})")
    for number, (age, limit) in sorted(snap["stale"].items()):
        table.add_row("stale", f"trial {number}: no heartbeat for {_fmt_time(age)} (limit {limit:.0f}s): its worker "
                      "is presumed dead; a running worker re-queues it")
    for reason, n in snap["failures"][:MAX_REASONS]:
        table.add_row("failed", f"{n} × {reason}")
    if len(snap["failures"]) > MAX_REASONS:
        table.add_row("failed", f"... {len(snap['failures']) - MAX_REASONS} other reasons (`hpsearch export` lists each)")
    if snap["gpu_hours"]:
        table.add_row("gpu-hours", f"{snap['gpu_hours']:.2f}")
    if snap["retried"]:
        table.add_row("retries", f"{snap['retried']} trials re-queued after a dead or preempted worker")
    best = snap["best"]
    if best is not None:
        metric = spec.metric if spec else "value"
        extra = best.user_attrs.get(schema.TEST_ACC)
        test = f", test_acc {extra:.4f}" if isinstance(extra, float) else ""
        table.add_row("best trial", f"{metric} {best.value:.4f} (trial {best.number}{test}; "
                      "`hpsearch best` ranks configurations over seeds)")
        table.add_row("params", ", ".join(f"{k}={_v(v)}" for k, v in best.params.items()) or "-")
    elif len(study.directions) > 1:
        table.add_row("best", "several objectives: `hpsearch best` shows the Pareto-optimal configurations")
    else:
        table.add_row("best trial", "no complete trial yet")
    return table


def _state_text(snap: dict[str, Any]) -> str:
    if snap["state"] == "done":
        return "done: nothing waits, runs or remains to be issued"
    if snap["state"] == "active":
        return "active: workers claim the trials to go"
    running = snap["counts"].get("running", 0)
    ending = f"; its {running} running trial{'s' if running != 1 else ''} finish first" if running else ""
    return (f"STOPPED since {snap['stopped_at']} (hpsearch stop): workers claim nothing more{ending}; "
            f"{'at most ' if snap['upper_bound'] else ''}{snap['remaining'] - running} to go stay queued; "
            f"{resume_hint(snap['study'].study_name)}")


def _plan_text(snap: dict[str, Any]) -> str:
    spec, plan = snap["spec"], snap["plan"]
    if plan is None:
        return "-"
    if spec.is_grid:
        return f"{plan} trials ({int(plan) // spec.repeats} grid points x {spec.repeats} seed(s))"
    seeds = f"; each one that completes queues {spec.repeats - 1} more seed(s)" if spec.repeats > 1 else ""
    return f"budget {plan} configurations (one trial each{seeds})"


def _workers_table(snap: dict[str, Any], limit: int) -> Table:
    now = time.time()
    rows = sorted(snap["workers"].items(), key=lambda kv: (kv[1]["running"] is None, kv[0]))
    busy = sum(1 for _, w in rows if w["running"] is not None and w["stale"] is None)
    gone = sum(1 for _, w in rows if w["stale"] is not None)
    table = Table(title=f"workers ({busy} busy, {len(rows)} seen" + (f", {gone} silent" if gone else "") + ")",
                  box=None)
    for col in ("worker", "now", "trials done", "last finished", "device"):
        table.add_column(col)
    for wid, w in rows[:limit]:
        if w["running"] is not None:
            epoch = f", epoch {w['epoch']}/{w['epochs'] or '?'}" if w["epoch"] is not None else ""
            doing = f"trial {w['running']}{epoch} ({_fmt_time(now - w['since'])})"
            if w["stale"] is not None:
                doing += f" STALE: no heartbeat for {_fmt_time(w['stale'][0])}"
        else:
            doing = "-"
        last = f"{_fmt_time(now - w['last'])} ago" if w["last"] else "-"
        table.add_row(wid, doing, str(w["done"]), last, w["device"] or "-")
    if len(rows) > limit:
        table.add_row(f"... {len(rows) - limit} more", "", "", "", "")
    return table


def _v(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------- --json


def status_record(snap: dict[str, Any]) -> dict[str, Any]:
    """`status --json`: plain data with stable keys (documented in the README)."""
    spec, c, best = snap["spec"], snap["counts"], snap["best"]
    return {
        "study": snap["study"].study_name,
        "state": snap["state"], "stopped_at": snap["stopped_at"],
        "resume": f"hpsearch resume {snap['study'].study_name}" if snap["state"] == "stopped" else None,
        "metric": spec.metric if spec is not None else "value",
        "direction": snap["study"].directions[0].name.lower(),  # the first objective's
        "directions": [d.name.lower() for d in snap["study"].directions],
        "trials": {**{k.replace(" ", "_"): c.get(k, 0) for k in STATES}, "stale": len(snap["stale"]),
                   "total": snap["n"]},
        "progress": {"unit": "trials", "finished": snap["finished"], "planned": snap["planned"],
                     "to_go": snap["remaining"], "upper_bound": snap["upper_bound"]},
        "plan": {"unit": "trials" if spec is None or spec.is_grid else "configurations", "size": snap["plan"],
                 "seeds_per_configuration": spec.repeats if spec is not None else None},
        "throughput": {"trials_per_hour": snap["per_hour"], "window_trials": snap["window_trials"],
                       "busy_seconds": snap["window_s"]},
        "eta_seconds": snap["eta"], "elapsed_seconds": snap["elapsed"], "gpu_hours": snap["gpu_hours"],
        "retried": snap["retried"],
        "failures": [{"reason": reason, "trials": n} for reason, n in snap["failures"]],
        "stale": [{"trial": n, "heartbeat_age_seconds": age, "limit_seconds": limit}
                  for n, (age, limit) in sorted(snap["stale"].items())],
        "best_trial": None if best is None else {"number": best.number, "value": best.value,
                                                 "params": best.params, "test_acc": best.user_attrs.get(schema.TEST_ACC)},
        "workers": [{"worker": wid, "running_trial": w["running"], "epoch": w["epoch"], "epochs": w["epochs"],
                     "stale": w["stale"] is not None, "trials_done": w["done"], "last_finished": w["last"],
                     "device": w["device"]} for wid, w in sorted(snap["workers"].items())],
    }


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")


def print_status(name: str, storage: str | None, as_json: bool = False) -> None:
    snap = snapshot(name, storage)
    if as_json:
        _print_json(status_record(snap))
        return
    Console().print(render_status(snap))


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
    """Nothing will change: the study is done, or stopped with nothing left running."""
    return snap["state"] == "done" or (snap["state"] == "stopped" and not snap["counts"].get("running", 0))


def list_record(summary: Any, storage: Any) -> dict[str, Any]:
    """One study of `list`: trials done of planned (as `status` counts them), the best configuration
    as `best` ranks it (the mean over its complete seeds, not one lucky seed), and when
    create-study stored it (plain Optuna studies: their first trial's start)."""
    from hpsearch.report import front
    from hpsearch.report.export import METRICS
    from hpsearch.report.stats import rank

    study = optuna.Study(study_name=summary.study_name, storage=storage)
    attrs = dict(summary.user_attrs)
    try:
        spec = study_mod.stored_spec(study) if schema.SPEC_ATTR in attrs else None
    except HpsearchError:  # a study whose spec no longer reads is still listed (status names the problem)
        spec = None
    # Ranked as `best` ranks (constraints: feasible first; several objectives: by Pareto front).
    goals = front.goals_of(study, spec) if spec is not None or len(summary.directions) == 1 else None
    trials = bulk.trials(study, keys=[schema.CONFIG_ID, schema.NAME, schema.SEED, schema.RETRY_OF,
                                      schema.REPEAT_OF, schema.FAIL_REASON, schema.IS_REPEAT, *METRICS,
                                      *(goals.keys() if goals is not None else ())],
                         with_params=goals is not None)
    _, finished, _, _, remaining, more_seeds = progress(trials, attrs, spec)
    stopped = control.stopped_in(attrs)
    best, pareto = None, None
    rows = rank(trials, goals) if goals is not None else []
    if rows and goals is not None and goals.multi:
        pareto = sum(1 for r in rows if r.rank == 1)
    elif rows:
        top = rows[0]
        best = {"mean": top.value.mean, "seeds": top.value.n, "name": top.name, "config_id": top.config_id,
                "clean": top.clean, "feasible": top.feasible, "seed_runs": top.runs.as_dict()}
    created = created_time(attrs.get(schema.CREATED_ATTR))
    if created is None and summary.datetime_start is not None:
        created = summary.datetime_start.timestamp()
    return {
        "study": summary.study_name, "state": study_state(len(trials), remaining, stopped), "stopped_at": stopped,
        "trials": len(trials), "finished": finished,
        "planned": finished + remaining, "planned_upper_bound": more_seeds > 0,
        # Other tools' multi-objective studies may share the storage: list them, do not fail on them.
        "directions": [d.name.lower() for d in summary.directions],
        "best_value": best["mean"] if best else None, "best_configuration": best, "pareto_front": pareto,
        "created": datetime.fromtimestamp(created, UTC).isoformat() if created is not None else None,
    }


def print_list(storage: str | None, as_json: bool = False) -> None:
    url = resolve_url(storage)
    st = open_storage(url)
    records = [list_record(s, st) for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
    if as_json:
        _print_json(records)
        return
    # Piped output (logs, scripts) gets a wide table instead of rich's 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    if not records:
        console.print(f"no studies in {mask(url)}")
        return
    table = Table(title=f"studies in {mask(url)}")
    for col in ("study", "state", "trials done/planned", "direction", "best configuration (mean of its seeds)",
                "created"):
        table.add_column(col)
    for r in records:
        bound = "at most " if r["planned_upper_bound"] else ""
        created = datetime.fromisoformat(r["created"]).strftime("%Y-%m-%d %H:%M UTC") if r["created"] else "-"
        table.add_row(r["study"], r["state"], f"{r['finished']}/{bound}{r['planned']}", ", ".join(r["directions"]),
                      _best_text(r["best_configuration"], r["pareto_front"]), created)
    console.print(table)
    for r in records:  # what to type, under the table (a cell would wrap it)
        if r["state"] == "stopped":
            console.print(f"{r['study']}: stopped since {r['stopped_at']}; {resume_hint(r['study'])}",
                          highlight=False, soft_wrap=True)


def _best_text(best: dict[str, Any] | None, pareto: int | None = None) -> str:
    if pareto is not None:
        return f"a Pareto front of {pareto} configuration{'s' if pareto != 1 else ''} (`hpsearch best`)"
    if best is None:
        return "-"
    runs = best["seed_runs"]
    flags = ", ".join(f"{runs[k]} {k}" for k in ("pruned", "failed") if runs[k])
    infeasible = "" if best.get("feasible", True) else "; breaks a constraint, as every configuration does"
    return (f"{best['mean']:.4f} ({best['seeds']} seed{'s' if best['seeds'] != 1 else ''}"
            + (f"; {flags}: none clean" if flags else "") + infeasible + ")")
