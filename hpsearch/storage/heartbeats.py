"""How long running trials have been silent, by the database clock, in one query over running trials only.

Workers beat in Optuna's trial_heartbeats table, or (behind the gRPC proxy) as a trial attribute
holding unix time; either counts. On PostgreSQL nobody could beat while the server was down, so
silence counts from the server's start at most; other databases (SQLite) have no such clock.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy as sa

from hpsearch.storage.reconnect import with_reconnect

_NOW_AND_START = sa.text("SELECT now(), pg_postmaster_start_time()")
_NOW = sa.text("SELECT CURRENT_TIMESTAMP")  # the clock Optuna's record_heartbeat writes with, on any database
_RUNNING_BEATS = sa.text(
    "SELECT t.trial_id, h.heartbeat, a.value_json, b.value_json FROM trials t "
    "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
    "LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = :k "
    "LEFT JOIN trial_user_attributes b ON b.trial_id = t.trial_id AND b.key = :beat "
    "WHERE t.study_id = :s AND t.state = 'RUNNING' "
    "AND (h.heartbeat IS NOT NULL OR b.value_json IS NOT NULL)")


def _naive(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=None)


def ages_and_intervals(rdb: optuna.storages.RDBStorage, study_id: int, interval_key: str, beat_key: str,
                       default_interval: float, postgres: bool) -> dict[int, tuple[float, float]]:
    """trial_id -> (seconds since its last heartbeat, its heartbeat interval) of every running trial
    that has beaten; the interval is the trial's `interval_key` attribute, else `default_interval`."""

    def q() -> dict[int, tuple[float, float]]:
        with rdb.engine.connect() as conn:
            if postgres:
                now, up = conn.execute(_NOW_AND_START).first()
                now, uptime = _naive(now), (_naive(now) - _naive(up)).total_seconds()
            else:
                now, uptime = _naive(conn.execute(_NOW).scalar()), float("inf")
            rows = conn.execute(_RUNNING_BEATS, {"s": study_id, "k": interval_key, "beat": beat_key}).all()
        wall = time.time()
        return {int(r[0]): (min(uptime, (now - _naive(r[1])).total_seconds() if r[1] is not None
                                else wall - float(json.loads(r[3]))),
                            float(json.loads(r[2])) if r[2] is not None else default_interval) for r in rows}

    return with_reconnect(q)()
