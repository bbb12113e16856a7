"""PostgreSQL advisory locks held by a transaction of their own (the study lock of `hpsearch repeat`)."""

from __future__ import annotations

import random
import time
from typing import Any

import sqlalchemy as sa

_TRY_LOCK = sa.text("SELECT pg_try_advisory_xact_lock(:k)")


def advisory_xact_lock(engine: Any, key: int) -> Any:
    """An open connection whose transaction holds the advisory lock `key`; commit or close it to release.

    Transaction-scoped: released on commit or on a dropped connection, so it works behind
    pgbouncer's transaction pooling. Waiters poll with try-lock rather than block: a blocked waiter
    pins a server connection, and with a bounded pool (pgbouncer) enough of them starve the holder.
    """
    delay = 0.02
    while True:
        conn = engine.connect()
        conn.begin()
        if conn.execute(_TRY_LOCK, {"k": key}).scalar():
            return conn
        conn.rollback()
        conn.close()
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.5)
