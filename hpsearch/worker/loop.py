"""The worker: claim -> heartbeat -> train -> tell, until the study is done or a limit is hit.

A worker is stateless: it needs the study name and the storage; the spec comes from the study.
Threads beside the training: a heartbeat for the running trial, and a reaper that fails and
re-queues other workers' trials whose heartbeat stopped (so a dead worker's trial comes back even
when nobody asks for a new trial). SIGTERM/SIGINT hand the running trial back and exit 0.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from hpsearch.errors import HpsearchError, Preempted, StorageUnavailable
from hpsearch.queue import study as study_mod
from hpsearch.queue.faults import Heartbeat, Reaper, StudyLock, fail_and_requeue, sweep_orphans
from hpsearch.search.samplers import build_pruner, build_sampler
from hpsearch.spec.parse import StudySpec
from hpsearch.storage.backend import mask, open_storage, resolve_url

log = logging.getLogger("hpsearch.worker")
_STOP = threading.Event()


def should_stop() -> bool:
    """For user objectives: True once the worker was asked to stop (preemption, Ctrl-C)."""
    return _STOP.is_set()


@dataclass
class Options:
    study: str
    storage: str | None = None
    n_trials: int | None = None
    timeout: float | None = None
    device: str = "auto"
    heartbeat: int = 30
    max_failures: int = 5
    seed: int | None = None
    stop_timeout: float = 60.0
    checkpoint_every: float = 30.0
    quiet: bool = False
    tracking: dict[str, Any] = field(default_factory=dict)
    fuse: int | None = None  # trials trained as one fused model (None: $HPSEARCH_FUSE, the spec, the default)


@dataclass
class Summary:
    states: Counter[str] = field(default_factory=Counter)
    reason: str = ""
    started: float = field(default_factory=time.monotonic)

    def line(self, wid: str) -> str:
        n = sum(self.states.values())
        parts = ", ".join(f"{v} {k}" for k, v in sorted(self.states.items())) or "none"
        secs = int(time.monotonic() - self.started)
        return f"worker {wid}: {n} trials ({parts}) in {secs // 60}m{secs % 60:02d}s; {self.reason}"


def pick_device(name: str) -> Any:
    import torch

    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        from hpsearch.worker.gpus import claim_free_gpu

        return torch.device(f"cuda:{claim_free_gpu(torch.cuda.device_count())}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HpsearchError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise HpsearchError(f"--device must be auto, cpu or cuda:K, but got {name!r}") from None


def run_worker(opts: Options) -> int:
    url = resolve_url(opts.storage)
    wid = study_mod.worker_id()
    say = lambda msg: print(msg, flush=True)  # noqa: E731
    out = (lambda msg: None) if opts.quiet else say

    # --- connect and read the spec from the study ----------------------------------------
    storage = open_storage(url, heartbeat=opts.heartbeat)
    probe = study_mod.load(opts.study, storage)
    spec = study_mod.stored_spec(probe)
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(2**31)
    sampler = build_sampler(spec.sampler, seed)  # a different seed per worker
    pruner = build_pruner(spec.pruner, int(spec.train.get("epochs", 0) or 0) or None)
    study = study_mod.load(opts.study, storage, sampler=sampler, pruner=pruner)
    study_mod.ensure_ready(study, spec)  # a half-created study is finished, never taken for done
    study_mod.max_retries()  # a bad HPSEARCH_MAX_RETRIES is one line now, not a warning per reap later
    created = float(study.user_attrs.get(study_mod.CREATED_ATTR, time.time()))
    deadline = created + spec.wall_clock if spec.wall_clock else None
    my_deadline = time.monotonic() + opts.timeout if opts.timeout else None

    ctx = _context(spec, opts, url, out, study.user_attrs.get(study_mod.ARTIFACTS_ATTR))
    fuse = None  # user objectives run one trial at a time
    if spec.objective is not None:
        # A plugin that does not import would fail every trial it is given: stop before claiming.
        from hpsearch.registry import load_plugin

        load_plugin(spec.objective, "objective")
    else:
        # Load the data before claiming anything: missing files are one clear error, not a
        # queue of failed trials (and the worker reuses it for every trial it runs).
        from hpsearch.training.data import loading as data_mod

        data_mod.load(spec.dataset, ctx["device"])
        fuse = _fusion(spec, opts, ctx["device"], out)
    chunk = study_mod.issue_chunk(storage) or 1
    lock = StudyLock(study, url)
    reaper = Reaper(study, lock, default_interval=opts.heartbeat, log=out)
    if lock.available:  # through the gRPC proxy, its keeper reaps for everyone
        reaper.start()
    _install_signals(opts, out)
    summary = Summary()
    out(f"worker {wid} on study {opts.study!r} ({spec.sampler['name']}, storage {mask(url)}, device {ctx['device']})")

    failures_in_row = 0
    idle_rounds = 0
    try:
        while True:
            # --- limits ---------------------------------------------------------------
            if _STOP.is_set():
                summary.reason = "stopped by signal"
                break
            if opts.n_trials is not None and sum(summary.states.values()) >= opts.n_trials:
                summary.reason = f"--n-trials {opts.n_trials} reached"
                break
            if my_deadline and time.monotonic() > my_deadline:
                summary.reason = f"--timeout {opts.timeout:g}s reached"
                break
            if deadline and time.time() > deadline:
                summary.reason = "the study's wall-clock budget is spent"
                break

            # --- claim --------------------------------------------------------------------
            t_claim = time.perf_counter()
            trial = study_mod.claim(study)
            ctx["claim_s"] = time.perf_counter() - t_claim
            if trial is None:
                if lock.available:
                    # On PostgreSQL every write that moves a trial between states is one transaction
                    # (a failed trial and its retry, an issued chunk and its count), so any reading
                    # is consistent; on the journal the lock file makes it so, and the sweep restores
                    # a retry that a process killed mid-hand-back did not write.
                    with lock:
                        if study_mod.top_up(study, spec, chunk) > 0:
                            continue
                        if lock.path is not None and sweep_orphans(study) > 0:
                            continue
                        waiting, running = study_mod.active_counts(study)
                    unissued = 0
                else:  # through the gRPC proxy: its keeper issues the rest of the plan
                    waiting, running = study_mod.active_counts(study)
                    unissued = study_mod.unissued(study)
                if waiting == 0 and running == 0 and unissued == 0:
                    summary.reason = "study done"
                    break
                # Others still run trials that may come back to the queue: wait, reap, retry.
                # The wait grows while idle, so a crowd of idle workers does not flood the storage.
                idle_rounds += 1
                _STOP.wait(min(8.0, 1.0 + 0.5 * idle_rounds) * (0.5 + random.random()))
                reaper.poke()
                continue
            idle_rounds = 0

            # --- run (alone, or fused with compatible waiting trials) -------------------------
            group = [trial]
            if fuse is not None:
                left = opts.n_trials - sum(summary.states.values()) if opts.n_trials is not None else fuse.k
                group = study_mod.claim_group(study, trial, min(fuse.k, left), fuse.key)
            if len(group) > 1:
                states = fuse.run_group(study, group, spec, ctx, opts, out)
            else:
                states = [_run_one(study, trial, spec, ctx, opts, out)]
            for state in states:
                summary.states[state] += 1
                if state == "failed":
                    failures_in_row += 1
                elif state != "preempted":
                    failures_in_row = 0
            if failures_in_row >= opts.max_failures:
                summary.reason = (f"stopping: {failures_in_row} trials failed in a row on this worker "
                                  "(a broken node or a bug?); see fail_reason of the trials")
                say(summary.line(wid))
                _ignore_signals()
                return 1
    except KeyError:
        _check_study(study)
        raise
    finally:
        reaper.stop()
    say(summary.line(wid))
    _ignore_signals()
    return 0


def _fusion(spec: StudySpec, opts: Options, device: Any, out: Any) -> Any:
    """The built-in trainer's fusion (hpsearch.training.fused.Fusion), or None when it trains one trial at a time."""
    from hpsearch.training import fused

    k = fused.group_size(spec, opts.fuse, device)
    if k <= 1:
        return None
    out(f"fusing up to {k} compatible trials per model (fixed-parameter trials: grid points, seeds, retries)")
    return fused.Fusion(spec, device, k)


