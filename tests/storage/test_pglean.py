"""The lean PostgreSQL hot path stores exactly what Optuna's RDBStorage stores, and fails the same way."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages._cached_storage import _CachedStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from conftest import unique
from hpsearch.storage.backend import open_storage
from hpsearch.storage.postgres import LeanRDBStorage

X = FloatDistribution(1e-4, 1.0, log=True)
N = IntDistribution(1, 8)
ACT = CategoricalDistribution(["relu", "tanh"])


def _script(s: _CachedStorage, sid: int) -> list[Any]:
    """Every hot-path call a worker makes, plus the misuses; returns what each call returned or raised."""
    out: list[Any] = []

    def call(fn: Callable[..., Any], *args: Any) -> None:
        try:
            out.append(("ok", fn(*args)))
        except Exception as exc:  # noqa: BLE001 - the exception type is what is compared
            out.append(("raised", type(exc).__name__))

    tid = s.create_new_trial(sid)
    call(s.set_trial_param, tid, "x", 0.01, X)
    call(s.set_trial_param, tid, "n", 3, N)
    call(s.set_trial_param, tid, "act", 1, ACT)
    call(s.set_trial_param, tid, "n", 5, N)  # set twice: the first value stays
    call(s.set_trial_param, tid, "x", 2, IntDistribution(1, 3))  # incompatible with the study's x
    for step, value in ((1, 0.5), (2, float("nan")), (3, float("inf")), (4, float("-inf")), (1, 0.25)):
        call(s.set_trial_intermediate_value, tid, step, value)
    call(s.set_trial_user_attr, tid, "seed", 7)
    call(s.set_trial_user_attr, tid, "seed", 8)
    call(s.set_trial_user_attr, tid, "curve", [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "note": "é"}])
    call(s.set_trial_system_attr, tid, "fixed_params", {"x": 0.1})
    call(s._backend.record_heartbeat, tid)
    call(s._backend.record_heartbeat, tid)
    call(s.set_trial_state_values, tid, TrialState.COMPLETE, [float("inf")])
    # Everything after the end is refused.
    call(s.set_trial_param, tid, "y", 0.5, FloatDistribution(0, 1))
    call(s.set_trial_param, tid, "x", 0.5, X)
    call(s.set_trial_intermediate_value, tid, 9, 1.0)
    call(s.set_trial_user_attr, tid, "late", True)
    call(s.set_trial_system_attr, tid, "late", True)
    call(s.set_trial_state_values, tid, TrialState.FAIL, None)
    # A waiting trial: claimed once, not twice; finished without ever running.
    waiting = s.create_new_trial(sid, optuna.trial.create_trial(state=TrialState.WAITING))
    call(s.set_trial_state_values, waiting, TrialState.RUNNING, None)
    call(s.set_trial_state_values, waiting, TrialState.RUNNING, None)
    call(s.set_trial_state_values, waiting, TrialState.PRUNED, None)
    other = s.create_new_trial(sid, optuna.trial.create_trial(state=TrialState.WAITING))
    call(s.set_trial_user_attr, other, "seed", 1)
    call(s.set_trial_state_values, other, TrialState.COMPLETE, [0.125])
    call(s.set_trial_state_values, s.create_new_trial(sid), TrialState.FAIL, None)
    # An unknown trial.
    call(s.get_trial, 10**9)
    call(s.set_trial_intermediate_value, 10**9, 1, 1.0)
    call(s.set_trial_user_attr, 10**9, "k", 1)
    call(s.set_trial_state_values, 10**9, TrialState.COMPLETE, [1.0])
    return out


def _comparable(t: FrozenTrial) -> tuple[Any, ...]:
    inter = {k: ("nan" if math.isnan(v) else v) for k, v in t.intermediate_values.items()}
    return (t.number, t.state, t.values, t.params, t.distributions, t.user_attrs, t.system_attrs, inter,
            t.datetime_start is None, t.datetime_complete is None)


@pytest.mark.parametrize("directions", [[StudyDirection.MINIMIZE], [StudyDirection.MINIMIZE, StudyDirection.MAXIMIZE]])
def test_lean_storage_stores_and_refuses_what_optuna_does(pg_url: str, directions: list[StudyDirection]) -> None:
    lean = open_storage(pg_url, create=True)
    plain = optuna.storages.RDBStorage(pg_url.replace("postgresql://", "postgresql+psycopg2://"))
    assert isinstance(lean, LeanRDBStorage) and lean.lean
    results, trials = [], []
    for backend in (plain, lean):
        cached = _CachedStorage(backend)
        sid = cached.create_new_study(directions, unique("lean"))
        results.append(_script(cached, sid))
        trials.append(plain.get_all_trials(sid, deepcopy=False))  # read back the same way for both
    # sid is now the study the lean storage wrote.
    assert results[0] == results[1]
    assert ("raised", "UpdateFinishedTrialError") in results[1] and ("raised", "KeyError") in results[1]
    assert [_comparable(t) for t in trials[0]] == [_comparable(t) for t in trials[1]]
    # The bulk reader (cache syncs, get_trials) reads what Optuna's ORM reads, with every filter.
    ids = [t._trial_id for t in trials[1]]
    for states, included, greater in ((None, set(), -1), ((TrialState.COMPLETE,), set(), -1),
                                      ((TrialState.WAITING, TrialState.RUNNING), set(), -1),
                                      (None, {ids[0], ids[2]}, ids[1]), (None, set(), ids[2]), (None, {ids[0]}, -1)):
        assert [_comparable(t) for t in lean._get_trials(sid, states, included, greater)] == \
            [_comparable(t) for t in plain._get_trials(sid, states, included, greater)]
    with pytest.raises(KeyError):
        lean._get_trials(10**9, None, set(), -1)
    # The one-query get_trial reads what Optuna's six queries read.
    for t in trials[1]:
        assert _comparable(lean.get_trial(t._trial_id)) == _comparable(plain.get_trial(t._trial_id))
        assert lean.get_trial(t._trial_id).datetime_start == plain.get_trial(t._trial_id).datetime_start


def test_a_claimed_trial_takes_a_handful_of_statements(pg_session_db: str) -> None:
    """hpsearch's path for one trial (claim, 4 params, 5 reports, attributes, tell): ~20 statements, not ~90."""
    import sqlalchemy as sa

    from hpsearch.queue import claim as claim_mod
    from hpsearch.queue import study as study_mod

    storage = open_storage(pg_session_db, create=True, heartbeat=30)
    study = optuna.create_study(study_name=unique("count"), storage=storage, sampler=optuna.samplers.RandomSampler())
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)  # the study's distributions, as a worker has
    study.enqueue_trial({}, user_attrs={"seed": 1})
    seen: list[str] = []
    listener = lambda *a: seen.append(a[2])  # noqa: E731
    sa.event.listen(storage.engine, "before_cursor_execute", listener)
    trial = claim_mod.claim(study)
    assert trial is not None
    x = trial.suggest_float("x", 0, 1)
    for step in range(5):
        trial.report(x + step, step)
    study_mod.set_user_attrs(trial, {"worker": "w", "duration_s": 1.0})
    study.tell(trial, x)
    sa.event.remove(storage.engine, "before_cursor_execute", listener)
    assert len(seen) <= 16, "\n".join(seen)
    done = study.trials[-1]
    assert done.state == TrialState.COMPLETE and done.value == x and done.params == {"x": x}
    assert done.intermediate_values == {s: x + s for s in range(5)}
    assert done.user_attrs == {"seed": 1, "worker": "w", "duration_s": 1.0}


