"""The worker's loop in-process: what it reads of the study once, not once per trial."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from conftest import tiny_spec, unique
from hpsearch import schema
from hpsearch.queue import plan as plan_mod
from hpsearch.queue import study as study_mod
from hpsearch.spec.parse import spec_from_dict
from hpsearch.storage.backend import open_storage
from hpsearch.worker import loop


@pytest.fixture
def own_signals() -> Iterator[None]:
    """run_worker installs its handlers, then ignores the signals at exit: give pytest its own back."""
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
    saved = {sig: signal.getsignal(sig) for sig in signals}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_worker_loads_its_study_once_and_records_class_counts_once(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path, own_signals: None) -> None:
    url = f"journal:{tmp_path / 'j.log'}"
    name = unique("once")
    plan_mod.create(spec_from_dict(tiny_spec(name)), open_storage(url, create=True))
    loads: list[Any] = []
    real_load = study_mod.load
    monkeypatch.setattr(study_mod, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    writes: Counter[str] = Counter()
    real_set = optuna.Study.set_user_attr
    monkeypatch.setattr(optuna.Study, "set_user_attr",
                        lambda self, key, value: writes.update([key]) or real_set(self, key, value))

    code = loop.run_worker(loop.Options(study=name, storage=url, device="cpu", quiet=True, fuse=1, seed=0))

    assert code == 0
    assert len(loads) == 1  # the sampler and pruner are attached to the one loaded study
    assert writes[schema.CLASS_COUNTS_ATTR] == 1  # by the first trial; the later ones neither read nor write it
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    assert study.sampler is not None and schema.CLASS_COUNTS_ATTR in study.user_attrs
    assert Counter(t.state for t in study.get_trials(deepcopy=False)) == {TrialState.COMPLETE: 4}


def test_limits_are_checked_before_each_claim() -> None:
    study = optuna.create_study()  # in memory: `hpsearch stop` is read from the study
    w = loop.Worker(loop.Options(study="s", n_trials=2), "url", "wid", print, None, study, None)  # type: ignore[arg-type]
    assert loop._limit_reached(w) is None
    w.summary.states["complete"] = 2
    assert loop._limit_reached(w) == "--n-trials 2 reached"
    w.summary.states.clear()
    w.deadline = 1.0  # the study's wall-clock budget ended long ago
    assert loop._limit_reached(w) == "the study's wall-clock budget is spent"
    w.deadline = None
    from hpsearch.queue import control

    control.set_stopped(study, True)
    assert loop._limit_reached(w) is None  # read a moment ago: not again for a few seconds
    assert control.stop_requested(study, poll=0)
    assert loop._limit_reached(w) == "the study was stopped (hpsearch stop); to go on: hpsearch resume s"


def test_a_study_without_a_spec_is_waited_for_only_while_it_could_be_in_creation(tmp_path: Path) -> None:
    # No spec and no trial: create-study may be between its two steps, so the worker waits (here
    # 0.5 s, saying so once) and then says what is wrong. A plain Optuna study with trials is refused
    # at once: the waiting line comes before the first pause, so none said means none waited.
    from hpsearch.errors import HpsearchError
    from hpsearch.worker import loop

    storage = open_storage(f"journal:{tmp_path / 'j.log'}", create=True)
    empty = optuna.create_study(study_name="empty", storage=storage)
    said: list[str] = []
    with pytest.raises(HpsearchError, match="has no hpsearch spec"):
        loop._spec_once_created(empty, said.append, wait=0.5)
    assert len(said) == 1 and "waiting up to 0.5 s" in said[0]

    plain = optuna.create_study(study_name="plain", storage=storage)
    plain.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    said.clear()
    with pytest.raises(HpsearchError, match="has no hpsearch spec"):
        loop._spec_once_created(plain, said.append, wait=30)
    assert said == []