def _check_study(study: optuna.Study) -> None:
    """One clear line, not "KeyError: 'Record does not exist.'", when the study went away."""
    try:
        same = study._storage.get_study_id_from_name(study.study_name) == study._study_id
    except KeyError:
        same = False
    if not same:
        raise HpsearchError(f"study {study.study_name!r} was deleted or replaced (create-study --replace) "
                            "while this worker ran; stopping")


def _context(spec: StudySpec, opts: Options, url: str, out: Any, recorded: str | None = None) -> dict[str, Any]:
    from hpsearch.storage.backend import artifact_store

    device = "cpu"
    if spec.objective is None:  # user objectives import torch only if they want to
        device = pick_device(opts.device)
        threads = os.environ.get("HPSEARCH_THREADS")
        if threads:  # set by `launch local` so N workers share the cores instead of oversubscribing
            import torch

            torch.set_num_threads(int(threads))
    # The study records where its checkpoints live, so a retry started elsewhere still finds them.
    return {"device": device, "artifacts": artifact_store(url, recorded), "url": url}


def _install_signals(opts: Options, out: Any) -> None:
    def handler(signum: int, frame: Any) -> None:
        if _STOP.is_set():
            return
        _STOP.set()
        out(f"received {signal.Signals(signum).name}: handing the running trial back and exiting")
        # Bounded exit: if the trial does not reach a stopping point in time, leave anyway;
        # the trial is requeued by the watchdog below or, failing that, by heartbeat.
        timer = threading.Timer(opts.stop_timeout, _hard_exit)
        timer.daemon = True
        timer.start()

    if threading.current_thread() is threading.main_thread():
        # USR1/USR2: what SLURM's --signal (submitit's B:USR2@90) and PBS send before the kill.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, handler)


