"""Riding out database restarts: storage calls that wait for the database instead of failing the worker."""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import optuna

from hpsearch import redact
from hpsearch.errors import HpsearchError
from hpsearch.storage import optuna_internals
from hpsearch.storage.postgres import LeanRDBStorage

log = logging.getLogger("hpsearch")
F = TypeVar("F", bound=Callable[..., Any])


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """An exception and up to four of its causes (Optuna wraps the driver's error)."""
    for _ in range(5):
        if exc is None:
            return
        yield exc
        exc = exc.__cause__ or exc.__context__


def reason(exc: BaseException) -> str:
    """The first line of what the driver said, password masked."""
    if type(exc).__name__ == "StorageInternalError" and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    line = next((t for t in text if t.strip()), type(exc).__name__)
    return redact.mask(line.strip())


def env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = math.nan
    # nan would wait forever (every comparison with it is False); inf too, by definition.
    if not math.isfinite(value) or value < 0:
        raise HpsearchError(f"{name} must be a number of seconds >= 0, but got {raw!r}")
    return value


def _is_transient(exc: BaseException | None) -> bool:
    """A lost or refused connection (Optuna wraps these in StorageInternalError: look at the cause)."""
    import sqlalchemy.exc as sa_exc

    return any(isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError))
               or (isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated) for e in causes(exc))


def lost_storage(exc: BaseException, url: str, command: str) -> str | None:
    """The one line for a command whose database went away past HPSEARCH_DB_WAIT (None: another error).

    Not the driver's "OperationalError: (psycopg2.OperationalError) ..." but which storage, what the
    driver said, and that running the command again is the way on (create-study finishes a creation
    it finds interrupted)."""
    if not _is_transient(exc):
        return None
    return (f"storage {redact.mask(url)} became unreachable during {command}: {reason(exc)}; {command} did not "
            "finish: run it again once the database is back (HPSEARCH_DB_WAIT says how long to wait for it)")


def with_reconnect(fn: F, max_wait: float | None = None) -> F:
    """Retry a storage call with exponential backoff while the database is unreachable."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        limit = max_wait if max_wait is not None else env_seconds("HPSEARCH_DB_WAIT", 600.0)
        delay, start = 0.5, time.monotonic()
        outer = not getattr(_timing, "depth", 0)
        _timing.depth = getattr(_timing, "depth", 0) + 1
        t0 = time.perf_counter()
        try:
            while True:
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    if not _is_transient(exc) or time.monotonic() - start > limit:
                        raise
                    log.warning("storage unreachable (%s); retrying in %.1fs", reason(exc), delay)
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 15.0)
        finally:
            _timing.depth -= 1
            if outer:
                _timing.seconds = getattr(_timing, "seconds", 0.0) + time.perf_counter() - t0

    return wrapper  # type: ignore[return-value]


_timing = threading.local()


def storage_seconds() -> float:
    """Seconds this thread has spent in database calls (the service's own cost, for benchmarks)."""
    return float(getattr(_timing, "seconds", 0.0))


class ResilientRDBStorage(LeanRDBStorage):
    """RDBStorage (lean on PostgreSQL) whose calls wait for the database instead of failing the worker."""


# Only the storage API (what Optuna's Study/Trial call) is wrapped; internals stay as they are.
_API = [n for n, f in vars(optuna.storages.BaseStorage).items() if inspect.isfunction(f) and not n.startswith("_")]
# ... plus the heartbeat, the private entry points Optuna's _CachedStorage calls on its backend, and hpsearch's own.
_OURS = ["record_heartbeat", "set_trial_user_attrs"]
for _name in [*_API, *optuna_internals.RDB_PRIVATE_CALLS, *_OURS]:
    _fn = getattr(LeanRDBStorage, _name, None)
    if inspect.isfunction(_fn):
        setattr(ResilientRDBStorage, _name, with_reconnect(_fn))
