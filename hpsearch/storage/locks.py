"""The study lock: reentrant in a process, around a cross-process lock the backend provides.

Each backend says what its cross-process lock is: a kernel file lock beside the storage (journal
file, SQLite), a PostgreSQL advisory lock held by a transaction of its own (`hpsearch repeat`), or
none (the gRPC proxy, whose keeper does what needs it). A backend holds one StudyLock per study
and purpose, so every thread of a process takes the same one and re-entering it is free.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

log = logging.getLogger("hpsearch.faults")  # where its waits were always logged
_TRY_LOCK = sa.text("SELECT pg_try_advisory_xact_lock(:k)")

Release = Callable[[], None]
Acquire = Callable[[], Release]  # takes the cross-process lock; returns what releases it


class StudyLock:
    """One study's lock in this process: an RLock for its threads, plus the backend's cross-process
    lock (`acquire`, None where there is none) while the outermost holder is inside."""

    def __init__(self, acquire: Acquire | None) -> None:
        self._acquire = acquire
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._release: Release | None = None

    def __enter__(self) -> StudyLock:
        self._thread_lock.acquire()
        self._depth += 1
        if self._depth == 1 and self._acquire is not None:
            try:
                self._release = self._acquire()
            except BaseException:
                self._depth -= 1
                self._thread_lock.release()
                raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._depth == 1 and self._release is not None:
                release, self._release = self._release, None
                release()
        finally:
            self._depth -= 1
            self._thread_lock.release()


def file_lock(path: Path) -> Release:
    """The lock file, locked: polled, so a waiter can say who holds it and for how long."""
    fh = open(path, "a+")  # noqa: SIM115 - held until the returned release() runs
    waited, delay, said = 0.0, 0.01, False
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.5)
            if waited > 30 and not said:
                said = True
                log.warning("the study lock %s has been held for %.0fs by another process (stopped?); waiting",
                            path, waited)
    try:  # who holds it, for a person looking; on a full disk the lock works without it
        fh.seek(0)
        fh.truncate()
        fh.write(f"{socket.gethostname()}:{os.getpid()}\n")
        fh.flush()
    except OSError:
        pass

    def release() -> None:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()

    return release


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


def release_connection(conn: Any) -> None:
    """Commit (a dropped connection releases the lock anyway) and close."""
    try:
        conn.commit()
    except Exception:  # noqa: BLE001 - a dropped connection releases the lock anyway
        pass
    conn.close()
