"""SQLite, or another database through Optuna's RDBStorage, as a queue.

Claims are SQL (a read, then the guarded update, with the first heartbeat, in one transaction),
heartbeats go to Optuna's heartbeat table and their ages are read by the database clock. SQLite
has no row locks: the critical sections are writes under a lock file beside the database (as on
the journal file). Another database has no file to lock; its workers do not issue or reap.
"""

from __future__ import annotations

from pathlib import Path

import optuna

from hpsearch.schema import BEAT, BEAT_INTERVAL
from hpsearch.storage import claims, heartbeats, optuna_internals
from hpsearch.storage.lockfile import LockFileBackend
from hpsearch.storage.postgres import LeanRDBStorage


class DatabaseBackend(LockFileBackend):
    def __init__(self, rdb: optuna.storages.RDBStorage) -> None:
        self.rdb = rdb
        self.name = str(rdb.engine.dialect.name)  # sqlite, mysql, ... (a plain Optuna RDBStorage: postgresql too)
        lock_path = None
        if self.name == "sqlite":
            lock_path = Path(rdb.engine.url.database or "hpsearch.sqlite").with_suffix(".lock")
        super().__init__(rdb, lock_path)

    def claim(self, study: optuna.Study) -> int | None:
        trial_id = claims.claim_next(self.rdb, optuna_internals.study_id(study))
        if trial_id is not None:
            claims.register_claimed(study, self.rdb, [trial_id])
        return trial_id

    def beat(self, study: optuna.Study, trial_id: int) -> None:
        if isinstance(self.rdb, LeanRDBStorage):
            # Not through the reconnecting wrapper: its backoff (up to 15 s a try) would leave
            # beats unsent for long after the database is back. The heartbeat retries on its own.
            self.rdb.record_heartbeat_once(trial_id)
        else:
            self.rdb.record_heartbeat(trial_id)

    def beat_ages(self, study: optuna.Study, default_interval: float) -> dict[int, tuple[float, float]]:
        return heartbeats.ages_and_intervals(self.rdb, optuna_internals.study_id(study), BEAT_INTERVAL, BEAT,
                                             default_interval, postgres=False)

    def active_counts(self, study: optuna.Study) -> tuple[int, int]:
        return claims.active_counts(self.rdb, optuna_internals.study_id(study))
