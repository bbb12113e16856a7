"""The queue's critical sections on PostgreSQL, each as ONE transaction that also holds the study lock.

A hand-back or a reap is "fail this trial, queue its parameters again"; issuing the plan is
"enqueue these trials, record how far the plan is issued"; a completed configuration's repeats are
"check the trial is still ours, enqueue the other seeds, remember that we did". Done as separate
commits, a process killed between them loses a point (FAIL, never re-queued) or runs one twice
(enqueued, never recorded). Here each is one transaction: the study's advisory lock is taken
inside it, the state it depends on is re-read inside it, and everything commits or nothing does.

A stopped or partitioned holder cannot block the study either: every such transaction sets
idle_in_transaction_session_timeout, so the server ends a holder that went quiet mid-transaction,
which releases the lock and rolls its half-done work back (it finds out when it resumes).
"""

from __future__ import annotations

import json
import random
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial

from hpsearch.storage import optuna_internals
from hpsearch.storage.postgres import read_trial

# A lock holder that stays idle inside its transaction this long is presumed stopped: the server
# ends its session. Every critical section here runs statements back to back, so a live holder
# is never idle for more than a few milliseconds (64 trials are issued in well under a second).
HOLDER_IDLE_LIMIT_S = 10.0


def study_key(name: str) -> int:
    """The study's PostgreSQL advisory lock key."""
    return (0x6870 << 32) | (zlib.crc32(name.encode()) & 0x7FFFFFFF)


@contextmanager
def locked(rdb: optuna.storages.RDBStorage, key: int) -> Iterator[Any]:
    """A session whose transaction holds the study's advisory lock `key`; commits at exit.

    Waiters poll with try-lock and roll back between tries, so a waiter never pins a server
    connection behind a transaction pooler (pgbouncer) while the holder needs one.
    """
    session = optuna_internals.new_session(rdb)
    try:
        delay = 0.02
        while True:
            session.execute(sa.text(
                f"SET LOCAL idle_in_transaction_session_timeout = {int(HOLDER_IDLE_LIMIT_S * 1000)}"))
            if session.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar():
                break
            session.rollback()
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)
        yield session
        session.commit()
    except BaseException:
        try:
            session.rollback()
        except Exception:  # noqa: BLE001 - a dropped connection has rolled back already
            pass
        raise
    finally:
        session.close()


def _lock_study_row(session: Any, study_id: int) -> None:
    # Optuna numbers trials by counting earlier ones; it serialises creators on the study row.
    if session.execute(sa.text("SELECT study_id FROM studies WHERE study_id = :s FOR UPDATE"),
                       {"s": study_id}).first() is None:
        raise KeyError(f"study {study_id} was deleted (or replaced) while this worker ran")


def _create(rdb: optuna.storages.RDBStorage, session: Any, study_id: int, template: FrozenTrial) -> int:
    """A new trial from `template`, inside this transaction (Optuna's own row-building code)."""
    trial = optuna_internals.prepared_new_trial(rdb, study_id, template, session)
    session.flush()
    return int(trial.number)


def study_attrs(session: Any, study_id: int, keys: list[str]) -> dict[str, Any]:
    rows = session.execute(sa.text("SELECT key, value_json FROM study_user_attributes "
                                   "WHERE study_id = :s AND key = ANY(:k)"), {"s": study_id, "k": keys}).all()
    return {k: json.loads(v) for k, v in rows}


