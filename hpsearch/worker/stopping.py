"""Stopping a worker: the stop flag, the signal handlers, and the trials handed back on a hard exit.

SIGTERM/SIGINT (and SLURM's/PBS's USR1/USR2 warnings) set the flag; the running trial reaches a
stopping point, is handed back to the queue and the worker exits 0. If it does not reach one
within --stop-timeout, every trial this worker holds is handed back and the process leaves anyway.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpsearch import objective
from hpsearch.queue.faults import fail_and_requeue
from hpsearch.storage.optuna_internals import trial_id

STOP = threading.Event()

# The trials this worker is running now (every member of a fused group), by trial id: what a
# hard exit hands back. hpsearch.worker.fused adds and removes its members here too.
CURRENT: dict[int, Any] = {}

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def asked_to_stop() -> bool:
    """What hpsearch.objective.should_stop() answers in a worker: asked to stop (preemption,
    Ctrl-C), or the running trial is past its time limit (`trial_timeout`)."""
    return STOP.is_set() or timed_out() is not None


# Why this worker must start clean before its next trial (an out-of-memory error leaves the leak).
_RESTART: list[str] = []


def restart_after(reason: str) -> None:
    if not _RESTART:
        _RESTART.append(reason)


def restart_reason() -> str | None:
    return _RESTART[0] if _RESTART else None


# ---------------------------------------------------------------- a trial's time limit


@dataclass
class _Clock:
    limit: float
    deadline: float  # monotonic
    timer: threading.Timer


_clock: _Clock | None = None  # the running trial's (or fused group's) clock, when it has a limit


def start_clock(limit: float | None, overrun: Callable[[float], None]) -> None:
    """The running trial's time limit: should_stop() turns True at `limit` seconds, and if the
    trial has not ended overrun_grace(limit) seconds later (code that ignores should_stop, a hang
    inside a C call) `overrun(limit)` runs on a watchdog thread: it ends the trial and restarts
    the worker."""
    global _clock
    stop_clock()
    if limit is None:
        return

    def fire() -> None:
        if _clock is clock:  # not a trial that ended meanwhile
            overrun(limit)

    clock = _Clock(limit, time.monotonic() + limit, threading.Timer(limit + overrun_grace(limit), fire))
    clock.timer.daemon = True
    _clock = clock
    clock.timer.start()


def stop_clock() -> None:
    global _clock
    if _clock is not None:
        _clock.timer.cancel()
    _clock = None


def timed_out() -> float | None:
    """The running trial's limit (seconds) once it has passed, else None."""
    clock = _clock
    return clock.limit if clock is not None and time.monotonic() > clock.deadline else None


def overrun_grace(limit: float) -> float:
    """How long a trial past its limit has to reach a stopping point before the watchdog acts:
    a batch or an epoch end of the built-in trainer, a user objective's own check of should_stop."""
    return min(60.0, max(5.0, 0.1 * limit))


def install_signals(stop_timeout: float, out: Any) -> None:
    def handler(signum: int, frame: Any) -> None:
        if STOP.is_set():
            return
        STOP.set()
        out(f"received {signal.Signals(signum).name}: handing the running trial back and exiting")
        # Bounded exit: if the trial does not reach a stopping point in time, leave anyway;
        # the trial is requeued by the watchdog below or, failing that, by heartbeat.
        timer = threading.Timer(stop_timeout, hard_exit)
        timer.daemon = True
        timer.start()

    if threading.current_thread() is threading.main_thread():
        # USR1/USR2: what SLURM's --signal (submitit's B:USR2@90) and PBS send before the kill.
        for sig in _SIGNALS:
            signal.signal(sig, handler)


def ignore_signals() -> None:
    """The work is handed back or done: a late SIGTERM during interpreter shutdown (which restores
    the default handlers) must not turn exit 0 into 143."""
    if threading.current_thread() is threading.main_thread():
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


HAND_BACK_WAIT = 10.0  # seconds the hard exit gives its hand-back writes (the database may be down)


def hard_exit() -> None:
    """Leave now: hand back every trial this worker holds, but wait no more than HAND_BACK_WAIT for
    the storage. The storage layer waits up to HPSEARCH_DB_WAIT (600 s) for a database that is
    down, which would turn --stop-timeout into ten minutes; a trial whose hand-back did not reach
    the storage is re-queued by another worker's reaper once its heartbeat is stale."""

    def hand_back() -> None:
        for study, trial in list(CURRENT.values()):  # every member of a fused group
            try:
                fail_and_requeue(study, trial_id(trial), "preempted (stop timeout)")
            except Exception:  # noqa: BLE001 - exiting anyway; heartbeat recovery still applies
                pass

    writer = threading.Thread(target=hand_back, daemon=True)
    writer.start()
    writer.join(HAND_BACK_WAIT)
    os._exit(0)


objective.stop_when(asked_to_stop)  # a worker process answers should_stop() with its own flag and clock
