"""One claimed trial, from start to end: marked as this worker's, trained, then told, handed back or dropped.

The worker runs a trial alone here; hpsearch.worker.fused runs a fused group's members through
the same begin / ended / completed, so each member ends exactly as it would alone. A trial another
worker took over meanwhile (this one was presumed dead) is "dropped": its retry counts instead.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from hpsearch import schema
from hpsearch.errors import StorageUnavailable
from hpsearch.objective import BadResult, Duplicate, Preempted, is_divergent, result, shown
from hpsearch.queue import plan as plan_mod
from hpsearch.queue import study as study_mod
from hpsearch.queue.faults import Heartbeat, fail_and_requeue
from hpsearch.spec.model import StudySpec
from hpsearch.storage.backend import mask
from hpsearch.storage.optuna_internals import storage_of, trial_id
from hpsearch.worker.context import TrialContext
from hpsearch.worker.options import Options
from hpsearch.worker.record import how_computed, safe
from hpsearch.worker.train import objective

log = logging.getLogger("hpsearch.worker")

Timing = Callable[[], dict[str, Any]]


def run_one(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, ctx: TrialContext, opts: Options,
            out: Any) -> str:
    """Train `trial` alone; how it ended (complete, pruned, preempted, failed, divergent, dropped)."""
    label = f"trial {trial.number}"
    timing = begin(study, trial, ctx, opts)
    try:
        with Heartbeat(study, trial_id(trial), opts.heartbeat):
            try:
                value = objective(trial, spec, ctx, opts, lambda msg: out(f"[{label}] {msg}"))
            except BaseException as exc:
                return ended(study, trial, exc, timing, ctx, out)
            finally:
                ctx.stop.release(trial)
        return completed(study, trial, spec, value, timing, ctx, out)
    except optuna.exceptions.UpdateFinishedTrialError:
        return dropped(label, out)


def begin(study: optuna.Study, trial: optuna.Trial, ctx: TrialContext, opts: Options) -> Timing:
    """Mark the trial as this worker's; returns its timing attributes, read when it ends."""
    from hpsearch.storage.reconnect import storage_seconds

    service0 = storage_seconds()
    study_mod.set_user_attrs(trial, {schema.WORKER: study_mod.worker_id(), schema.BEAT_INTERVAL: opts.heartbeat,
                                     **how_computed(ctx)})
    ctx.stop.hold(study, trial)
    t0 = time.monotonic()

    def timing() -> dict[str, Any]:
        # Database time on this trial's critical path (claim, reports, attrs): the service's overhead.
        return {schema.DURATION_S: time.monotonic() - t0, schema.DEVICE: str(ctx.device),
                schema.SERVICE_S: storage_seconds() - service0 + ctx.claim_s}

    return timing


# ---------------------------------------------------------------- how it ended


def ended(study: optuna.Study, trial: optuna.Trial, exc: BaseException, timing: Timing, ctx: TrialContext,
          out: Any) -> str:
    """A trial whose training raised `exc`: pruned, handed back, dropped or failed (the state's name).
    Re-raises what must stop the worker (the storage gone, an interrupt)."""
    label = f"trial {trial.number}"
    if isinstance(exc, optuna.TrialPruned):
        study_mod.set_user_attrs(trial, timing())
        if not _tell(study, trial, state=TrialState.PRUNED):
            return dropped(label, out)
        _discard(ctx, trial)
        out(f"[{label}] {_pruned_text(study, trial, exc)}")
        return "pruned"
    limit = ctx.stop.timed_out()
    if isinstance(exc, Preempted) and limit is not None and not ctx.stop.requested.is_set():
        # It stopped because its time limit passed, not because the worker was asked to stop:
        # that is the trial's own end, not a hand-back (it would only run out of time again).
        return _failed(study, trial, TrialTimedOut(f"time limit: still running {limit:g}s after its start "
                                                   "(trial_timeout); stopped"), ctx, out)
    if isinstance(exc, Preempted):
        ctx.stop.release(trial)
        if not fail_and_requeue(study, trial_id(trial), f"preempted: {exc}"):
            return dropped(label, out)
        out(f"[{label}] handed back to the queue ({exc})")
        return "preempted"
    if isinstance(exc, optuna.exceptions.UpdateFinishedTrialError):
        return dropped(label, out)
    if isinstance(exc, StorageUnavailable):
        raise exc  # the storage itself (a full journal disk): one line; the trial is reaped and retried
    if isinstance(exc, Exception) and _gone(study, trial):
        # The study was deleted or replaced (create-study --replace): nothing is left to record a
        # reason on; the worker's loop says what happened in one line. Whatever the write raised:
        # a KeyError when the record was already gone, a failed statement when the delete committed
        # while the write waited on its row lock.
        if isinstance(exc, KeyError):
            raise exc
        raise KeyError(f"trial {trial.number}'s record is gone") from exc
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        fail_and_requeue(study, trial_id(trial), f"worker interrupted: {type(exc).__name__}")
        raise exc
    return _failed(study, trial, exc, ctx, out)


