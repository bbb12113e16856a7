"""hpsearch's reach into Optuna stays inside its own storages: Optuna's classes are left as they are,
a different Optuna release stops with one line, and the backend of a storage is built once."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

import hpsearch.storage  # noqa: F401 - what a process running hpsearch has imported
from hpsearch.errors import HpsearchError
from hpsearch.storage import backends, optuna_internals
from hpsearch.storage.backend import kind, open_storage
from hpsearch.storage.database import DatabaseBackend
from hpsearch.storage.generic import OptunaBackend
from hpsearch.storage.journal import JournalBackend
from hpsearch.storage.postgres import LeanRDBStorage
from hpsearch.storage.postgres_queue import PostgresBackend
from hpsearch.storage.reconnect import ResilientRDBStorage


def test_a_plain_rdb_storage_keeps_optunas_schema_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing hpsearch's storages patches no Optuna class: the dashboard's storage, or a user's,
    runs Optuna's own schema check; only hpsearch's storage runs its one-connection-at-a-time check."""
    from optuna.storages._rdb.storage import _VersionManager

    method = _VersionManager.check_table_schema_compatibility
    assert method.__module__ == "optuna.storages._rdb.storage"
    assert method.__qualname__ == "_VersionManager.check_table_schema_compatibility"

    url = f"sqlite:///{tmp_path / 'plain.db'}"
    optuna.storages.RDBStorage(url).engine.dispose()  # creates the tables
    calls: list[object] = []

    def spy(self: object) -> None:
        calls.append(self)
        method(self)

    monkeypatch.setattr(_VersionManager, "check_table_schema_compatibility", spy)
    plain = optuna.storages.RDBStorage(url)
    assert len(calls) == 1, "a plain RDBStorage runs Optuna's own check"
    ours = LeanRDBStorage(url)
    assert len(calls) == 1, "hpsearch's storage compares the versions first (they match: no session held)"
    plain.engine.dispose()
    ours.engine.dispose()


def test_a_stale_schema_still_gets_optunas_message(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    optuna.storages.RDBStorage(url).engine.dispose()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'v3.0.0.a'"))
    engine.dispose()
    with pytest.raises(RuntimeError, match="no longer compatible with the table schema"):
        LeanRDBStorage(url)
    LeanRDBStorage(url, skip_compatibility_check=True).engine.dispose()  # asked to skip: it does


def test_another_optuna_release_stops_with_one_line() -> None:
    with pytest.raises(HpsearchError) as info:
        optuna_internals.check_version("4.9.0")
    message = str(info.value)
    assert "\n" not in message
    assert "optuna==5.0.0" in message and "4.9.0" in message
    optuna_internals.check_version(optuna_internals.OPTUNA_VERSION)


def test_the_backend_is_built_once_and_seen_through_optunas_cache(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kind.db'}"
    storage = open_storage(url, create=True)
    assert isinstance(storage, ResilientRDBStorage)
    backend = backends.of(storage)
    assert isinstance(backend, DatabaseBackend) and backend.name == kind(url) == "sqlite"
    study = optuna.create_study(storage=storage)
    assert backends.of(study) is backend  # the study's storage is Optuna's cache around ours: the same one
    assert backend.rdb is storage and backend.lock_path == (tmp_path / "kind.lock")
    assert backend.workers_keep_queue and backend.serial_writes
    storage.engine.dispose()


def test_storages_hpsearch_did_not_open_get_a_backend_the_first_time(tmp_path: Path) -> None:
    memory = optuna.storages.InMemoryStorage()
    assert type(backends.of(memory)) is OptunaBackend and backends.of(memory).name == "other"
    assert backends.of(memory) is backends.of(memory)
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))
    backend = backends.of(journal)
    assert isinstance(backend, JournalBackend) and backend.name == kind(f"journal:{tmp_path / 'j.log'}")
    assert backend.lock_path == Path(str(tmp_path / "j.log") + ".hpsearch.lock")
    assert backend.writable(1.0)
    plain = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'p.db'}")
    assert isinstance(backends.of(plain), DatabaseBackend) and backends.of(plain).rdb is plain
    plain.engine.dispose()


def test_hpsearch_postgres_storage_is_lean(pg_session_db: str) -> None:
    storage = open_storage(pg_session_db, create=True)
    backend = backends.of(storage)
    assert isinstance(backend, PostgresBackend) and backend.rdb is storage
    assert backend.name == kind(pg_session_db) == "postgresql"
    assert backend.workers_keep_queue and not backend.serial_writes