def _ignore_signals() -> None:
    """The work is handed back or done: a late SIGTERM during interpreter shutdown (which restores
    the default handlers) must not turn exit 0 into 143."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)


_CURRENT: dict[str, Any] = {}


def _hard_exit() -> None:
    for study, trial in list(_CURRENT.values()):  # every member of a fused group
        try:
            fail_and_requeue(study, trial._trial_id, "preempted (stop timeout)")
        except Exception:  # noqa: BLE001 - exiting anyway; heartbeat recovery still applies
            pass
    os._exit(0)


def _run_one(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, ctx: dict[str, Any], opts: Options,
             out: Any) -> str:
    label = f"trial {trial.number}"
    timing = _begin(study, trial, ctx, opts)
    try:
        with Heartbeat(study, trial._trial_id, opts.heartbeat):
            try:
                value = _objective(trial, spec, ctx, opts, lambda msg: out(f"[{label}] {msg}"))
            except BaseException as exc:
                return _ended(study, trial, exc, timing, ctx, out)
            finally:
                _CURRENT.pop(trial._trial_id, None)
        return _completed(study, trial, spec, value, timing, ctx, out)
    except optuna.exceptions.UpdateFinishedTrialError:
        return _dropped(label, out)


def _begin(study: optuna.Study, trial: optuna.Trial, ctx: dict[str, Any], opts: Options) -> Callable[[], dict[str, Any]]:
    """Mark the trial as this worker's; returns its timing attributes, read when it ends."""
    from hpsearch.queue.study import BEAT_INTERVAL, WORKER
    from hpsearch.storage.backend import storage_seconds

    service0 = storage_seconds()
    study_mod.set_user_attrs(trial, {WORKER: study_mod.worker_id(), BEAT_INTERVAL: opts.heartbeat,
                                     "device": str(ctx["device"])})
    _CURRENT[trial._trial_id] = (study, trial)
    t0 = time.monotonic()

    def timing() -> dict[str, Any]:
        # Database time on this trial's critical path (claim, reports, attrs): the service's overhead.
        return {"duration_s": time.monotonic() - t0, "device": str(ctx["device"]),
                "service_s": storage_seconds() - service0 + ctx.get("claim_s", 0.0)}

    return timing


