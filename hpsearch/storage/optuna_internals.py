"""Every use of Optuna's (and optuna-dashboard's) private names around storage, behind named functions.

hpsearch needs a few things Optuna does not expose: a trial's and a study's storage ids, the
storage under a study, the cache around an RDB storage (unwrapping it, telling it about a claimed
trial), the RDB storage's session factory, row building, base methods and schema check, the
journal backend's file and lock, the gRPC proxy's client channel and service. They are reached
here and nowhere else (those that are not storage, a sampler's view of a study and
optuna-dashboard's artifact lookup, notes and figures, are hpsearch.optuna_private's), so a new
Optuna release is checked against these two files, and the version is checked when hpsearch first touches storage: a different
Optuna stops with one line instead of failing somewhere deep inside a trial.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from hpsearch.errors import HpsearchError

OPTUNA_VERSION = "5.0.0"  # the release whose internals this module was written against (pyproject pins it)


def check_version(found: str = optuna.__version__) -> None:
    if found != OPTUNA_VERSION:
        raise HpsearchError(f"hpsearch needs optuna=={OPTUNA_VERSION} (it relies on Optuna internals that change "
                            f"between releases), but found optuna {found}; reinstall with `pip install -e .`")


check_version()


# --- trials and studies -------------------------------------------------------------------------
def trial_id(trial: optuna.trial.BaseTrial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of a trial (Optuna's number counts within a study; the id is global)."""
    return trial._trial_id  # type: ignore[union-attr]


def study_id(study: optuna.Study) -> int:
    return study._study_id


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study was loaded with (Optuna wraps an RDB storage in its cache)."""
    return study._storage


def forget_trials_cache(study: optuna.Study) -> None:
    """Drop the study's per-thread copy of all trials (a claim changed them behind its back)."""
    study._thread_local.cached_all_trials = None


