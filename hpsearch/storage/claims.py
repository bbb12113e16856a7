"""Claiming waiting trials with plain SQL, and the counts the worker's loop asks for.

A claim is a compare-and-set WAITING -> RUNNING, so exactly one claimer takes a trial whatever
the number of workers; the heartbeat row starts in the same transaction, so a claimed trial is
never seen running without one. On PostgreSQL it is one statement whose row locks skip trials
other workers are claiming right now; on other databases (SQLite) a read, then the guarded update.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial

from hpsearch.storage import optuna_internals
from hpsearch.storage.postgres import HEARTBEAT, read_trial
from hpsearch.storage.reconnect import with_reconnect

_PICK = "SELECT trial_id FROM trials WHERE study_id = :s AND state = 'WAITING' ORDER BY number LIMIT 1"
_CLAIM_ONE_POSTGRES = sa.text(
    "UPDATE trials SET state = 'RUNNING', datetime_start = :now WHERE trial_id = ("
    "SELECT trial_id FROM trials WHERE study_id = :s AND state = 'WAITING' ORDER BY number LIMIT 1 "
    "FOR UPDATE SKIP LOCKED) AND state = 'WAITING' RETURNING trial_id")
_CLAIM_ID = sa.text("UPDATE trials SET state = 'RUNNING', datetime_start = :now "
                    "WHERE trial_id = :t AND state = 'WAITING'")
_DROP_HEARTBEAT = sa.text("DELETE FROM trial_heartbeats WHERE trial_id = :t")
_FIRST_HEARTBEAT = sa.text("INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (:t, CURRENT_TIMESTAMP)")
_WAITING_FIXED_PARAMS = sa.text(
    "SELECT t.trial_id, a.value_json FROM trials t JOIN trial_system_attributes a "
    "ON a.trial_id = t.trial_id AND a.key = 'fixed_params' "
    "WHERE t.study_id = :s AND t.state = 'WAITING' ORDER BY t.number LIMIT :w")
_CLAIM_MANY_POSTGRES = sa.text(
    "UPDATE trials SET state = 'RUNNING', datetime_start = :now WHERE trial_id = ANY("
    "SELECT trial_id FROM trials WHERE trial_id = ANY(:ids) AND state = 'WAITING' ORDER BY number "
    "LIMIT :n FOR UPDATE SKIP LOCKED) AND state = 'WAITING' RETURNING trial_id")
_ACTIVE_COUNTS = sa.text("SELECT state, count(*) FROM trials WHERE study_id = :s "
                         "AND state IN ('WAITING', 'RUNNING') GROUP BY state")
_STUDY_STATE_INDEX = sa.text("CREATE INDEX IF NOT EXISTS hpsearch_trials_study_state_number "
                             "ON trials (study_id, state, number)")


def claim_next_postgres(rdb: optuna.storages.RDBStorage, study_id: int,
                        read: bool) -> tuple[int, FrozenTrial | None] | None:
    """Take the first waiting trial of the study (plan order): its id and, when `read`, the trial as
    claimed (for Optuna's cache); None when nothing waits.

    One statement: the row lock skips trials other workers are claiming right now, and the state
    test makes it a compare-and-set. The heartbeat row starts in the same transaction, and the
    trial is read in it too (one round trip to the pool, not two).
    """

    def attempt() -> tuple[int, FrozenTrial | None] | None:
        with rdb.engine.begin() as conn:
            row = conn.execute(_CLAIM_ONE_POSTGRES, {"s": study_id, "now": datetime.now()}).first()
            if row is None:
                return None
            if rdb.heartbeat_interval:
                conn.execute(HEARTBEAT, {"t": row[0]})
            return int(row[0]), read_trial(conn, int(row[0])) if read else None

    return with_reconnect(attempt)()


def claim_next(rdb: optuna.storages.RDBStorage, study_id: int) -> int | None:
    """Any database: read the first waiting trial, then the guarded update, in one transaction."""

    def attempt() -> int | None:
        for _ in range(50):
            with rdb.engine.begin() as conn:
                row = conn.execute(sa.text(_PICK), {"s": study_id}).first()
                if row is None:
                    return None
                # Compare-and-set: exactly one claimer flips WAITING -> RUNNING.
                done = conn.execute(_CLAIM_ID, {"t": row[0], "now": datetime.now()})
                if done.rowcount == 1:
                    if rdb.heartbeat_interval:
                        conn.execute(_DROP_HEARTBEAT, {"t": row[0]})
                        conn.execute(_FIRST_HEARTBEAT, {"t": row[0]})
                    return int(row[0])
        return None

    return with_reconnect(attempt)()


def register_claimed(study: optuna.Study, rdb: optuna.storages.RDBStorage, trial_ids: list[int]) -> None:
    """Tell Optuna's _CachedStorage (where the study has one) about the trials a claim took behind its back.

    Its own sync (_read_trials_from_remote_storage) re-reads every unfinished trial of the study:
    with 64 workers that is ~130 trials and ~3,000 ORM rows per claim, which made coordination
    cost grow with the number of workers. The claimed trial is registered as unfinished, so any
    later sync (TPE's constant liar reads running trials) refreshes it the usual way.
    """
    cached = optuna_internals.storage_of(study)
    if cached is rdb:
        return
    for trial_id in trial_ids:
        optuna_internals.cache_claimed(cached, optuna_internals.study_id(study), rdb.get_trial(trial_id))


def claim_matching_postgres(rdb: optuna.storages.RDBStorage, study_id: int, window: int,
                            matches: Callable[[dict[str, Any]], bool], n: int,
                            read: bool) -> list[tuple[int, FrozenTrial | None]]:
    """PostgreSQL: take up to `n` of the oldest `window` waiting trials whose fixed parameters
    `matches` accepts; their ids (and, when `read`, the trials as claimed), in plan order (fewer,
    or none, when other workers got there first)."""

    def attempt() -> list[tuple[int, FrozenTrial | None]]:
        # Candidates: the oldest waiting trials' fixed parameters, filtered by the caller.
        with rdb.engine.connect() as conn:
            rows = conn.execute(_WAITING_FIXED_PARAMS, {"s": study_id, "w": window}).all()
        wanted = [int(r[0]) for r in rows if matches(json.loads(r[1]))]
        if not wanted:
            return []
        # One statement, as claim_next_postgres(): the row locks skip trials another worker is claiming
        # right now and the state test makes each a compare-and-set. Heartbeats start in the same transaction.
        with rdb.engine.begin() as conn:
            got = [int(r[0]) for r in conn.execute(
                _CLAIM_MANY_POSTGRES, {"ids": wanted, "n": n, "now": datetime.now()}).all()]
            got.sort()  # RETURNING has no order; plan order reads better in logs
            if rdb.heartbeat_interval:
                for trial_id in got:
                    conn.execute(HEARTBEAT, {"t": trial_id})
            return [(trial_id, read_trial(conn, trial_id) if read else None) for trial_id in got]

    return with_reconnect(attempt)()


def active_counts(rdb: optuna.storages.RDBStorage, study_id: int) -> tuple[int, int]:
    """(waiting, running) trials of the study, counted by the database."""

    def q() -> tuple[int, int]:
        with rdb.engine.connect() as conn:
            rows = conn.execute(_ACTIVE_COUNTS, {"s": study_id}).all()
        d = {r[0]: r[1] for r in rows}
        return int(d.get("WAITING", 0)), int(d.get("RUNNING", 0))

    return with_reconnect(q)()


def ensure_indexes(rdb: optuna.storages.RDBStorage) -> None:
    """PostgreSQL: claims and counts filter trials by (study, state): index it, so they stay cheap at 50k trials."""
    try:
        with rdb.engine.begin() as conn:
            conn.execute(_STUDY_STATE_INDEX)
    except Exception:  # noqa: BLE001 - concurrent creators race on the catalog; the index is an optimisation
        pass
