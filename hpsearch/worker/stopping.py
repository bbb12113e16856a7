"""Stopping a worker: its stop flag, signal handlers and trial time limit, and what a hard exit hands back.

SIGTERM/SIGINT (and SLURM's/PBS's USR1/USR2 warnings) set the flag; the running trial reaches a
stopping point, is handed back to the queue and the worker exits 0. If it does not reach one
within --stop-timeout, every trial this worker holds is handed back and the process leaves anyway.
All of it is one worker's state (a Stopping its Worker holds), not the module's: two workers in
one process stop, time and hand back their own trials.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from hpsearch.queue.faults import fail_and_requeue
from hpsearch.storage.optuna_internals import trial_id

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
HAND_BACK_WAIT = 10.0  # seconds the hard exit gives its hand-back writes (the database may be down)


@dataclass
class _Clock:
    limit: float
    deadline: float  # monotonic
    timer: threading.Timer


def overrun_grace(limit: float) -> float:
    """How long a trial past its limit has to reach a stopping point before the watchdog acts:
    a batch or an epoch end of the built-in trainer, a user objective's own check of should_stop."""
    return min(60.0, max(5.0, 0.1 * limit))


class Stopping:
    """One worker's stopping state: whether it was asked to stop, the trials it holds (every member
    of a fused group: what a hard exit hands back), why it must restart clean, and the running
    trial's time limit."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._held: dict[int, tuple[optuna.Study, optuna.Trial]] = {}
        self._held_lock = threading.Lock()
        # Why this worker must start clean before its next trial (an out-of-memory error leaves the leak).
        self.restart_reason: str | None = None
        self._clock: _Clock | None = None  # the running trial's (or fused group's) clock, when it has a limit

    def asked_to_stop(self) -> bool:
        """What hpsearch.objective.should_stop() answers in this worker: asked to stop (preemption,
        Ctrl-C), or the running trial is past its time limit (`trial_timeout`)."""
        return self.requested.is_set() or self.timed_out() is not None

    # ------------------------------------------------------------ the trials it holds

    def hold(self, study: optuna.Study, trial: optuna.Trial) -> None:
        with self._held_lock:
            self._held[trial_id(trial)] = (study, trial)

    def release(self, trial: optuna.Trial) -> None:
        with self._held_lock:
            self._held.pop(trial_id(trial), None)

    def held(self) -> list[tuple[optuna.Study, optuna.Trial]]:
        with self._held_lock:
            return list(self._held.values())

    def restart_after(self, reason: str) -> None:
        if self.restart_reason is None:
            self.restart_reason = reason

    # ------------------------------------------------------------ a trial's time limit

    def start_clock(self, limit: float | None, overrun: Callable[[float], None]) -> None:
        """The running trial's time limit: asked_to_stop() turns True at `limit` seconds, and if the
        trial has not ended overrun_grace(limit) seconds later (code that ignores should_stop, a hang
        inside a C call) `overrun(limit)` runs on a watchdog thread: it ends the trial and restarts
        the worker."""
        self.stop_clock()
        if limit is None:
            return

        def fire() -> None:
            if self._clock is clock:  # not a trial that ended meanwhile
                overrun(limit)

        clock = _Clock(limit, time.monotonic() + limit, threading.Timer(limit + overrun_grace(limit), fire))
        clock.timer.daemon = True
        self._clock = clock
        clock.timer.start()

    def stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.timer.cancel()
        self._clock = None

    def timed_out(self) -> float | None:
        """The running trial's limit (seconds) once it has passed, else None."""
        clock = self._clock
        return clock.limit if clock is not None and time.monotonic() > clock.deadline else None

    # ------------------------------------------------------------ signals and the hard exit

    def install_signals(self, stop_timeout: float, out: Any) -> None:
        def handler(signum: int, frame: Any) -> None:
            if self.requested.is_set():
                return
            self.requested.set()
            out(f"received {signal.Signals(signum).name}: handing the running trial back and exiting")
            # Bounded exit: if the trial does not reach a stopping point in time, leave anyway;
            # the trial is requeued by the hand-back below or, failing that, by heartbeat.
            timer = threading.Timer(stop_timeout, self.hard_exit)
            timer.daemon = True
            timer.start()

        if threading.current_thread() is threading.main_thread():
            # USR1/USR2: what SLURM's --signal (submitit's B:USR2@90) and PBS send before the kill.
            for sig in _SIGNALS:
                signal.signal(sig, handler)

    def hard_exit(self) -> None:
        """Leave now: hand back every trial this worker holds, but wait no more than HAND_BACK_WAIT for
        the storage. The storage layer waits up to HPSEARCH_DB_WAIT (600 s) for a database that is
        down, which would turn --stop-timeout into ten minutes; a trial whose hand-back did not reach
        the storage is re-queued by another worker's reaper once its heartbeat is stale."""

        def hand_back() -> None:
            for study, trial in self.held():  # every member of a fused group
                try:
                    fail_and_requeue(study, trial_id(trial), "preempted (stop timeout)")
                except Exception:  # noqa: BLE001 - exiting anyway; heartbeat recovery still applies
                    pass

        writer = threading.Thread(target=hand_back, daemon=True)
        writer.start()
        writer.join(HAND_BACK_WAIT)
        os._exit(0)


def ignore_signals() -> None:
    """The work is handed back or done: a late SIGTERM during interpreter shutdown (which restores
    the default handlers) must not turn exit 0 into 143."""
    if threading.current_thread() is threading.main_thread():
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
