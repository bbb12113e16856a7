"""Helpers of the fault tests (tests/queue, tests/worker): a worker's output read as it comes, the
slow training that lets a test stop a worker mid-trial, and the exactly-once invariant."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

# Slow enough epochs (~0.3 s) to stop a worker in the middle of a trial.
SLOW_TRAIN = {"epochs": 8, "batch_size": 4, "model": "dense", "hidden_size": 256, "hidden_layers": 2,
              "optimizer": "sgd"}


class Tail:
    """Reads a worker's output line by line in the background so a test can wait for an epoch."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._q: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self._q.put(line)

    def wait_for(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if text in line:
                return line
        raise AssertionError(f"{text!r} not seen; output:\n{''.join(self.lines)}")


def assert_exactly_once(study: optuna.Study, planned: int) -> None:
    """The invariant: every planned (configuration, seed) ends in exactly one COMPLETE/PRUNED trial;
    nothing waits or runs; every FAIL is either retried (it has a successor) or not retryable."""
    trials = study.get_trials(deepcopy=False)
    done = Counter((t.user_attrs.get("config_id"), t.user_attrs.get("seed")) for t in trials
                   if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == planned, f"{planned - len(done)} planned point(s) never ran: {sorted(done)}"
    assert set(done.values()) == {1}, f"run twice: {[k for k, v in done.items() if v > 1]}"
    assert not [t.number for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    retried = {n for t in trials for n in t.user_attrs.get("retry_history", [])}
    for t in trials:  # a failure of the worker is retried; a failure of the trial says why
        if t.state == TrialState.FAIL and t.number not in retried:
            reason = str(t.user_attrs.get("fail_reason", ""))
            assert reason and (t.user_attrs.get("retry_exhausted") or not reason.startswith(
                ("stale", "preempted", "worker interrupted"))), (t.number, t.user_attrs)


# ---------------------------------------------------------------- race windows held open on PostgreSQL


def engine_of(url: str) -> sa.Engine:
    """A second session's engine (psycopg2, application name hpsearch-test: not counted as a worker's)."""
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1),
                            connect_args={"application_name": "hpsearch-test"})


@contextmanager
def hold(url: str, sql: str, **params: Any) -> Iterator[None]:
    """Hold the locks `sql` takes, in an open transaction of a second session, until the block ends."""
    engine = engine_of(url)
    conn = engine.connect()
    tx = conn.begin()
    conn.execute(sa.text(sql), params)
    try:
        yield
    finally:
        tx.rollback()
        conn.close()
        engine.dispose()


def wait_blocked(url: str, timeout: float = 120, sessions: int = 1) -> None:
    """Until `sessions` hpsearch sessions of this database wait for a lock."""
    engine = engine_of(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                n = conn.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hpsearch' "
                    "AND wait_event_type = 'Lock' AND datname = current_database()")).scalar()
            if n >= sessions:
                return
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise AssertionError("no hpsearch session ever waited for the held lock")
