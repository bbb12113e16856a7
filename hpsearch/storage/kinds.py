"""Which backend a storage is (PostgreSQL, SQLite, another database, journal file, gRPC proxy), decided once.

The queue takes a different path per backend: one SQL transaction on PostgreSQL, a lock file and
the storage's own compare-and-set on the journal file and SQLite, the proxy's keeper behind gRPC.
backend_of() is the one place that tells them apart, for storages open_storage opened and for any
other (a test, a user calling optuna directly, the cache optuna.load_study puts around an RDB
storage): the type of the storage under Optuna's cache says it, so there is nothing to remember.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from hpsearch.storage import optuna_internals
from hpsearch.storage.postgres import LeanRDBStorage

POSTGRES = "postgresql"
SQLITE = "sqlite"
JOURNAL = "journal"
GRPC = "grpc"
OTHER = "other"  # Optuna's in-memory storage, or a storage hpsearch does not know
# Any other database is its SQLAlchemy dialect's name ("mysql", ...).


@dataclass(frozen=True)
class Backend:
    kind: str
    rdb: optuna.storages.RDBStorage | None = None  # the database storage (under Optuna's cache)
    journal: Any = None  # the log backend under a JournalStorage

    @property
    def ours(self) -> LeanRDBStorage | None:
        """hpsearch's own database storage (any database; None for a plain Optuna RDBStorage)."""
        return self.rdb if isinstance(self.rdb, LeanRDBStorage) else None

    @property
    def lean(self) -> LeanRDBStorage | None:
        """hpsearch's own PostgreSQL storage, where every critical section is one transaction."""
        return self.ours if self.kind == POSTGRES else None

    @property
    def lock_path(self) -> Path | None:
        """The study lock's file beside the storage (journal file, SQLite); None where there is none."""
        if self.kind == SQLITE and self.rdb is not None:
            return Path(self.rdb.engine.url.database or "hpsearch.sqlite").with_suffix(".lock")
        path = optuna_internals.journal_file_path(self.journal) if self.journal is not None else None
        return None if path is None else Path(path + ".hpsearch.lock")

    @property
    def journal_lock(self) -> Any:
        """The lock every append to the journal file takes (None elsewhere)."""
        return optuna_internals.journal_lock(self.journal) if self.journal is not None else None


def backend_of(study_or_storage: optuna.Study | optuna.storages.BaseStorage) -> Backend:
    """The backend of a study's storage (or of a storage), the one answer every backend test uses."""
    storage = (optuna_internals.storage_of(study_or_storage) if isinstance(study_or_storage, optuna.Study)
               else study_or_storage)
    inner = optuna_internals.unwrap_cached(storage)
    rdb = inner if isinstance(inner, optuna.storages.RDBStorage) else None
    return Backend(_kind(inner), rdb, optuna_internals.journal_backend(inner))


def _kind(storage: optuna.storages.BaseStorage) -> str:
    if isinstance(storage, optuna.storages.RDBStorage):
        return str(storage.engine.dialect.name)
    if isinstance(storage, optuna.storages.GrpcStorageProxy):
        return GRPC
    if isinstance(storage, optuna.storages.JournalStorage):
        return JOURNAL
    return OTHER
