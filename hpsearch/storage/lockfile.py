"""A storage whose critical sections are writes under a kernel file lock beside it (journal file, SQLite).

The storage's own writes are each atomic but a critical section is several of them, so the study
lock is a file beside the storage that every process takes (polled, so a waiter can say who holds
it); the kernel drops it with its holder however it dies. One writer at a time is also how the
storage itself writes, so a process stopped while it writes stalls everyone (serial_writes).
"""

from __future__ import annotations

from pathlib import Path

import optuna

from hpsearch.storage.generic import OptunaBackend
from hpsearch.storage.locks import Acquire, file_lock


class LockFileBackend(OptunaBackend):
    def __init__(self, storage: optuna.storages.BaseStorage, lock_path: Path | None) -> None:
        super().__init__(storage)
        self.lock_path = lock_path  # None: no file to lock (a journal in Redis, MySQL): no cross-process lock
        # Without a cross-process lock, the workers cannot issue the plan or reap safely.
        self.workers_keep_queue = self.serial_writes = lock_path is not None

    def _cross_process_lock(self, study_name: str, purpose: str) -> Acquire | None:
        path = self.lock_path
        return None if path is None else lambda: file_lock(path)