def _ended(study: optuna.Study, trial: optuna.Trial, exc: BaseException, timing: Callable[[], dict[str, Any]],
           ctx: dict[str, Any], out: Any) -> str:
    """A trial whose training raised `exc`: pruned, handed back, dropped or failed (the state's name).
    Re-raises what must stop the worker (the storage gone, an interrupt)."""
    from hpsearch.queue.study import FAIL_REASON

    label = f"trial {trial.number}"
    if isinstance(exc, optuna.TrialPruned):
        study_mod.set_user_attrs(trial, timing())
        if not _tell(study, trial, state=TrialState.PRUNED):
            return _dropped(label, out)
        _discard(ctx, trial)
        out(f"[{label}] {exc or 'pruned'}")
        return "pruned"
    if isinstance(exc, Preempted):
        _CURRENT.pop(trial._trial_id, None)
        if not fail_and_requeue(study, trial._trial_id, f"preempted: {exc}"):
            return _dropped(label, out)
        out(f"[{label}] handed back to the queue ({exc})")
        return "preempted"
    if isinstance(exc, optuna.exceptions.UpdateFinishedTrialError):
        return _dropped(label, out)
    if isinstance(exc, StorageUnavailable):
        raise exc  # the storage itself (a full journal disk): one line; the trial is reaped and retried
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        fail_and_requeue(study, trial._trial_id, f"worker interrupted: {type(exc).__name__}")
        raise exc
    # A trial's failure must not take the worker down.
    reason = _reason(exc)
    divergent = type(exc).__name__ == "Divergent"
    _safe(trial.set_user_attr, FAIL_REASON, reason)
    _safe(trial.set_user_attr, "divergent", divergent)
    _safe(trial.set_user_attr, "traceback", "".join(traceback.format_exception(exc))[-4000:])
    if not _tell(study, trial, state=TrialState.FAIL):
        return _dropped(label, out)
    out(f"[{label}] failed: {reason}")
    return "divergent" if divergent else "failed"


def _completed(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, value: float,
               timing: Callable[[], dict[str, Any]], ctx: dict[str, Any], out: Any) -> str:
    """A trial that trained to the end: its timing, its repeats (once), its value; then its checkpoint goes."""
    label = f"trial {trial.number}"
    try:
        study_mod.set_user_attrs(trial, timing())
        if not _maybe_enqueue_repeats(study, trial, spec) or not _tell(study, trial, value=value):
            return _dropped(label, out)
        _discard(ctx, trial)
    except optuna.exceptions.UpdateFinishedTrialError:
        return _dropped(label, out)
    out(f"[{label}] complete: {spec.metric}={value:.4f} ({timing()['duration_s']:.1f}s)")
    return "complete"


def _discard(ctx: dict[str, Any], trial: optuna.Trial) -> None:
    """A finished trial's checkpoint: no retry will need it, and kept it would fill the disk."""
    if trial.user_attrs.get("checkpoint"):  # only the built-in trainer writes them (torch stays unimported)
        from hpsearch.training.objective import discard_checkpoint

        discard_checkpoint(ctx["artifacts"], trial.user_attrs)


def _dropped(label: str, out: Any) -> str:
    out(f"[{label}] result dropped: another worker took this trial over while it ran (this worker was "
        "presumed dead: no heartbeat reached the storage in time); its retry counts instead")
    return "dropped"


