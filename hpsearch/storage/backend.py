"""Storage URL resolution, opening a storage (RDBStorage with heartbeat, the embedded journal file), password masking.

Storage is chosen by `--storage`, else `HPSEARCH_STORAGE`, else the embedded default: an Optuna
journal file under ./.hpsearch/ (no server; exactly-once claims through the journal's ordered
log; optuna-dashboard reads it). PostgreSQL is the storage for clusters. Opening a storage also
builds its queue backend (hpsearch.storage.backends), named as kind(url) names the URL.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import optuna

from hpsearch import redact
from hpsearch.errors import HpsearchError, StorageUnavailable
from hpsearch.storage.reconnect import ResilientRDBStorage, causes, env_seconds, reason

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
    """The backend a (resolved) URL opens, by the name its queue backend has (hpsearch.storage.backends)."""
    if url.startswith("journal:"):
        return "journal"
    if url.startswith(("grpc://", "grpcs://")):
        return "grpc"
    if url.startswith("sqlite"):
        return "sqlite"
    if url.startswith("postgresql"):
        return "postgresql"
    if url.startswith("mysql"):
        return "mysql"
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
    pool_size: int = 2,
) -> optuna.storages.BaseStorage:
    """Open the storage; `create` allows creating a journal file or database tables.

    Its queue backend is built here, once (hpsearch.storage.backends.of finds it again).
    """
    from hpsearch.storage import backends

    url = resolve_url(url)
    k = kind(url)
    if k == "sqlite":
        _warn_sqlite(url)
    try:
        if k == "journal":
            storage: optuna.storages.BaseStorage = _open_journal(url, create)
        elif k == "grpc":
            storage = _open_grpc(url)
        else:
            storage = _open_rdb(url, create, heartbeat, pool_size)
        backends.of(storage)
        return storage
    except HpsearchError:
        raise
    except Exception as exc:  # sqlalchemy/grpc raise many types; all mean "cannot use this storage"
        raise StorageUnavailable(f"cannot open storage {mask(url)}: {reason(exc)}") from None


def _open_journal(url: str, create: bool) -> optuna.storages.JournalStorage:
    from hpsearch.storage.journal import SafeJournalFileBackend

    path = journal_path(url)
    if not path.exists():
        if not create:
            raise StorageUnavailable(f"storage {path} does not exist; create a study first (hpsearch create-study SPEC)")
        path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(SafeJournalFileBackend(str(path)))


def _open_grpc(url: str) -> optuna.storages.GrpcStorageProxy:
    from hpsearch.storage.grpc_proxy import open_proxy

    return open_proxy(url)  # with the token (hpsearch.storage.token), over TLS for grpcs://


def _engine_kwargs(url: str, pool_size: int) -> dict[str, Any]:
    # PostgreSQL pings only the connections that sat idle (_ping_when_idle); the others ping each checkout.
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": kind(url) != "postgresql"}
    if kind(url) in ("postgresql", "mysql"):
        # A worker needs one connection for trials and one for its heartbeat thread.
        engine_kwargs.update(pool_size=pool_size, max_overflow=2, pool_recycle=1800)
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10, "application_name": "hpsearch"}
    else:
        engine_kwargs["connect_args"] = {"timeout": 60}
    return engine_kwargs


def _open_rdb(url: str, create: bool, heartbeat: int | None, pool_size: int) -> ResilientRDBStorage:
    engine_kwargs = _engine_kwargs(url, pool_size)
    if url.startswith("postgresql://"):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is installed too, so the same URL
        # works in plain Optuna tools; hpsearch's own storage stays on psycopg2, the driver its
        # reconnect and fault handling (error texts, connect settings) are tested against.
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    started, attempt = time.monotonic(), 0
    while True:
        attempt += 1
        try:
            return _postgres_sessions(ResilientRDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                skip_table_creation=not create,
                heartbeat_interval=heartbeat,  # claims start a trial's heartbeat row when it is set
            ))
        except Exception as exc:
            text = _chain_text(exc)
            # Several create-study processes on a fresh database race to create the tables;
            # the losers see "duplicate key"/"already exists" and simply open what the winner made.
            race = create and attempt < 6 and ("duplicate key" in text or "already exists" in text)
            # A server or pooler that is up but swamped (a job array's 200 workers logging in
            # at the same second) times out, drops the login or has no slot left: wait for it, for a while.
            # A refused connection, a wrong password or an unknown database fails at once.
            swamped = any(s in text for s in _SWAMPED) and time.monotonic() - started < _connect_wait()
            if not (race or swamped):
                raise
            time.sleep(min(0.2 * attempt, 5.0) * (0.5 + random.random()))


_SQLITE_WARNED: list[bool] = []  # once per process: status --watch or a worker opens it again and again


def _warn_sqlite(url: str) -> None:
    if _SQLITE_WARNED:
        return
    _SQLITE_WARNED.append(True)
    log.warning("storage %s is SQLite, which has no row locks: two workers can take the same waiting "
                "trial, and it locks up under concurrent writes; use the journal file (the default) on one "
                "machine or PostgreSQL (README: Storage)", mask(url))


def _postgres_sessions(storage: ResilientRDBStorage) -> ResilientRDBStorage:
    """On PostgreSQL, bounded transactions, and a ping only for a pooled connection that sat idle.

    The server ends a session that sits idle inside a transaction. Every transaction hpsearch (and
    Optuna under it) opens runs its statements back to back; one that goes quiet is a process that
    was stopped (SIGSTOP, a frozen VM, a partition) while it held row locks or the study lock, and
    would block every other worker for as long as it stays stopped. Ending it rolls its half-done
    work back; the process finds out when it resumes.
    """
    if not storage.lean:  # not PostgreSQL
        return storage
    import sqlalchemy as sa

    from hpsearch.storage.atomic import HOLDER_IDLE_LIMIT_S

    def settings(dbapi_conn: Any, record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET idle_in_transaction_session_timeout = {int(HOLDER_IDLE_LIMIT_S * 1000)}")
        dbapi_conn.commit()

    sa.event.listen(storage.engine, "connect", settings)
    _ping_when_idle(storage.engine)
    storage.engine.dispose()  # the connections opened while checking the schema predate the setting
    return storage


# A pooled connection unused for this long is pinged before it is handed out again.
PING_IDLE_S = 1.0


def _ping_when_idle(engine: Any) -> None:
    """SQLAlchemy's pool_pre_ping, only for a connection that sat in the pool PING_IDLE_S or more.

    pre_ping pings at every checkout: a round trip before each of the ~20 storage calls of a trial,
    a fifth of what a worker sends the server. A connection that dies while pooled (the server
    restarted, a pooler or a firewall dropped it) is caught here once it has sat idle; one used
    again within the second is almost never dead, and if it is, its statement fails as a lost
    connection, SQLAlchemy discards the pool's connections, and the storage call is retried
    (hpsearch.storage.reconnect) on a new one.
    """
    import sqlalchemy as sa

    def checkin(dbapi_conn: Any, record: Any) -> None:
        record.info["hpsearch_idle_since"] = time.monotonic()

    def checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        since = record.info.pop("hpsearch_idle_since", None)
        if since is None or time.monotonic() - since < PING_IDLE_S:
            return  # a new connection, or one in use a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception:  # noqa: BLE001 - any failure of the ping means: not this connection
            alive = False
        if not alive:
            raise sa.exc.DisconnectionError("a pooled connection was lost while idle")  # the pool makes a new one

    sa.event.listen(engine, "checkin", checkin)
    sa.event.listen(engine, "checkout", checkout)


# A server that is up but cannot take this login now: swamped, every connection slot taken
# (max_connections: a job array's burst), or still starting. Waited for, HPSEARCH_CONNECT_WAIT.
_SWAMPED = ("timeout expired", "server closed the connection unexpectedly", "query_wait_timeout",
            "too many clients", "remaining connection slots are reserved", "the database system is starting up")


def _chain_text(exc: BaseException) -> str:
    return " | ".join(str(getattr(e, "orig", None) or e) for e in causes(exc))


def _connect_wait() -> float:
    return env_seconds("HPSEARCH_CONNECT_WAIT", 120.0)
