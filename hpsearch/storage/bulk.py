"""Read what status/best/report need straight from PostgreSQL, not every trial with every attribute.

Optuna's get_trials() builds full FrozenTrials (params, every attribute, every report) for every
trial: minutes at 50k trials. These queries fetch only the columns and attribute keys asked for,
in a handful of round trips, and return light trial records with the same attribute names
(number, state, value, params, datetime_start, datetime_complete, user_attrs). Other storages
(journal, gRPC) fall back to get_trials(), which is what they are sized for: each backend says
which (hpsearch.storage.protocol: trials, full_trials).
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

from hpsearch.storage import optuna_internals


@dataclass
class LightTrial:
    number: int
    state: TrialState
    datetime_start: datetime | None
    datetime_complete: datetime | None
    value: float | None = None
    user_attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    trial_id: int = -1

    @property
    def values(self) -> list[float] | None:
        return None if self.value is None else [self.value]

    @property
    def system_attrs(self) -> dict[str, Any]:
        # Light records skip system attrs: a waiting trial's configuration is its config_id user attr.
        return {}


def trial_id(trial: Any) -> int:
    """The storage's id of a trial these reads returned: a light one, or one of Optuna's."""
    return trial.trial_id if isinstance(trial, LightTrial) else optuna_internals.trial_id(trial)


def trials(study: optuna.Study, keys: Iterable[str] = (), states: Iterable[TrialState] | None = None,
           running_keys: Iterable[str] = (), with_params: bool = False) -> list[Any]:
    """Light trials with only `keys` of their user attrs (plus `running_keys` for running trials)."""
    from hpsearch.storage import backends

    return backends.of(study).trials(study, keys, states, running_keys, with_params)


def full_trials(study: optuna.Study, states: Iterable[TrialState] | None = None) -> list[optuna.trial.FrozenTrial]:
    """Every trial as a real FrozenTrial (params, distributions, reports, all attributes), in bulk.

    On PostgreSQL, the same content as Optuna's ORM get_trials(), from five set-based queries
    (hpsearch.storage.postgres): seconds instead of minutes at 50k trials.
    """
    from hpsearch.storage import backends

    return backends.of(study).full_trials(study, states)


def postgres_trials(rdb: optuna.storages.RDBStorage, sid: int, keys: Iterable[str], states: Iterable[TrialState] | None,
                    running_keys: Iterable[str], with_params: bool) -> list[LightTrial]:
    """PostgreSQL: the light trials of study `sid`, in a few set-based queries."""
    import sqlalchemy as sa

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
                                value=r[5], trial_id=r[0]) for r in rows}
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