def _gone(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether the trial's record is no longer in the storage (its study was deleted)."""
    try:
        storage_of(study).get_trial(trial_id(trial))
    except KeyError:
        return True
    except Exception:  # noqa: BLE001 - unknown: record the failure as usual
        return False
    return False


def _pruned_text(study: optuna.Study, trial: optuna.Trial, exc: BaseException) -> str:
    """The built-in trainer says where it was pruned; a bare `raise optuna.TrialPruned()` gets its last report."""
    text = str(exc).strip()
    if text:
        return text if text.startswith("pruned") else f"pruned: {text}"
    try:
        reports = storage_of(study).get_trial(trial_id(trial)).intermediate_values
    except Exception:  # noqa: BLE001 - only the message's detail is lost
        reports = {}
    if not reports:
        return "pruned before its first report"
    step = max(reports)
    return f"pruned at step {step} (reported {reports[step]:.4g})"


def _failed(study: optuna.Study, trial: optuna.Trial, exc: BaseException, ctx: TrialContext, out: Any) -> str:
    """A trial's failure must not take the worker down: why, recorded on the trial, then FAIL."""
    label = f"trial {trial.number}"
    reason = _reason(exc)
    if isinstance(exc, MemoryError):
        # Whatever leaked stays in this process and would fail every later trial: the worker
        # restarts clean once this one is recorded (hpsearch.worker.loop).
        ctx.stop.restart_after(f"trial {trial.number} ran out of memory")
    divergent = is_divergent(exc)
    safe(trial.set_user_attr, schema.FAIL_REASON, reason)
    safe(trial.set_user_attr, schema.DIVERGENT, divergent)
    safe(trial.set_user_attr, schema.TRACEBACK, "".join(traceback.format_exception(exc))[-4000:])
    if not _tell(study, trial, state=TrialState.FAIL):
        return dropped(label, out)
    out(f"[{label}] failed: {reason}")
    if isinstance(exc, Duplicate):
        return "duplicate"  # the sampler's doing, not this worker's: not a failure in a row
    return "divergent" if divergent else "failed"


def completed(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, value: float | list[float], timing: Timing,
              ctx: TrialContext, out: Any) -> str:
    """A trial that trained to the end: its timing, its repeats (once), its value; then its checkpoint goes."""
    label = f"trial {trial.number}"
    try:
        value = result(value, spec)  # only finite numbers are told (Optuna stores inf as COMPLETE)
    except BadResult as exc:
        return _failed(study, trial, exc, ctx, out)
    try:
        study_mod.set_user_attrs(trial, timing())
        if not _maybe_enqueue_repeats(study, trial, spec) or not _tell(study, trial, value=value):
            return dropped(label, out)
        _discard(ctx, trial)
    except optuna.exceptions.UpdateFinishedTrialError:
        return dropped(label, out)
    out(f"[{label}] complete: {shown(value, spec)} ({timing()[schema.DURATION_S]:.1f}s)")
    return "complete"


def dropped(label: str, out: Any) -> str:
    out(f"[{label}] result dropped: another worker took this trial over while it ran (this worker was "
        "presumed dead: no heartbeat reached the storage in time); its retry counts instead")
    return "dropped"


def _discard(ctx: TrialContext, trial: optuna.Trial) -> None:
    """A finished trial's checkpoint: no retry will need it, and kept it would fill the disk."""
    attrs = trial.user_attrs  # a copy of what the worker holds: no storage read
    if attrs.get(schema.CHECKPOINT):  # only the built-in trainer writes them (torch stays unimported)
        from hpsearch.training.checkpoints import discard_checkpoint

        discard_checkpoint(ctx.artifacts, attrs)


def _maybe_enqueue_repeats(study: optuna.Study, trial: optuna.Trial, spec: StudySpec) -> bool:
    """A sampled configuration that completed gets its other seeds queued (once, even on retry).
    False when the trial is no longer this worker's."""
    attrs = trial.user_attrs
    if spec.is_grid or spec.repeats <= 1 or attrs.get(schema.REPEAT_OF) is not None:
        return True
    if attrs.get(schema.REPEATS_ENQUEUED):
        return True
    seeds = [int(attrs.get(schema.SEED, spec.seed)) + r for r in range(1, spec.repeats)]
    return plan_mod.enqueue_seeds_of(study, trial, spec, seeds)


def _tell(study: optuna.Study, trial: optuna.Trial, value: float | list[float] | None = None,
          state: TrialState | None = None) -> bool:
    """Finish the trial; False when another worker took it over meanwhile (the result is dropped)."""
    try:
        # Not skip_if_finished: a trial reaped meanwhile must be seen, not skipped. Optuna's tell reads
        # the trial from the storage (a reaped one is FAIL there: ValueError), and the write itself
        # refuses a finished trial (UpdateFinishedTrialError), so no read of hpsearch's own comes first.
        if value is not None:
            study.tell(trial, value)
        else:
            study.tell(trial, state=state)
        return True
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as exc:
        log.info("trial %d was finished elsewhere (taken over by another worker: %s); result dropped",
                 trial.number, exc)
        return False


class TrialTimedOut(Exception):
    """The trial ran past its time limit and stopped."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (BadResult, Duplicate, TrialTimedOut)):
        return str(exc)  # already says what it is, masked
    if isinstance(exc, MemoryError):
        return f"out of memory: {type(exc).__name__} {str(exc).strip()[:200]}".strip() + "; its worker restarted clean"
    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        # Optuna's wrapper guesses "e.g. exceeding max length" for every failed commit, outages
        # included: the driver's own message says what happened.
        exc = exc.__cause__
        exc = getattr(exc, "orig", None) or exc
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return mask(f"{type(exc).__name__}: {first}"[:500])

