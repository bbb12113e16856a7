"""Heartbeats, the stale-trial reaper and fail-then-requeue (the study lock is hpsearch.queue.lock).

Each backend beats and reads heartbeat ages its own way (Optuna's heartbeat table by the database
clock, or a trial attribute holding unix time). A trial whose heartbeat is older than 1.5
heartbeat intervals is failed with a reason and queued again with the same parameters, its
checkpoint and a link to the original, by whichever worker's reaper sees it first; the backend
makes that exactly once, and makes "nothing waits, nothing runs" a consistent reading.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.queue.retries import max_retries, retry_template, retryable, stale_reason
from hpsearch.schema import FAIL_REASON, RETRY_EXHAUSTED, RETRY_HISTORY
from hpsearch.storage import backends, optuna_internals
from hpsearch.storage.backend import mask

log = logging.getLogger("hpsearch.faults")


def grace(interval: float) -> float:
    """Silence after which a trial is presumed dead: beats come every interval/2, so 1.5 intervals
    is three missed beats, and with the reaper polling every interval/4 a killed worker's trial is
    re-queued within two intervals of its death."""
    return 1.5 * float(interval)


# ---------------------------------------------------------------- fail and requeue


def fail_and_requeue(study: optuna.Study, trial_id: int, reason: str, only_if_stale: float | None = None) -> bool:
    """Mark a running trial failed with `reason` and queue its parameters again. Exactly once.

    False when it was not running (or, with `only_if_stale`, not that silent) at the moment of the
    write. Where the backend cannot make the two writes one transaction, sweep_orphans() re-queues
    a failure whose process died between them.
    """
    done = backends.of(study).fail_and_requeue(study, trial_id, {FAIL_REASON: reason},
                                               lambda frozen: retry_template(frozen, reason), only_if_stale,
                                               {RETRY_EXHAUSTED: True})
    if done is None:
        return False
    _said(done[0], reason, requeued=done[1])
    return True


def fail_for_good(study: optuna.Study, trial_id: int, reason: str) -> bool:
    """Mark a running trial failed with `reason`, not queued again (a trial past its time limit:
    it would only run out of time again). False when it is not running any more."""
    storage = optuna_internals.storage_of(study)
    try:
        storage.set_trial_user_attr(trial_id, FAIL_REASON, reason)
        return bool(storage.set_trial_state_values(trial_id, state=TrialState.FAIL))
    except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
        return False


def _said(frozen: FrozenTrial, reason: str, requeued: bool) -> None:
    if not requeued:
        log.warning("trial %d failed (%s) and is not retried again: it crashed its worker %d times",
                    frozen.number, reason, max_retries())
    else:
        log.info("trial %d failed (%s) and re-queued", frozen.number, reason)


def sweep_orphans(study: optuna.Study) -> int:
    """Re-queue every retryable failure that has no successor (its process died between the two
    writes of a hand-back or a reap), under the study lock; nothing to do where they are one transaction."""
    return backends.of(study).requeue_orphans(study, _orphan_successors)


def _orphan_successors(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    retried = {n for t in trials for n in t.user_attrs.get(RETRY_HISTORY, [])}
    out = []
    for t in trials:
        if (t.state == TrialState.FAIL and t.number not in retried and not t.user_attrs.get(RETRY_EXHAUSTED)
                and retryable(str(t.user_attrs.get(FAIL_REASON, "")))):
            reason = str(t.user_attrs[FAIL_REASON])
            template = retry_template(t, reason)
            if template is None:  # over its retry limit: stays failed (its reason says why)
                continue
            out.append(template)
            _said(t, reason, requeued=True)
    return out


# ---------------------------------------------------------------- heartbeat


class Heartbeat:
    """Beats every interval/2 (twice per interval tolerates one lost beat) for running trials: one
    trial, or every member of a fused group from the moment the group is claimed, each until it is
    released (it ended) or taken over."""

    def __init__(self, study: optuna.Study, trial_ids: int | Sequence[int], interval: float) -> None:
        self.study = study
        self._ids = [trial_ids] if isinstance(trial_ids, int) else list(trial_ids)
        self._ids_lock = threading.Lock()
        self.interval = float(interval)
        self._backend = backends.of(study)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hpsearch-heartbeat", daemon=True)

    @property
    def trial_ids(self) -> list[int]:
        with self._ids_lock:
            return list(self._ids)

    def release(self, trial_id: int) -> None:
        """Stop beating for `trial_id` (it ended); the others go on. The last one stops the thread."""
        with self._ids_lock:
            if trial_id in self._ids:
                self._ids.remove(trial_id)
            empty = not self._ids
        if empty:
            self.__exit__(None, None, None)

    def beat(self) -> None:
        failed: Exception | None = None
        for trial_id in self.trial_ids:
            try:
                self._backend.beat(self.study, trial_id)  # one attempt: this loop retries on its own
            except optuna.exceptions.UpdateFinishedTrialError:
                # Taken over by a reaper; the worker finds out when it tells.
                with self._ids_lock:
                    if trial_id in self._ids:
                        self._ids.remove(trial_id)
            except Exception as exc:  # noqa: BLE001 - the other members still beat; said once below
                failed = failed or exc
        if failed is not None:
            raise failed

    def _loop(self) -> None:
        while not self._stop.wait(self.interval / 2):
            if not self.trial_ids:
                return
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - keep beating; the reaper judges staleness
                log.warning("heartbeat failed: %s", mask(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))

    def __enter__(self) -> Heartbeat:
        self.beat()
        if not self.trial_ids:  # every one was taken over before its first beat
            raise optuna.exceptions.UpdateFinishedTrialError("taken over by another worker")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


# ---------------------------------------------------------------- reaper


def stale_trials(study: optuna.Study, default_interval: float) -> list[tuple[int, float, float]]:
    """(trial_id, age, limit) of running trials whose heartbeat stopped."""
    out = []
    # Every worker runs this every interval/4: on a database it is one query over running trials only.
    for trial_id, (age, interval) in backends.of(study).beat_ages(study, default_interval).items():
        if age > grace(interval):
            out.append((trial_id, age, grace(interval)))
    return out


class Reaper:
    """Background thread: fail and re-queue stale trials of the study, every interval/4 seconds.

    Silence counts as death only over time in which the silent worker could have beaten. When
    this reaper itself could not reach the storage (a database restart), could not write to it
    (another process held the journal's lock) or did not run (it was stopped, or starved), every
    other worker may have been cut off too: it starts counting again from when it is back.
    """

    def __init__(self, study: optuna.Study, default_interval: float, log: Any = None) -> None:
        self.study = study
        self._backend = backends.of(study)
        self.interval = float(default_interval)
        self.out = log or (lambda msg: None)
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hpsearch-reaper", daemon=True)
        self.requeued = 0
        # Since when this reaper has seen the storage usable throughout (no outage seen yet; a
        # database restart is seen by the database itself: silence counts from its start at most).
        self.since = float("-inf")
        self._last = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def poke(self) -> None:
        self._poke.set()

    def _observe(self, gap_limit: float) -> None:
        """A gap since the last round longer than expected means this reaper was stopped or blocked.

        Only where writes are serial (the journal file, SQLite): one stopped process holding the
        storage's lock blocks every other writer's heartbeats. On PostgreSQL nobody's heartbeat waits
        for another worker, and staleness is judged by the database clock at the moment of the write.
        """
        now = time.monotonic()
        if self._backend.serial_writes and now - self._last > gap_limit:
            self.since = now
        self._last = now

    def reap_once(self) -> int:
        n = 0
        stale = stale_trials(self.study, self.interval)
        self._observe(max(2.0, self.interval))  # a slow read (blocked storage) counts as a gap
        if stale and not self._backend.writable(limit=max(1.0, self.interval / 4)):
            self.since = time.monotonic()
            return 0
        for trial_id, age, limit in stale:
            # Count only the time since this reaper has seen the storage usable: a worker may have
            # been unable to beat before that, whatever its heartbeat's age says.
            if time.monotonic() - self.since <= limit:
                continue
            number = optuna_internals.storage_of(self.study).get_trial_number_from_id(trial_id)
            reason = stale_reason(age, limit)
            if fail_and_requeue(self.study, trial_id, reason, only_if_stale=limit):
                n += 1
                self.out(f"trial {number} had no heartbeat for {age:.0f}s: marked failed (stale) and re-queued")
        n += sweep_orphans(self.study)  # restore what a process killed mid-hand-back left
        self.requeued += n
        return n

    def _loop(self) -> None:
        period = max(0.5, self.interval / 4)
        while not self._stop.is_set():
            self._poke.wait(period)
            self._poke.clear()
            if self._stop.is_set():
                return
            self._observe(period * 2 + 1.0)
            try:
                self.reap_once()
            except KeyError:
                return  # the study was deleted or replaced: the worker's loop says so and stops
            except Exception as exc:  # noqa: BLE001 - the reaper must outlive database hiccups
                self.since = time.monotonic()
                log.warning("reaper: %s", mask(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
