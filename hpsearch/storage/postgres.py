"""The per-trial hot path on PostgreSQL as one plain SQL statement per call (Optuna's schema and semantics).

Optuna's RDBStorage goes through the SQLAlchemy ORM for every write: it loads the trial row to
check it is still updatable, loads the existing row it may overwrite, then inserts; a get_trial is
six queries. A worker makes ~90 such statements per trial (4 params, 5 reports, attributes, tell),
and at 64 workers on 2 cores that CPU, in the workers and in the server, is what coordination
costs. Here each of those calls is one guarded statement (INSERT ... SELECT FROM trials WHERE the
trial is still updatable ... ON CONFLICT ...) and get_trial is one query. When a guarded statement
touches no row, the original ORM method runs instead, so every error (unknown trial, finished
trial) is exactly Optuna's. Other databases (SQLite, MySQL) use Optuna's methods unchanged.
tests/storage/test_pglean.py replays the same operations on both and compares the stored trials.
"""

from __future__ import annotations

import json
import math
from collections.abc import Container, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy as sa
from optuna import distributions
from optuna.trial import FrozenTrial, TrialState

from hpsearch.storage import optuna_internals

_UPDATABLE = "('RUNNING', 'WAITING')"  # Optuna's check_trial_is_updatable: anything not finished

GET_TRIAL = sa.text(
    "SELECT t.number, t.state, t.datetime_start, t.datetime_complete, "
    "(SELECT json_agg(json_build_array(param_name, param_value, distribution_json) ORDER BY param_id) "
    " FROM trial_params WHERE trial_id = t.trial_id), "
    "(SELECT json_agg(json_build_array(objective, value, value_type)) FROM trial_values WHERE trial_id = t.trial_id), "
    "(SELECT json_agg(json_build_array(key, value_json)) FROM trial_user_attributes WHERE trial_id = t.trial_id), "
    "(SELECT json_agg(json_build_array(key, value_json)) FROM trial_system_attributes WHERE trial_id = t.trial_id), "
    "(SELECT json_agg(json_build_array(step, intermediate_value, intermediate_value_type)) "
    " FROM trial_intermediate_values WHERE trial_id = t.trial_id) "
    "FROM trials t WHERE t.trial_id = :t"
)  # columns after the first four: _CHILD_COLUMNS' order
_SET_PARAM = sa.text(
    "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
    f"SELECT trial_id, :n, :v, :d FROM trials WHERE trial_id = :t AND state IN {_UPDATABLE} "
    "ON CONFLICT (trial_id, param_name) DO NOTHING"
)
_SET_REPORT = sa.text(
    "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, intermediate_value_type) "
    f"SELECT trial_id, :step, :v, CAST(:vt AS trialintermediatevaluetype) FROM trials "
    f"WHERE trial_id = :t AND state IN {_UPDATABLE} "
    "ON CONFLICT (trial_id, step) DO UPDATE SET intermediate_value = EXCLUDED.intermediate_value, "
    "intermediate_value_type = EXCLUDED.intermediate_value_type"
)
_FINISH = sa.text(
    "UPDATE trials SET state = CAST(:st AS trialstate), datetime_complete = :now "
    f"WHERE trial_id = :t AND state IN {_UPDATABLE}"
)
_SET_VALUE = sa.text(
    "INSERT INTO trial_values (trial_id, objective, value, value_type) "
    "VALUES (:t, :o, :v, CAST(:vt AS trialvaluetype)) "
    "ON CONFLICT (trial_id, objective) DO UPDATE SET value = EXCLUDED.value, value_type = EXCLUDED.value_type"
)
_SNAPSHOT = sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
HEARTBEAT = sa.text(
    "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (:t, now()) "
    "ON CONFLICT (trial_id) DO UPDATE SET heartbeat = now()"
)


def stored_float(value: float | None, kind: str | None) -> float:
    """Optuna stores inf and NaN as a type tag beside a NULL value."""
    if kind == "INF_POS":
        return float("inf")
    if kind == "INF_NEG":
        return float("-inf")
    if kind == "NAN" or value is None:
        return float("nan")
    return float(value)


