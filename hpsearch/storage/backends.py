"""Which backend a storage is, decided once per storage: the object the queue calls (hpsearch.storage.protocol).

open_storage builds it when it opens a storage; any other storage (a test's, a user's, the cache
optuna.load_study puts around an RDB storage) gets its own the first time it is asked for, from
the type of the storage under Optuna's cache. It is remembered beside the storage object, never
probed again. The backends, by their one vocabulary of names (storage.backend.kind(url) says the
same of a URL):

    postgresql   hpsearch's PostgreSQL storage         hpsearch.storage.postgres_queue.PostgresBackend
    sqlite, ...  SQLite, another database (Optuna's)   hpsearch.storage.database.DatabaseBackend
    journal      Optuna's journal (the embedded file)  hpsearch.storage.journal.JournalBackend
    grpc         `hpsearch proxy`                      hpsearch.storage.grpc_proxy.GrpcBackend
    other        Optuna's in-memory storage, or any    hpsearch.storage.generic.OptunaBackend

A new backend is one class implementing the protocol, and one line in build().
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

import optuna

from hpsearch.storage import optuna_internals

if TYPE_CHECKING:
    from hpsearch.storage.protocol import QueueStorage

_BUILT: weakref.WeakKeyDictionary[optuna.storages.BaseStorage, QueueStorage] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def of(study_or_storage: optuna.Study | optuna.storages.BaseStorage) -> QueueStorage:
    """The backend of a study's storage (or of a storage), built the first time and then remembered."""
    storage = (optuna_internals.storage_of(study_or_storage) if isinstance(study_or_storage, optuna.Study)
               else study_or_storage)
    inner = optuna_internals.unwrap_cached(storage)
    backend = _BUILT.get(inner)
    if backend is None:
        with _GUARD:  # one per storage, whichever thread asks first
            backend = _BUILT.get(inner)
            if backend is None:
                backend = _BUILT[inner] = build(inner)
    return backend


def build(storage: optuna.storages.BaseStorage) -> QueueStorage:
    """A new backend object for `storage` (the storage itself, not Optuna's cache around it)."""
    if isinstance(storage, optuna.storages.RDBStorage):
        from hpsearch.storage.postgres import LeanRDBStorage

        if isinstance(storage, LeanRDBStorage) and storage.engine.dialect.name == "postgresql":
            from hpsearch.storage.postgres_queue import PostgresBackend

            return PostgresBackend(storage)
        from hpsearch.storage.database import DatabaseBackend

        return DatabaseBackend(storage)
    if isinstance(storage, optuna.storages.JournalStorage):
        from hpsearch.storage.journal import JournalBackend

        return JournalBackend(storage)
    if isinstance(storage, optuna.storages.GrpcStorageProxy):
        from hpsearch.storage.grpc_proxy import GrpcBackend

        return GrpcBackend(storage)
    from hpsearch.storage.generic import OptunaBackend

    return OptunaBackend(storage)
