"""The study lock: one cross-process lock per study, around the queue's critical sections.

On PostgreSQL those sections are single transactions that take the study's advisory lock
themselves (hpsearch.storage.atomic); on the journal file and SQLite the lock is a file beside
the storage; through the gRPC proxy there is none (the proxy's keeper does what needs it).
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import optuna

from hpsearch.queue.study import worker_id
from hpsearch.storage import locks, optuna_internals
from hpsearch.storage.kinds import backend_of
from hpsearch.storage.reconnect import with_reconnect

log = logging.getLogger("hpsearch.faults")  # where its waits were always logged


class StudyLock:
    """A cross-process lock per study.

    On PostgreSQL the queue's critical sections (hpsearch.storage.atomic) take the study's advisory lock
    inside their own transaction, so entering this lock there only serialises threads of this
    process (unless `purpose` names a separate lock, as `hpsearch repeat` does). On the journal
    file and SQLite it is a lock file beside the storage, polled with a bounded wait.
    """

    _locks: dict[int, StudyLock] = {}

    def __init__(self, study: optuna.Study, url: str | None = None, purpose: str = "") -> None:
        self.study = study
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._conn: Any = None
        self._fh: Any = None
        backend = backend_of(study)
        self.rdb = backend.rdb
        self.postgres = backend.lean is not None
        self.key = study_key(study.study_name + (f":{purpose}" if purpose else ""))
        self.purpose = purpose
        self.path: Path | None = backend.lock_path
        if not purpose:
            StudyLock._locks[optuna_internals.study_id(study)] = self

    @property
    def available(self) -> bool:
        """False through the gRPC proxy: there, the proxy's keeper does what needs the lock."""
        return self.path is not None or self.postgres

    @classmethod
    def of(cls, study: optuna.Study) -> StudyLock:
        return cls._locks.get(optuna_internals.study_id(study)) or cls(study)

    def __enter__(self) -> StudyLock:
        self._thread_lock.acquire()
        self._depth += 1
        if self._depth == 1:
            try:
                if self.postgres and self.purpose:
                    self._conn = with_reconnect(locks.advisory_xact_lock)(self.rdb.engine, self.key)  # type: ignore[union-attr]
                elif self.path is not None:
                    self._fh = _flock(self.path)
            except BaseException:
                self._depth -= 1
                self._thread_lock.release()
                raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._depth == 1:
                if self._conn is not None:
                    try:
                        self._conn.commit()
                    except Exception:  # noqa: BLE001 - a dropped connection releases the lock anyway
                        pass
                    self._conn.close()
                    self._conn = None
                if self._fh is not None:
                    fcntl.flock(self._fh, fcntl.LOCK_UN)
                    self._fh.close()
                    self._fh = None
        finally:
            self._depth -= 1
            self._thread_lock.release()


def study_key(name: str) -> int:
    """The study's PostgreSQL advisory lock key."""
    return (0x6870 << 32) | (zlib.crc32(name.encode()) & 0x7FFFFFFF)


def _flock(path: Path) -> Any:
    """The lock file, locked: polled, so a waiter can say who holds it and for how long."""
    fh = open(path, "a+")  # noqa: SIM115 - held across __enter__/__exit__
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
        fh.write(f"{worker_id()}\n")
        fh.flush()
    except OSError:
        pass
    return fh
