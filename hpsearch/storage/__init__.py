"""The storage seam: opening a storage (PostgreSQL, journal file, SQLite, gRPC proxy), every SQL statement, locks, heartbeats and bulk reads."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy: importing a light submodule of hpsearch.storage does not load Optuna for this.
    if name in ("Backend", "backend_of"):
        from hpsearch.storage import kinds

        return getattr(kinds, name)
    raise AttributeError(f"module 'hpsearch.storage' has no attribute {name!r}")