def set_study_attrs(session: Any, study_id: int, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        session.execute(sa.text("INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (:s, :k, :v) "
                                "ON CONFLICT (study_id, key) DO UPDATE SET value_json = EXCLUDED.value_json"),
                        {"s": study_id, "k": key, "v": json.dumps(value)})


def set_trial_attr(session: Any, trial_id: int, key: str, value: Any) -> None:
    session.execute(sa.text("INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (:t, :k, :v) "
                            "ON CONFLICT (trial_id, key) DO UPDATE SET value_json = EXCLUDED.value_json"),
                    {"t": trial_id, "k": key, "v": json.dumps(value)})


# ---------------------------------------------------------------- the critical sections

_FAIL = ("UPDATE trials SET state = 'FAIL', datetime_complete = :now "
         "WHERE trial_id = :t AND state = 'RUNNING'")
# Stale at the moment of the write, by the database clock: a heartbeat that arrives between the
# reaper's reading and this statement keeps the trial alive. Workers behind the gRPC proxy beat
# as a trial attribute (unix time), the others in trial_heartbeats.
_STALE = (" AND LEAST(EXTRACT(EPOCH FROM (clock_timestamp() - pg_postmaster_start_time())), COALESCE("
          "EXTRACT(EPOCH FROM (CAST(clock_timestamp() AS timestamp) - "
          "(SELECT heartbeat FROM trial_heartbeats WHERE trial_id = :t))), "
          "EXTRACT(EPOCH FROM clock_timestamp()) - "
          "(SELECT CAST(value_json AS float) FROM trial_user_attributes WHERE trial_id = :t AND key = :beat_key)"
          ")) > :limit")


def fail_and_requeue(rdb: optuna.storages.RDBStorage, key: int, study_id: int, trial_id: int,
                     attrs: dict[str, Any], successor: Callable[[FrozenTrial], FrozenTrial | None],
                     stale_limit: float | None, beat_key: str,
                     attrs_if_none: dict[str, Any]) -> tuple[FrozenTrial, int | None] | None:
    """FAIL a running trial (with `attrs`) and enqueue `successor(it)`, in one transaction
    (or, when successor() declines, add `attrs_if_none` to the failed trial instead).

    Returns (the failed trial, the successor's number or None when successor() declined), or None
    when the trial was not RUNNING (or, with stale_limit, not stale) at the moment of the write.
    """
    with locked(rdb, key) as session:
        _lock_study_row(session, study_id)
        params: dict[str, Any] = {"t": trial_id, "now": datetime.now()}
        sql = _FAIL
        if stale_limit is not None:
            sql += _STALE
            params.update(limit=float(stale_limit), beat_key=beat_key)
        if not session.execute(sa.text(sql), params).rowcount:
            return None
        for k, v in attrs.items():
            set_trial_attr(session, trial_id, k, v)
        failed = read_trial(session, trial_id)
        assert failed is not None
        template = successor(failed)
        number = None
        if template is not None:
            number = _create(rdb, session, study_id, template)
        for k, v in attrs_if_none.items() if template is None else ():
            set_trial_attr(session, trial_id, k, v)
    return failed, number


def issue(rdb: optuna.storages.RDBStorage, key: int, study_id: int, planned_key: str, issued_key: str,
          make: Callable[[int], FrozenTrial], chunk: int) -> int:
    """Enqueue the next `chunk` plan items and record how far the plan is issued, in one transaction."""
    with locked(rdb, key) as session:
        attrs = study_attrs(session, study_id, [planned_key, issued_key])
        planned = int(attrs.get(planned_key, 0))
        issued = int(attrs.get(issued_key, planned))
        stop = min(planned, issued + chunk)
        if stop <= issued:
            return 0
        _lock_study_row(session, study_id)
        for i in range(issued, stop):
            _create(rdb, session, study_id, make(i))
        set_study_attrs(session, study_id, {issued_key: stop})
    return stop - issued


def plan(rdb: optuna.storages.RDBStorage, key: int, study_id: int, attrs: dict[str, Any], marker: str,
         make: Callable[[int], FrozenTrial], first: int, ready: dict[str, Any]) -> bool:
    """A new study's spec, its first `first` plan items and its ready flag, in one transaction.

    False (nothing written) when the study already has `marker` or any trial: another creator got
    there first, or the study is not an empty one to adopt.
    """
    with locked(rdb, key) as session:
        if marker in study_attrs(session, study_id, [marker]) or session.execute(
                sa.text("SELECT 1 FROM trials WHERE study_id = :s LIMIT 1"), {"s": study_id}).first():
            return False
        _lock_study_row(session, study_id)
        set_study_attrs(session, study_id, attrs)
        for i in range(first):
            _create(rdb, session, study_id, make(i))
        set_study_attrs(session, study_id, ready)
    return True


def finish_plan(rdb: optuna.storages.RDBStorage, key: int, study_id: int, ready_key: str, planned_key: str,
                issued_key: str, index_key: str, planned: int) -> None:
    """Mark a study ready whose creation stopped before (an older creator that died mid-way: this
    version creates a study in one transaction); how far its plan got is what its plan items say."""
    with locked(rdb, key) as session:
        stored = study_attrs(session, study_id, [ready_key, planned_key])
        if stored.get(ready_key):
            return
        extra: dict[str, Any] = {ready_key: True}
        if planned_key not in stored:
            extra[planned_key] = planned
            extra[issued_key] = max_plan_index(session, study_id, index_key) + 1
        set_study_attrs(session, study_id, extra)


def enqueue_if_running(rdb: optuna.storages.RDBStorage, key: int, study_id: int, trial_id: int,
                       templates: Callable[[FrozenTrial, set[tuple[str, int]]], list[FrozenTrial]],
                       done_key: str, config_key: str, seed_key: str) -> bool:
    """Enqueue templates(trial, existing keys) and mark the trial with `done_key`, only while it is
    still RUNNING; the (config_id, seed) keys already in the study let templates() skip those."""
    with locked(rdb, key) as session:
        state = session.execute(sa.text("SELECT state FROM trials WHERE trial_id = :t FOR UPDATE"),
                                {"t": trial_id}).scalar()
        if state != "RUNNING":
            return False
        frozen = read_trial(session, trial_id)
        assert frozen is not None
        if frozen.user_attrs.get(done_key):
            return True
        todo = templates(frozen, trial_keys(session, study_id, config_key, seed_key))
        if todo:
            _lock_study_row(session, study_id)
            for template in todo:
                _create(rdb, session, study_id, template)
        set_trial_attr(session, trial_id, done_key, True)
    return True


def trial_keys(session_or_conn: Any, study_id: int, config_key: str, seed_key: str) -> set[tuple[str, int]]:
    """(config_id, seed) of every trial of the study, whatever its state."""
    rows = session_or_conn.execute(sa.text(
        "SELECT c.value_json, s.value_json FROM trials t "
        "JOIN trial_user_attributes c ON c.trial_id = t.trial_id AND c.key = :ck "
        "JOIN trial_user_attributes s ON s.trial_id = t.trial_id AND s.key = :sk "
        "WHERE t.study_id = :st"), {"st": study_id, "ck": config_key, "sk": seed_key}).all()
    return {(json.loads(c), int(json.loads(s))) for c, s in rows}


def max_plan_index(session: Any, study_id: int, index_key: str) -> int:
    """The highest plan index (trial attribute `index_key`) among the study's trials; -1 for none."""
    value = session.execute(sa.text(
        "SELECT max(CAST(a.value_json AS integer)) FROM trial_user_attributes a JOIN trials t "
        "ON t.trial_id = a.trial_id WHERE t.study_id = :s AND a.key = :k"), {"s": study_id, "k": index_key}).scalar()
    return -1 if value is None else int(value)