# The five child tables of a trial, in the order frozen_trial takes them (and GET_TRIAL selects them).
_CHILD_COLUMNS = (
    ("trial_params", "param_name, param_value, distribution_json", " ORDER BY param_id"),
    ("trial_values", "objective, value, value_type", ""),
    ("trial_user_attributes", "key, value_json", ""),
    ("trial_system_attributes", "key, value_json", ""),
    ("trial_intermediate_values", "step, intermediate_value, intermediate_value_type", ""),
)


def frozen_trial(trial_id: int, number: int, state: str, start: datetime | None, complete: datetime | None,
            params: Any, values: Any, user: Any, system: Any, inter: Any,
            cache: dict[str, distributions.BaseDistribution]) -> FrozenTrial:
    """A FrozenTrial as Optuna's _build_frozen_trial_from_trial_model makes it, from plain rows."""
    ps: dict[str, Any] = {}
    ds: dict[str, distributions.BaseDistribution] = {}
    for name, value, dist_json in params or ():
        dist = cache.get(dist_json) or cache.setdefault(dist_json, distributions.json_to_distribution(dist_json))
        # float(): JSON writes 3.0 as 3, the ORM reads a float8 column as 3.0.
        ps[name], ds[name] = dist.to_external_repr(float(value)), dist
    vals = None
    if values:
        vals = [0.0] * len(values)
        for objective, value, kind in values:
            vals[objective] = stored_float(value, kind)
    return FrozenTrial(
        number=number, state=TrialState[state], value=None, values=vals, datetime_start=start,
        datetime_complete=complete, params=ps, distributions=ds,
        user_attrs={k: json.loads(v) for k, v in user or ()},
        system_attrs={k: json.loads(v) for k, v in system or ()},
        intermediate_values={step: stored_float(v, kind) for step, v, kind in inter or ()},
        trial_id=trial_id,
    )


def read_trial(conn: Any, trial_id: int) -> FrozenTrial | None:
    """The trial as a FrozenTrial, in one query on `conn` (a connection or a session); None when there is none."""
    row = conn.execute(GET_TRIAL, {"t": trial_id}).first()
    return None if row is None else frozen_trial(trial_id, *row, {})


def _tag(value: float, nan_ok: bool) -> tuple[float | None, str]:
    if nan_ok and math.isnan(value):
        return None, "NAN"
    if value == float("inf"):
        return None, "INF_POS"
    if value == float("-inf"):
        return None, "INF_NEG"
    return value, "FINITE"


def _attrs_statement(table: str, n: int) -> sa.TextClause:
    rows = ", ".join(f"(:k{i}, :v{i})" for i in range(n))
    return sa.text(
        f"INSERT INTO {table} (trial_id, key, value_json) SELECT t.trial_id, a.key, a.value_json "
        f"FROM trials t, (VALUES {rows}) AS a(key, value_json) WHERE t.trial_id = :t AND t.state IN {_UPDATABLE} "
        "ON CONFLICT (trial_id, key) DO UPDATE SET value_json = EXCLUDED.value_json"
    )


@contextmanager
def _storage_errors(what: str) -> Iterator[None]:
    """As Optuna does: a driver error becomes StorageInternalError with the driver's error as its
    cause (callers, and hpsearch's reconnect wrapper, look at the cause)."""
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        raise optuna.exceptions.StorageInternalError(f"lean {what} failed") from exc


class LeanRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage with single-statement hot-path calls on PostgreSQL."""

    def __init__(self, url: str, engine_kwargs: dict[str, Any] | None = None, skip_compatibility_check: bool = False,
                 **kwargs: Any) -> None:
        # The schema check, one connection at a time (optuna_internals.check_schema says why).
        super().__init__(url, engine_kwargs, True, **kwargs)
        self.lean = self.engine.dialect.name == "postgresql"  # decided once: every call asks
        self.skip_compatibility_check = skip_compatibility_check
        if not skip_compatibility_check:
            optuna_internals.check_schema(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        skip = state["skip_compatibility_check"]
        super().__setstate__({**state, "skip_compatibility_check": True})
        self.skip_compatibility_check = skip
        if not skip:
            optuna_internals.check_schema(self)

    def bulk_trials(self, study_id: int, states: Container[TrialState] | None) -> list[FrozenTrial]:
        """Every trial of the study (of `states`) as full FrozenTrials, set-based on PostgreSQL."""
        return self._get_trials(study_id, states, set(), -1)

    def _run(self, stmt: sa.TextClause, params: dict[str, Any]) -> int:
        with _storage_errors("storage statement"), self.engine.begin() as conn:
            return int(conn.execute(stmt, params).rowcount)

    def delete_study(self, study_id: int) -> None:
        # The study's row first (no new trial can then be created in it), then its trials' (no
        # report, attribute or heartbeat can then be written to them) until the delete commits.
        optuna_internals.rdb_delete_study(self, study_id, _lock_study_rows if self.lean else None)

    # ------------------------------------------------------------ reads

    def get_trial(self, trial_id: int) -> FrozenTrial:
        if not self.lean:
            return super().get_trial(trial_id)
        with _storage_errors("get_trial"), self.engine.connect() as conn:
            frozen = read_trial(conn, trial_id)
        if frozen is None:
            raise KeyError(optuna_internals.trial_not_found_message())
        return frozen

    def _get_trials(self, study_id: int, states: Container[TrialState] | None, included_trial_ids: set[int],
                    trial_id_greater_than: int) -> list[FrozenTrial]:
        """Optuna's cache sync and get_all_trials: five set-based queries in one snapshot, no ORM objects."""
        if not self.lean:
            return optuna_internals.rdb_get_trials(self, study_id, states, included_trial_ids, trial_id_greater_than)
        included = sorted(t for t in included_trial_ids if t <= trial_id_greater_than)
        where, params = "t.study_id = :s", {"s": study_id}
        if states is not None:
            where += " AND t.state::text = ANY(:states)"
            params["states"] = [s.name for s in states]  # type: ignore[union-attr]
        if trial_id_greater_than > -1:
            params["gt"] = trial_id_greater_than
            where += " AND (t.trial_id > :gt OR t.trial_id = ANY(:inc))" if included else " AND t.trial_id > :gt"
            params["inc"] = included
        ids = f"SELECT t.trial_id FROM trials t WHERE {where}"
        with _storage_errors("_get_trials"), self.engine.connect() as conn, conn.begin():
            # One snapshot for the six reads. Set inside the transaction, not as the connection's
            # isolation level: SQLAlchemy sets a level given that way back explicitly when the
            # connection returns to the pool, after which psycopg2 sends a SET before and after
            # every pool ping and names the level in every BEGIN (two more round trips per checkout).
            conn.execute(_SNAPSHOT)
            if conn.execute(sa.text("SELECT 1 FROM studies WHERE study_id = :s"), params).first() is None:
                raise KeyError(optuna_internals.trial_not_found_message())
            base = conn.execute(sa.text(f"SELECT t.trial_id, t.number, t.state, t.datetime_start, "
                                        f"t.datetime_complete FROM trials t WHERE {where} ORDER BY t.trial_id"),
                                params).all()
            children: list[dict[int, list[Any]]] = []
            for table, cols, order in _CHILD_COLUMNS if base else ():
                grouped: dict[int, list[Any]] = {}
                for row in conn.execute(sa.text(f"SELECT trial_id, {cols} FROM {table} "
                                                f"WHERE trial_id IN ({ids}){order}"), params):
                    grouped.setdefault(row[0], []).append(row[1:])
                children.append(grouped)
        cache: dict[str, distributions.BaseDistribution] = {}
        return [frozen_trial(tid, number, state, start, complete, *(c.get(tid) for c in children), cache)
                for tid, number, state, start, complete in base]

    # ------------------------------------------------------------ writes

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: distributions.BaseDistribution,
                         previous_distribution: distributions.BaseDistribution | None) -> None:
        # Without the study's earlier distribution of this name (first use in this process),
        # Optuna's method looks it up; after that the cache knows it and one INSERT does.
        if not self.lean or previous_distribution is None:
            return optuna_internals.rdb_set_trial_param(self, trial_id, param_name, param_value_internal,
                                                        distribution, previous_distribution)
        distributions.check_distribution_compatibility(previous_distribution, distribution)
        n = self._run(_SET_PARAM, {"t": trial_id, "n": param_name, "v": param_value_internal,
                                   "d": distributions.distribution_to_json(distribution)})
        if n == 0:  # not updatable, unknown, or already set (Optuna ignores that): its own answer
            optuna_internals.rdb_set_trial_param(self, trial_id, param_name, param_value_internal, distribution,
                                                 previous_distribution)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        if not self.lean:
            return super().set_trial_intermediate_value(trial_id, step, intermediate_value)
        value, kind = _tag(float(intermediate_value), nan_ok=True)
        if self._run(_SET_REPORT, {"t": trial_id, "step": step, "v": value, "vt": kind}) == 0:
            super().set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.set_trial_user_attrs(trial_id, {key: value})

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self.lean:
            return super().set_trial_system_attr(trial_id, key, value)
        self._set_attrs("trial_system_attributes", trial_id, {key: value},
                        lambda: super(LeanRDBStorage, self).set_trial_system_attr(trial_id, key, value))

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Several user attributes in one statement (Optuna has only one-at-a-time)."""
        if not attrs:
            return
        if not self.lean:
            for key, value in attrs.items():
                super().set_trial_user_attr(trial_id, key, value)
            return
        first = next(iter(attrs.items()))
        self._set_attrs("trial_user_attributes", trial_id, attrs,
                        lambda: super(LeanRDBStorage, self).set_trial_user_attr(trial_id, *first))

    def _set_attrs(self, table: str, trial_id: int, attrs: dict[str, Any], fallback: Any) -> None:
        params: dict[str, Any] = {"t": trial_id}
        for i, (key, value) in enumerate(attrs.items()):
            params[f"k{i}"], params[f"v{i}"] = key, json.dumps(value)
        if self._run(_attrs_statement(table, len(attrs)), params) == 0:
            fallback()  # raises Optuna's KeyError / UpdateFinishedTrialError

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        # RUNNING (claiming a waiting trial) keeps Optuna's compare-and-set; finishing is one transaction.
        if not self.lean or not state.is_finished():
            return super().set_trial_state_values(trial_id, state, values)
        try:
            with _storage_errors("set_trial_state_values"), self.engine.begin() as conn:
                finished = conn.execute(_FINISH, {"t": trial_id, "st": state.name, "now": datetime.now()}).rowcount
                if finished:
                    for objective, v in enumerate(values or ()):
                        value, kind = _tag(float(v), nan_ok=False)
                        conn.execute(_SET_VALUE, {"t": trial_id, "o": objective, "v": value, "vt": kind})
        except optuna.exceptions.StorageInternalError as exc:
            if isinstance(exc.__cause__, sa.exc.IntegrityError):
                return False  # as Optuna's method answers a constraint violation
            raise
        if not finished:  # unknown or already finished: Optuna's own method raises the right error
            return super().set_trial_state_values(trial_id, state, values)
        return True

    def record_heartbeat_once(self, trial_id: int) -> None:
        """One heartbeat, one attempt: never through a reconnecting wrapper (the caller retries on its own)."""
        LeanRDBStorage.record_heartbeat(self, trial_id)

    def record_heartbeat(self, trial_id: int) -> None:
        if not self.lean:
            return super().record_heartbeat(trial_id)
        try:
            self._run(HEARTBEAT, {"t": trial_id})
        except optuna.exceptions.StorageInternalError as exc:
            if not isinstance(exc.__cause__, sa.exc.IntegrityError):  # a deleted trial: Optuna ignores it
                raise


def _lock_study_rows(session: Any, study_id: int) -> None:
    """FOR UPDATE on a study's row and its trials' rows, in the session about to delete them."""
    params = {"s": study_id}
    session.execute(sa.text("SELECT study_id FROM studies WHERE study_id = :s FOR UPDATE"), params)
    session.execute(sa.text("SELECT trial_id FROM trials WHERE study_id = :s ORDER BY trial_id FOR UPDATE"), params)