def test_deleting_a_study_while_a_worker_writes_to_its_trial_deletes_it(pg_url: str) -> None:
    # Optuna's delete_study ignores integrity errors: a write to one of the study's trials landing
    # between its loading of the rows and their deletion rolled the delete back without a word, and
    # `create-study --replace` then said "already exists ... nothing to do" (seen in CI under a
    # fused worker). A second session holds such a write open across the delete.
    import threading

    import psycopg2

    lean = open_storage(pg_url, create=True)
    name = unique("doomed")
    sid = lean.create_new_study([StudyDirection.MAXIMIZE], name)
    tid = lean.create_new_trial(sid)
    worker = psycopg2.connect(pg_url)
    cur = worker.cursor()
    cur.execute("INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (%s, 'epoch', '1')", (tid,))
    errors: list[BaseException] = []

    def delete() -> None:
        try:
            lean.delete_study(sid)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    deleter = threading.Thread(target=delete)
    deleter.start()
    deleter.join(timeout=2)
    assert deleter.is_alive()  # waiting for the worker's write, as it must
    worker.commit()  # the write lands while the delete waits
    deleter.join(timeout=30)
    worker.close()
    assert not deleter.is_alive() and errors == []
    with pytest.raises(KeyError):
        lean.get_study_id_from_name(name)
    with pytest.raises(KeyError):
        lean.get_trial(tid)
