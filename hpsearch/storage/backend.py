"""Storage URL resolution, RDBStorage with heartbeat, the embedded journal file, password masking.

Storage is chosen by `--storage`, else `HPSEARCH_STORAGE`, else the embedded default: an Optuna
journal file under ./.hpsearch/ (no server; exactly-once claims through the journal's ordered
log; optuna-dashboard reads it). PostgreSQL is the storage for clusters.
"""

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
from pathlib import Path
from typing import Any, TypeVar

import optuna

from hpsearch import redact
from hpsearch.errors import HpsearchError, StorageUnavailable
from hpsearch.storage.postgres import LeanRDBStorage

log = logging.getLogger("hpsearch")
DEFAULT_DIR = ".hpsearch"
DEFAULT_JOURNAL = "journal.log"
# mask() lives in a light module so the command line can hide a password before optuna loads.
mask = redact.mask


class MaskingFilter(logging.Filter):
    """Installed on the root logger's handlers so no library logs a password."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask(record.getMessage())
        record.args = ()
        return True


def default_url() -> str:
    return f"journal:{Path(DEFAULT_DIR) / DEFAULT_JOURNAL}"


def resolve_url(url: str | None) -> str:
    url = url or os.environ.get("HPSEARCH_STORAGE") or default_url()
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if "://" not in url and not url.startswith("journal:"):
        # A bare path is a journal file (what optuna-dashboard also accepts).
        url = f"journal:{url}"
    return url


def kind(url: str) -> str:
    if url.startswith("journal:"):
        return "journal"
    if url.startswith("grpc://"):
        return "grpc"
    if url.startswith("sqlite"):
        return "sqlite"
    if url.startswith(("postgresql", "mysql")):
        return "rdb"
    raise HpsearchError(
        f"storage {mask(url)!r} must be postgresql://..., sqlite:///..., grpc://host:port or a journal file path"
    )


def journal_path(url: str) -> Path:
    return Path(url[len("journal:"):]).expanduser()


def dashboard_target(url: str) -> str:
    """What to hand to optuna-dashboard for this storage (a path for journal files)."""
    return str(journal_path(url)) if kind(url) == "journal" else url


def open_storage(
    url: str | None = None,
    *,
    create: bool = False,
    heartbeat: int | None = None,
    retry_callback: Callable[[optuna.study.Study, optuna.trial.FrozenTrial], None] | None = None,
    pool_size: int = 2,
) -> optuna.storages.BaseStorage:
    """Open the storage; `create` allows creating a journal file or database tables."""
    url = shown = resolve_url(url)
    k = kind(url)
    if k == "sqlite":
        _warn_sqlite(url)
    try:
        if k == "journal":
            from hpsearch.storage.journal import SafeJournalFileBackend

            path = journal_path(url)
            if not path.exists():
                if not create:
                    raise StorageUnavailable(f"storage {path} does not exist; create a study first (hpsearch create-study SPEC)")
                path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(SafeJournalFileBackend(str(path)))
        if k == "grpc":
            host, _, port = url[len("grpc://"):].rstrip("/").rpartition(":")
            if not port.isdigit():
                raise HpsearchError(f"storage {url!r} must be grpc://host:port")
            storage = optuna.storages.GrpcStorageProxy(host=host or "localhost", port=int(port))
            storage.wait_server_ready(timeout=30)
            return storage
        engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if k == "rdb":
            # A worker needs one connection for trials and one for its heartbeat thread.
            engine_kwargs.update(pool_size=pool_size, max_overflow=2, pool_recycle=1800)
            if url.startswith("postgresql"):
                engine_kwargs["connect_args"] = {"connect_timeout": 10, "application_name": "hpsearch"}
        elif k == "sqlite":
            engine_kwargs["connect_args"] = {"timeout": 60}
        if url.startswith("postgresql://"):
            # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; we ship psycopg2.
            url = "postgresql+psycopg2://" + url[len("postgresql://"):]
        started, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            try:
                return _bounded_transactions(ResilientRDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    skip_table_creation=not create,
                    heartbeat_interval=heartbeat,
                    grace_period=2 * heartbeat if heartbeat else None,
                    heartbeat_stale_trial_callback=retry_callback if heartbeat else None,
                ))
            except Exception as exc:
                text = _chain_text(exc)
                # Several create-study processes on a fresh database race to create the tables;
                # the losers see "duplicate key"/"already exists" and simply open what the winner made.
                race = create and attempt < 6 and ("duplicate key" in text or "already exists" in text)
                # A server or pooler that is up but swamped (a job array's 200 workers logging in
                # at the same second) times out or drops the login: wait for it, for a while.
                # A refused connection, a wrong password or an unknown database fails at once.
                swamped = any(s in text for s in _SWAMPED) and time.monotonic() - started < _connect_wait()
                if not (race or swamped):
                    raise
                time.sleep(min(0.2 * attempt, 5.0) * (0.5 + random.random()))
    except HpsearchError:
        raise
    except Exception as exc:  # sqlalchemy/grpc raise many types; all mean "cannot use this storage"
        raise StorageUnavailable(f"cannot open storage {mask(shown)}: {_reason(exc)}") from None


_SQLITE_WARNED: list[bool] = []  # once per process: status --watch or a worker opens it again and again


def _warn_sqlite(url: str) -> None:
    if _SQLITE_WARNED:
        return
    _SQLITE_WARNED.append(True)
    log.warning("storage %s is SQLite, which has no row locks: two workers can take the same waiting "
                "trial, and it locks up under concurrent writes; use the journal file (the default) on one "
                "machine or PostgreSQL (README: Storage)", mask(url))


def _bounded_transactions(storage: ResilientRDBStorage) -> ResilientRDBStorage:
    """On PostgreSQL, the server ends a session that sits idle inside a transaction.

    Every transaction hpsearch (and Optuna under it) opens runs its statements back to back; one
    that goes quiet is a process that was stopped (SIGSTOP, a frozen VM, a partition) while it
    held row locks or the study lock, and would block every other worker for as long as it stays
    stopped. Ending it rolls its half-done work back; the process finds out when it resumes.
    """
    if storage.engine.dialect.name != "postgresql":
        return storage
    import sqlalchemy as sa

    from hpsearch.storage.atomic import HOLDER_IDLE_LIMIT_S

    def settings(dbapi_conn: Any, record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET idle_in_transaction_session_timeout = {int(HOLDER_IDLE_LIMIT_S * 1000)}")
        dbapi_conn.commit()

    sa.event.listen(storage.engine, "connect", settings)
    storage.engine.dispose()  # the connections opened while checking the schema predate the setting
    return storage


_SWAMPED = ("timeout expired", "server closed the connection unexpectedly", "query_wait_timeout")


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    """An exception and up to four of its causes (Optuna wraps the driver's error)."""
    for _ in range(5):
        if exc is None:
            return
        yield exc
        exc = exc.__cause__ or exc.__context__


def _chain_text(exc: BaseException) -> str:
    return " | ".join(str(getattr(e, "orig", None) or e) for e in _causes(exc))


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = math.nan
    # nan would wait forever (every comparison with it is False); inf too, by definition.
    if not math.isfinite(value) or value < 0:
        raise HpsearchError(f"{name} must be a number of seconds >= 0, but got {raw!r}")
    return value


def _connect_wait() -> float:
    return _env_seconds("HPSEARCH_CONNECT_WAIT", 120.0)


def _reason(exc: BaseException) -> str:
    if type(exc).__name__ == "StorageInternalError" and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    line = next((t for t in text if t.strip()), type(exc).__name__)
    return mask(line.strip())


# ---------------------------------------------------------------- riding out database restarts

F = TypeVar("F", bound=Callable[..., Any])


def _is_transient(exc: BaseException | None) -> bool:
    """A lost or refused connection (Optuna wraps these in StorageInternalError: look at the cause)."""
    import sqlalchemy.exc as sa_exc

    return any(isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError))
               or (isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated) for e in _causes(exc))


