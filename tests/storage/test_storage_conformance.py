"""hpsearch's PostgreSQL storage held to Optuna's own contract: the conformance suite every Optuna
storage passes (optuna.testing.pytest_storages.StorageTestCase), run against the storage workers
really use (LeanRDBStorage's one-statement paths, the reconnecting wrapper, bounded transactions),
not only against the statements hpsearch happens to issue today."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from optuna.testing.pytest_storages import StorageTestCase

from hpsearch.storage.backend import open_storage
from hpsearch.storage.postgres import LeanRDBStorage

_KEEP = {"alembic_version", "version_info"}  # the schema's version rows: created once, kept


@pytest.fixture(scope="module")
def _conformance_storage(pg_server: str) -> Iterator[Any]:
    from conftest import _create_db, _drop_db

    name = _create_db("hpsearch_conf")
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    open_storage(url, create=True).engine.dispose()
    store = open_storage(url, heartbeat=60)
    assert isinstance(store, LeanRDBStorage) and store.lean
    yield store
    store.engine.dispose()
    _drop_db(name)


@pytest.fixture
def storage(_conformance_storage: Any) -> Any:
    """The hpsearch storage, emptied before each test (the suite counts every study in it)."""
    with _conformance_storage.engine.begin() as conn:
        tables = [t for t in sa.inspect(conn).get_table_names() if t not in _KEEP]
        conn.execute(sa.text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    return _conformance_storage


class TestHpsearchPostgresStorage(StorageTestCase):
    """Every test of Optuna's suite, inherited unchanged."""
