"""Stopping a worker: the stop flag, the signal handlers, and the trials handed back on a hard exit.

SIGTERM/SIGINT (and SLURM's/PBS's USR1/USR2 warnings) set the flag; the running trial reaches a
stopping point, is handed back to the queue and the worker exits 0. If it does not reach one
within --stop-timeout, every trial this worker holds is handed back and the process leaves anyway.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from hpsearch.queue.faults import fail_and_requeue
from hpsearch.storage.optuna_internals import trial_id

STOP = threading.Event()

# The trials this worker is running now (every member of a fused group), by trial id: what a
# hard exit hands back. hpsearch.worker.fused adds and removes its members here too.
CURRENT: dict[int, Any] = {}

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def should_stop() -> bool:
    """For user objectives: True once the worker was asked to stop (preemption, Ctrl-C)."""
    return STOP.is_set()


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


def hard_exit() -> None:
    for study, trial in list(CURRENT.values()):  # every member of a fused group
        try:
            fail_and_requeue(study, trial_id(trial), "preempted (stop timeout)")
        except Exception:  # noqa: BLE001 - exiting anyway; heartbeat recovery still applies
            pass
    os._exit(0)
