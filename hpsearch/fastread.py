"""Read what status/best/report need straight from PostgreSQL, not every trial with every attribute.

Optuna's get_trials() builds full FrozenTrials (params, every attribute, every report) for every
trial: minutes at 50k trials. These queries fetch only the columns and attribute keys asked for,
in a handful of round trips, and return light trial records with the same attribute names
(number, state, value, params, datetime_start, datetime_complete, user_attrs). Other storages
(journal, gRPC) fall back to get_trials(), which is what they are sized for.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from optuna.distributions import json_to_distribution
from optuna.trial import TrialState

from hpsearch.study import _rdb


@dataclass
class LightTrial:
    number: int
    state: TrialState
    datetime_start: datetime | None
    datetime_complete: datetime | None
    value: float | None = None
    user_attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    _trial_id: int = -1

    @property
    def values(self) -> list[float] | None:
        return None if self.value is None else [self.value]


def supported(study: optuna.Study) -> bool:
    rdb = _rdb(study._storage)
    return rdb is not None and rdb.engine.dialect.name == "postgresql"


def trials(study: optuna.Study, keys: Iterable[str] = (), states: Iterable[TrialState] | None = None,
           running_keys: Iterable[str] = (), with_params: bool = False) -> list[Any]:
    """Light trials with only `keys` of their user attrs (plus `running_keys` for running trials)."""
    if not supported(study):
        wanted = tuple(states) if states is not None else None
        return study.get_trials(deepcopy=False, states=wanted)
    import sqlalchemy as sa

    rdb = _rdb(study._storage)
    assert rdb is not None
    sid = study._study_id
    state_filter = ""
    params: dict[str, Any] = {"s": sid}
    if states is not None:
        names = [s.name for s in states]
        state_filter = " AND t.state IN :states"
        params["states"] = tuple(names)
    base = f"FROM trials t WHERE t.study_id = :s{state_filter}"
    with rdb.engine.connect() as conn:
        def q(sql: str, **extra: Any) -> list[Any]:
            stmt = sa.text(sql)
            if "states" in params:
                stmt = stmt.bindparams(sa.bindparam("states", expanding=True))
            if "keys" in extra:
                stmt = stmt.bindparams(sa.bindparam("keys", expanding=True))
            return conn.execute(stmt, {**params, **extra}).all()

        rows = q(f"SELECT t.trial_id, t.number, t.state, t.datetime_start, t.datetime_complete, v.value "
                 f"FROM trials t LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
                 f"WHERE t.study_id = :s{state_filter}")
        out = {r[0]: LightTrial(number=r[1], state=TrialState[r[2]], datetime_start=r[3], datetime_complete=r[4],
                                value=r[5], _trial_id=r[0]) for r in rows}
        keys = list(keys)
        if keys:
            for tid, key, val in q(f"SELECT a.trial_id, a.key, a.value_json FROM trial_user_attributes a "
                                   f"WHERE a.key IN :keys AND a.trial_id IN (SELECT t.trial_id {base})", keys=keys):
                if tid in out:
                    out[tid].user_attrs[key] = json.loads(val)
        running_keys = list(running_keys)
        if running_keys:
            for tid, key, val in q("SELECT a.trial_id, a.key, a.value_json FROM trial_user_attributes a "
                                   "JOIN trials t ON t.trial_id = a.trial_id WHERE t.study_id = :s "
                                   "AND t.state = 'RUNNING' AND a.key IN :keys", keys=running_keys):
                if tid in out:
                    out[tid].user_attrs[key] = json.loads(val)
        if with_params:
            dists: dict[str, Any] = {}
            for tid, name, value, dist_json in q(f"SELECT p.trial_id, p.param_name, p.param_value, "
                                                 f"p.distribution_json FROM trial_params p "
                                                 f"WHERE p.trial_id IN (SELECT t.trial_id {base})"):
                if tid in out:
                    dist = dists.get(dist_json) or dists.setdefault(dist_json, json_to_distribution(dist_json))
                    out[tid].params[name] = dist.to_external_repr(value)
    return sorted(out.values(), key=lambda t: t.number)


def full_trials(study: optuna.Study, states: Iterable[TrialState] | None = None) -> list[optuna.trial.FrozenTrial]:
    """Every trial as a real FrozenTrial (params, distributions, reports, all attributes), in bulk.

    The same content as study.get_trials(), from five set-based queries instead of the ORM's
    per-trial object graph: seconds instead of minutes at 50k trials.
    """
    if not supported(study):
        return study.get_trials(deepcopy=False, states=tuple(states) if states is not None else None)
    import sqlalchemy as sa

    rdb = _rdb(study._storage)
    assert rdb is not None
    params: dict[str, Any] = {"s": study._study_id}
    state_filter = ""
    if states is not None:
        params["states"] = tuple(s.name for s in states)
        state_filter = " AND t.state IN :states"
    ids = f"SELECT t.trial_id FROM trials t WHERE t.study_id = :s{state_filter}"
    with rdb.engine.connect() as conn:
        def q(sql: str) -> list[Any]:
            stmt = sa.text(sql)
            if "states" in params:
                stmt = stmt.bindparams(sa.bindparam("states", expanding=True))
            return conn.execute(stmt, params).all()

        base = q(f"SELECT t.trial_id, t.number, t.state, t.datetime_start, t.datetime_complete FROM trials t "
                 f"WHERE t.study_id = :s{state_filter}")
        values: dict[int, float] = {r[0]: _float(r[1], r[2]) for r in q(
            f"SELECT trial_id, value, value_type FROM trial_values WHERE objective = 0 AND trial_id IN ({ids})")}
        inter: dict[int, dict[int, float]] = {}
        for tid, step, v, vt in q(f"SELECT trial_id, step, intermediate_value, intermediate_value_type "
                                  f"FROM trial_intermediate_values WHERE trial_id IN ({ids})"):
            inter.setdefault(tid, {})[step] = _float(v, vt)
        user: dict[int, dict[str, Any]] = {}
        for tid, key, val in q(f"SELECT trial_id, key, value_json FROM trial_user_attributes WHERE trial_id IN ({ids})"):
            user.setdefault(tid, {})[key] = json.loads(val)
        system: dict[int, dict[str, Any]] = {}
        for tid, key, val in q(f"SELECT trial_id, key, value_json FROM trial_system_attributes "
                               f"WHERE trial_id IN ({ids})"):
            system.setdefault(tid, {})[key] = json.loads(val)
        dists: dict[str, Any] = {}
        ps: dict[int, dict[str, Any]] = {}
        pd: dict[int, dict[str, Any]] = {}
        for tid, name, value, dist_json in q(f"SELECT trial_id, param_name, param_value, distribution_json "
                                             f"FROM trial_params WHERE trial_id IN ({ids})"):
            dist = dists.get(dist_json) or dists.setdefault(dist_json, json_to_distribution(dist_json))
            ps.setdefault(tid, {})[name] = dist.to_external_repr(value)
            pd.setdefault(tid, {})[name] = dist
    out = []
    for tid, number, state, start, complete in base:
        st = TrialState[state]
        value = values.get(tid)
        out.append(optuna.trial.FrozenTrial(
            number=number, state=st, value=None, values=[value] if value is not None else None,
            datetime_start=start, datetime_complete=complete, params=ps.get(tid, {}), distributions=pd.get(tid, {}),
            user_attrs=user.get(tid, {}), system_attrs=system.get(tid, {}), intermediate_values=inter.get(tid, {}),
            trial_id=tid))
    return sorted(out, key=lambda t: t.number)


def _float(value: float | None, kind: str | None) -> float:
    """Optuna stores inf and NaN as a type tag beside a NULL value."""
    if kind in ("INF_POS",):
        return float("inf")
    if kind in ("INF_NEG",):
        return float("-inf")
    if kind == "NAN":
        return float("nan")
    return float(value) if value is not None else float("nan")
