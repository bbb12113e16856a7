"""A worker's stop state is the worker's: two workers in one process share no flag, no held trial,
no time limit and no restart reason; and no module of hpsearch.worker keeps mutable state of its own."""

from __future__ import annotations

import ast
import threading
import time

import optuna

from conftest import ROOT
from hpsearch.worker import loop, stopping


def _worker() -> loop.Worker:
    study = optuna.create_study()
    return loop.Worker(loop.Options(study="s"), "url", "wid", print, None, study, None)  # type: ignore[arg-type]


def test_two_workers_in_one_process_do_not_share_their_stop_flag() -> None:
    a, b = _worker(), _worker()
    a.stop.requested.set()  # what SIGTERM does to a
    assert a.stop.asked_to_stop() and not b.stop.asked_to_stop()
    assert loop._limit_reached(a) == "stopped by signal" and loop._limit_reached(b) is None


def test_two_workers_hold_their_own_trials_clocks_and_restart_reasons() -> None:
    a, b = _worker(), _worker()
    trial = a.study.ask()
    a.stop.hold(a.study, trial)
    assert a.stop.held() == [(a.study, trial)] and b.stop.held() == []  # what each one's hard exit hands back
    a.stop.release(trial)
    assert a.stop.held() == []

    fired: list[float] = []
    a.stop.start_clock(0.01, fired.append)
    time.sleep(0.05)
    assert a.stop.timed_out() == 0.01 and a.stop.asked_to_stop()
    assert b.stop.timed_out() is None and not b.stop.asked_to_stop()
    a.stop.stop_clock()
    assert a.stop.timed_out() is None and fired == []  # stopped before the watchdog's grace ran out

    a.stop.restart_after("out of memory")
    a.stop.restart_after("a later reason")
    assert a.stop.restart_reason == "out of memory" and b.stop.restart_reason is None


def test_no_worker_module_keeps_state_of_its_own() -> None:
    """No `global` rebinding in hpsearch/worker, and no stop flag or registry at module level."""
    rebinds = [f"{path.name}:{node.lineno}" for path in sorted((ROOT / "hpsearch" / "worker").glob("*.py"))
               for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Global)]
    assert rebinds == []
    assert not [name for name, value in vars(stopping).items()
                if isinstance(value, (threading.Event, dict, list, set)) and not name.startswith("__")]


def test_the_check_sees_a_global() -> None:
    tree = ast.parse("STOP = None\ndef f():\n    global STOP\n    STOP = 1\n")
    assert any(isinstance(node, ast.Global) for node in ast.walk(tree))