def _objective(trial: optuna.Trial, spec: StudySpec, ctx: dict[str, Any], opts: Options, progress: Any) -> float:
    if spec.objective is not None:
        from hpsearch.registry import load_plugin
        from hpsearch.spec import space as space_mod

        fn = load_plugin(spec.objective, "objective")
        # The space is suggested here, so grid points, conditions and samplers work the same
        # for user objectives; they read trial.params (or suggest more of their own).
        params = space_mod.suggest(trial, spec.space)
        seed = trial.user_attrs.get(study_mod.SEED, spec.seed)
        study_mod.set_user_attrs(trial, {study_mod.CONFIG_ID: space_mod.config_id(params),
                                         "name": space_mod.short_name(params),
                                         "config": {**spec.train, **params, "seed": seed}})
        value = fn(trial, spec.to_dict())
        return float(value)
    from hpsearch.training import objective

    c = _trainer_context(trial, spec, ctx, opts, progress)
    tracker = c.tracker
    try:
        value = objective.run(trial, spec, c)
    except BaseException as exc:
        if tracker is not None:
            tracker.finish_error(exc)
        raise
    if tracker is not None:
        tracker.finish("complete")
    return value


def _trainer_context(trial: optuna.Trial, spec: StudySpec, ctx: dict[str, Any], opts: Options, progress: Any) -> Any:
    """What the built-in trainer gets for one trial (its own W&B run, when tracking is on)."""
    from hpsearch.training import objective

    tracker = None
    if spec.tracking and os.environ.get("HPSEARCH_TRACKING", "on") != "off":
        from hpsearch.training.tracking import start_run

        tracker = start_run(trial, spec, opts.tracking)
    return objective.Context(device=ctx["device"], artifact_store=ctx["artifacts"], should_stop=should_stop,
                             progress=progress, tracker=tracker, checkpoint_every=opts.checkpoint_every,
                             extra={"on_data": lambda d: _record_class_counts(trial.study, d)})


def _record_class_counts(study: optuna.Study, data: Any) -> None:
    if study_mod.CLASS_COUNTS_ATTR not in study.user_attrs:
        _safe(study.set_user_attr, study_mod.CLASS_COUNTS_ATTR, {**data.class_counts(), "classes": data.class_names})


def _maybe_enqueue_repeats(study: optuna.Study, trial: optuna.Trial, spec: StudySpec) -> bool:
    """A sampled configuration that completed gets its other seeds queued (once, even on retry).
    False when the trial is no longer this worker's."""
    attrs = trial.user_attrs
    if spec.is_grid or spec.repeats <= 1 or attrs.get(study_mod.REPEAT_OF) is not None:
        return True
    if attrs.get(study_mod.REPEATS_ENQUEUED):
        return True
    seeds = [int(attrs.get(study_mod.SEED, spec.seed)) + r for r in range(1, spec.repeats)]
    return study_mod.enqueue_seeds_of(study, trial, spec, seeds)


def _tell(study: optuna.Study, trial: optuna.Trial, value: float | None = None, state: TrialState | None = None) -> bool:
    """Finish the trial; False when another worker took it over meanwhile (the result is dropped)."""
    try:
        frozen = study._storage.get_trial(trial._trial_id)
        if frozen.state.is_finished():
            log.info("trial %d was taken over by another worker (%s); result dropped", trial.number, frozen.state.name)
            return False
        # Not skip_if_finished: a reap between the read above and this write must be seen, not skipped.
        if value is not None:
            study.tell(trial, value)
        else:
            study.tell(trial, state=state)
        return True
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        log.info("trial %d was finished elsewhere; result dropped", trial.number)
        return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        # Optuna's wrapper guesses "e.g. exceeding max length" for every failed commit, outages
        # included: the driver's own message says what happened.
        exc = exc.__cause__
        exc = getattr(exc, "orig", None) or exc
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return mask(f"{type(exc).__name__}: {first}"[:500])


def _safe(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - bookkeeping must not hide the trial's real outcome
        log.warning("could not record %s: %s", args[:1], mask(str(exc)))