def with_reconnect(fn: F, max_wait: float | None = None) -> F:
    """Retry a storage call with exponential backoff while the database is unreachable."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        limit = max_wait if max_wait is not None else _env_seconds("HPSEARCH_DB_WAIT", 600.0)
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
                    log.warning("storage unreachable (%s); retrying in %.1fs", _reason(exc), delay)
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
# ... plus the private entry points Optuna's _CachedStorage calls on its backend, and hpsearch's own.
_PRIVATE = ["record_heartbeat", "_get_stale_trial_ids", "_get_trials", "_create_new_trial", "_set_trial_param",
            "_get_best_trial_id"]
_OURS = ["set_trial_user_attrs"]
for _name in [*_API, *_PRIVATE, *_OURS]:
    _fn = getattr(LeanRDBStorage, _name, None)
    if inspect.isfunction(_fn):
        setattr(ResilientRDBStorage, _name, with_reconnect(_fn))


def artifact_location(url: str | None = None) -> str:
    """Where this storage's checkpoints go, as an absolute path or s3:// URL.

    create-study records it in the study, so a retry started on another machine or in another
    directory finds the checkpoint its predecessor wrote (a relative default would not).
    """
    target = os.environ.get("HPSEARCH_ARTIFACTS", "")
    if target.startswith("s3://"):
        return target
    if not target:
        url = resolve_url(url)
        base = journal_path(url).parent if kind(url) == "journal" else Path(DEFAULT_DIR)
        target = str(base / "artifacts")
    return str(Path(target).expanduser().absolute())


def artifact_store(url: str | None = None, recorded: str | None = None) -> Any:
    """Checkpoints: a directory (shared across machines on a cluster) or S3.

    HPSEARCH_ARTIFACTS wins, then the location the study recorded at create-study (`recorded`),
    then the default beside the journal (./.hpsearch/artifacts for database storages).
    """
    from optuna.artifacts import FileSystemArtifactStore

    target = recorded if recorded and not os.environ.get("HPSEARCH_ARTIFACTS") else artifact_location(url)
    if target.startswith("s3://"):
        return _s3_store(target)
    try:
        Path(target).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        # A checkpoint is an optimisation: trials run without one (each says so once).
        log.warning("artifacts directory %s cannot be created (%s); trials run without checkpoints",
                    target, exc.strerror or exc)
    return FileSystemArtifactStore(target)


def _s3_store(target: str) -> Any:
    from optuna.artifacts import Boto3ArtifactStore

    try:
        import boto3
    except ImportError:
        raise HpsearchError(f"HPSEARCH_ARTIFACTS={target} needs boto3, but it is not installed: "
                            "pip install 'hpsearch[s3]'") from None
    bucket = target[len("s3://"):].split("/")[0]
    if not bucket:
        raise HpsearchError(f"HPSEARCH_ARTIFACTS must be s3://BUCKET, but got {target=}")
    # AWS_ENDPOINT_URL selects an S3-compatible server (MinIO, Ceph, moto); boto3 reads
    # credentials and region the usual way (environment, ~/.aws).
    return Boto3ArtifactStore(bucket, client=boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL")))
