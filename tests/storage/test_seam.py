"""Nothing outside hpsearch/storage/ asks which backend a storage is: it calls the protocol.

Read from the source (every module of hpsearch outside storage/): no probe of a storage's kind (the
old backend_of() and its .lean/.rdb/.ours/.journal_lock/.lock_path fields), no isinstance() on
Optuna's storage classes, and no import of a backend's own modules. Each check is shown to catch
the probe it is about.
"""

from __future__ import annotations

import ast

import pytest

from conftest import ROOT

PROBE_NAMES = {"backend_of", "lean", "rdb", "ours", "journal_lock", "lock_path"}
STORAGE_CLASSES = {"RDBStorage", "JournalStorage", "GrpcStorageProxy", "InMemoryStorage", "_CachedStorage",
                   "LeanRDBStorage", "ResilientRDBStorage", "JournalFileBackend", "SafeJournalFileBackend"}
# A backend's own modules: the queue reaches them through hpsearch.storage.backends only.
BACKEND_MODULES = {"postgres", "postgres_queue", "database", "journal", "lockfile", "generic", "claims", "atomic",
                   "heartbeats", "locks", "kinds"}


def probes(source: str) -> list[str]:
    """What in `source` asks which backend a storage is (line: what)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute) and node.attr in PROBE_NAMES:
            found.append(f"{line}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id == "backend_of":  # a local `rdb` or `ours` is only a name
            found.append(f"{line}: {node.id}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
            classes = node.args[1] if len(node.args) > 1 else None
            names = {getattr(n, "attr", getattr(n, "id", None)) for n in ast.walk(classes)} if classes else set()
            if names & STORAGE_CLASSES:
                found.append(f"{line}: isinstance on {sorted(names & STORAGE_CLASSES)}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            imported = {a.name for a in node.names}
            if (parts[:2] == ["hpsearch", "storage"] and len(parts) > 2 and parts[2] in BACKEND_MODULES) or (
                    node.module == "hpsearch.storage" and imported & BACKEND_MODULES):
                found.append(f"{line}: from {node.module} import {', '.join(sorted(imported))}")
            if imported & PROBE_NAMES:
                found.append(f"{line}: import {sorted(imported & PROBE_NAMES)}")
    return found


def test_no_module_outside_storage_asks_which_backend_it_has() -> None:
    found = []
    for path in sorted((ROOT / "hpsearch").rglob("*.py")):
        if (ROOT / "hpsearch" / "storage") in path.parents:
            continue
        found += [f"{path.relative_to(ROOT)}:{p}" for p in probes(path.read_text())]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("source", [
    "from hpsearch.storage.kinds import backend_of\nrdb = backend_of(study).lean",
    "if backend.rdb is not None:\n    pass",
    "if isinstance(storage, optuna.storages.JournalStorage):\n    pass",
    "if isinstance(storage, (RDBStorage, int)):\n    pass",
    "from hpsearch.storage import atomic",
    "from hpsearch.storage.postgres import LeanRDBStorage",
    "lock = study_lock.lock_path",
])
def test_the_check_sees_a_probe(source: str) -> None:
    assert probes(source)


@pytest.mark.parametrize("source", [
    "from hpsearch.storage import backends, bulk, optuna_internals\nbackends.of(study).claim(study)",
    "ours, rdb = compose(user), open_storage(url)",
    "from hpsearch.storage.backend import open_storage, kind\nif kind(url) == 'journal':\n    pass",
    "if isinstance(exc, optuna.exceptions.StorageInternalError):\n    pass",
])
def test_the_check_lets_the_protocol_through(source: str) -> None:
    assert probes(source) == []