def cached_frozen_trial(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The FrozenTrial a live Trial reads its attributes back from."""
    return trial._cached_frozen_trial


# --- artifacts ------------------------------------------------------------------------------------
def file_store_path(store: Any) -> str | None:
    """The directory of a FileSystemArtifactStore (None for other stores)."""
    path = getattr(store, "_base_path", None)
    return None if path is None else str(path)


# --- Optuna's cache around an RDB storage ------------------------------------------------------
def cached(rdb: optuna.storages.RDBStorage) -> optuna.storages.BaseStorage:
    """An RDB storage behind Optuna's cache, as optuna.load_study would wrap it."""
    return optuna.storages._CachedStorage(rdb)


def unwrap_cached(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage under Optuna's _CachedStorage (which optuna.load_study puts around an RDB storage)."""
    return storage._backend if isinstance(storage, optuna.storages._CachedStorage) else storage


def cache_claimed(cached: optuna.storages.BaseStorage, study_id: int, frozen: optuna.trial.FrozenTrial) -> None:
    """Register one trial (claimed with plain SQL, now RUNNING) in Optuna's _CachedStorage as unfinished,
    so its next sync refreshes it the usual way instead of re-reading every unfinished trial."""
    from optuna.storages._cached_storage import _StudyInfo

    with cached._lock:  # type: ignore[attr-defined]
        info = cached._studies.setdefault(study_id, _StudyInfo())  # type: ignore[attr-defined]
        cached._add_trials_to_cache(study_id, [frozen])  # type: ignore[attr-defined]
        info.unfinished_trial_ids.add(frozen._trial_id)


# --- RDB storage ----------------------------------------------------------------------------------
def new_session(rdb: optuna.storages.RDBStorage) -> Any:
    """A SQLAlchemy session of the storage's own (ORM) session factory."""
    return rdb.scoped_session()


def prepared_new_trial(rdb: optuna.storages.RDBStorage, study_id: int, template: optuna.trial.FrozenTrial,
                       session: Any) -> Any:
    """Optuna's own row-building for a new trial (number, params, attributes), inside `session`."""
    return rdb._get_prepared_new_trial(study_id, template, session)


def trial_not_found_message() -> str:
    """The message of Optuna's KeyError for an unknown trial or study id."""
    from optuna.storages._rdb.models import NOT_FOUND_MSG

    return NOT_FOUND_MSG


def rdb_get_trials(rdb: optuna.storages.RDBStorage, study_id: int, states: Any, included_trial_ids: set[int],
                   trial_id_greater_than: int) -> list[optuna.trial.FrozenTrial]:
    """Optuna's own RDBStorage._get_trials (what its cache syncs with), bypassing any override."""
    return optuna.storages.RDBStorage._get_trials(rdb, study_id, states, included_trial_ids, trial_id_greater_than)


def rdb_set_trial_param(rdb: optuna.storages.RDBStorage, trial_id: int, name: str, value: float,
                        distribution: optuna.distributions.BaseDistribution,
                        previous: optuna.distributions.BaseDistribution | None) -> None:
    """Optuna's own RDBStorage._set_trial_param, bypassing any override."""
    optuna.storages.RDBStorage._set_trial_param(rdb, trial_id, name, value, distribution, previous)


# The private methods Optuna's _CachedStorage and heartbeat machinery call on an RDB storage
# (besides the public storage API): a wrapper around the storage's calls must cover them too.
RDB_PRIVATE_CALLS = ("_get_stale_trial_ids", "_get_trials", "_create_new_trial", "_set_trial_param",
                     "_get_best_trial_id")


def rdb_delete_study(rdb: optuna.storages.RDBStorage, study_id: int, lock_rows: Callable[[Any, int], None] | None) -> None:
    """Optuna's RDBStorage.delete_study, which either deletes the study or raises.

    Optuna's own runs with ignore_integrity_error: when a worker writes a report or an attribute to
    one of the study's trials between the ORM's loading of the rows and their deletion, the
    foreign-key check fails and the delete is rolled back without a word (create-study --replace
    then found the study still there and said "nothing to do"). `lock_rows(session, study_id)`, run first in
    the same transaction, locks the rows so that no such write can land in between.
    """
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(rdb.scoped_session) as session:
        if lock_rows is not None:
            lock_rows(session, study_id)
        session.delete(models.StudyModel.find_or_raise_by_id(study_id, session))


def check_schema(rdb: optuna.storages.RDBStorage) -> None:
    """Optuna's schema check, one connection at a time.

    Optuna's own check holds a session open while it opens a second connection (and loads
    alembic's scripts): two server connections per starting worker, so many workers starting at
    once behind a bounded pooler (pgbouncer) each hold one and wait for another, until the pooler
    gives up. Here the versions are compared first; only on a mismatch does Optuna's own check
    run, to raise its message. Only this storage's version manager is used: Optuna's class is
    left as it is, for every other storage in the process (the dashboard's, a user's).
    """
    manager = rdb._version_manager
    if manager.get_current_version() != manager.get_head_version():
        manager.check_table_schema_compatibility()


# --- journal file ---------------------------------------------------------------------------------
def journal_backend(storage: optuna.storages.BaseStorage) -> Any:
    """The log backend under a JournalStorage (None for other storages)."""
    return storage._backend if isinstance(storage, optuna.storages.JournalStorage) else None


def journal_file_path(backend: Any) -> str | None:
    """The file of a JournalFileBackend (None for other journal backends)."""
    return getattr(backend, "_file_path", None)


def journal_lock_base() -> type:
    """The base class of a JournalFileBackend's lock (its lock_obj), not exported by Optuna."""
    from optuna.storages.journal._file import BaseJournalFileLock

    return BaseJournalFileLock


def journal_lock(backend: Any) -> Any:
    """The lock a JournalFileBackend takes around every append (None for other backends)."""
    return getattr(backend, "_lock", None)


# --- the gRPC proxy -------------------------------------------------------------------------------
class _ChanneledGrpcProxy(optuna.storages.GrpcStorageProxy):
    """Optuna's gRPC client on a channel hpsearch makes (TLS, the token on every call).

    Optuna 5.0's client takes no channel or credentials: it opens an insecure channel in _setup()
    (also after unpickling), the one place to hand it another.
    """

    def __init__(self, *, host: str, port: int, make_channel: Callable[[], Any]) -> None:
        self._make_channel = make_channel
        super().__init__(host=host, port=port)

    def _setup(self) -> None:
        from optuna.storages._grpc.auto_generated import api_pb2_grpc
        from optuna.storages._grpc.client import GrpcClientCache

        self._channel = self._make_channel()
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)

    def wait_server_ready(self, timeout: float | None = None) -> None:
        import grpc

        try:  # on this channel: Optuna's own would try plain gRPC against a TLS server
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError as e:
            raise ConnectionError("GRPC connection timeout") from e


def grpc_proxy_on(make_channel: Callable[[], Any], host: str, port: int) -> optuna.storages.GrpcStorageProxy:
    """Optuna's GrpcStorageProxy talking through the channel make_channel() returns."""
    return _ChanneledGrpcProxy(host=host, port=port, make_channel=make_channel)


def add_grpc_storage_service(server: Any, storage: optuna.storages.BaseStorage) -> None:
    """Optuna's storage service on a gRPC server hpsearch made (run_grpc_proxy_server takes no interceptors)."""
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(storage), server)
