"""Fused trials: a member trains exactly as it would alone, leaves the group alone, and every fault
guarantee of the worker holds for each member of a fused group."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from conftest import ROOT, cli_env, run_cli, start_worker, tiny_spec, unique, write_spec
from faultkit import SLOW_TRAIN, Tail, assert_exactly_once, engine_of, wait_blocked
from hpsearch import schema
from hpsearch.errors import HpsearchError
from hpsearch.objective import Divergent
from hpsearch.spec.model import SpecError
from hpsearch.spec.parse import spec_from_dict
from hpsearch.storage.backend import open_storage
from hpsearch.training import trainer
from hpsearch.worker import fused
from hpsearch.worker import loop as worker_mod
from hpsearch.worker.context import TrialContext
from hpsearch.worker.stopping import Stopping

CPU = torch.device("cpu")
ARCH = {
    "dense": {"model": "dense", "hidden_size": 32, "hidden_layers": 2},
    "cnn": {"model": "cnn", "filters": [4, 8], "fc_sizes": [16]},
}
# What the worker (not the trainer) records on every trial, fused or not.
WORKER_KEYS = {"worker", "hpsearch:heartbeat_interval", "hpsearch:beat", "duration_s", "service_s", *schema.COMPUTE}
# Members of one group: the optimizers of the seed grid and its dropout, each with its own seed.
MEMBERS = [{"lr": 0.01, "optimizer": o, "dropout": d} for o in ("sgd", "momentum", "adam") for d in (0.0, 0.3)]


def _spec(model: str, epochs: int = 3, **train: Any) -> Any:
    return spec_from_dict({
        "name": "fused", "metric": "val_acc", "sampler": "grid", "pruner": "none", "dataset": {"name": "digits"},
        "train": {"epochs": epochs, "batch_size": 32, **ARCH[model], **train},
        "space": {"lr": {"choices": [0.01, 1000.0]}, "optimizer": {"choices": ["sgd", "momentum", "adam"]},
                  "dropout": {"choices": [0.0, 0.3]}},
    })


def _study(members: list[dict[str, Any]], pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for seed, params in enumerate(members):
        study.enqueue_trial(params, user_attrs={"seed": seed})
    return study


def _alone(spec: Any, members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each member trained alone by the built-in trainer: its user attrs."""
    study = _study(members)
    out = []
    for _ in members:
        trial = study.ask()
        try:
            trainer.run(trial, spec, trainer.Context(device=CPU, progress=lambda m: None))
        except Divergent:
            pass
        out.append(dict(trial.user_attrs))
    return out


def _fused(spec: Any, study: optuna.Study, n: int, out: Any = None, artifacts: Any = None,
           checkpoint_every: float = 30.0, stop: Stopping | None = None) -> list[str]:
    trials = [study.ask() for _ in range(n)]
    opts = worker_mod.Options(study="fused", heartbeat=30, checkpoint_every=checkpoint_every)
    ctx = TrialContext(device=CPU, artifacts=artifacts, stop=stop or Stopping())
    return fused.run_group(study, trials, spec, ctx, opts, out or (lambda m: None))


def _assert_same_curve(alone: dict[str, Any], member: dict[str, Any]) -> None:
    """Accuracies (counts of samples) and the best epoch exactly; losses within float32 rounding
    as it grows over a few hundred steps. The fused linear layers' products are K-batched (bmm):
    for the tiny 10-wide output layer its kernel rounds differently from the single mm alone by
    ~1e-9 per step, which Adam's normalised steps carry to ~1e-4 of a loss by epoch 3 (measured:
    most members agree to 3e-7, one Adam CNN member to 1.4e-4)."""
    assert len(alone["curve"]) == len(member["curve"])
    for a, b in zip(alone["curve"], member["curve"], strict=True):
        for key in ("train_acc", "val_acc"):
            assert b[key] == pytest.approx(a[key], abs=1e-9), (key, a, b)
        for key in ("train_loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), (key, a, b)
    assert member["test_acc"] == pytest.approx(alone["test_acc"], abs=1e-9)
    assert member["test_loss"] == pytest.approx(alone["test_loss"], rel=1e-3, abs=1e-6)
    assert member["best_epoch"] == alone["best_epoch"]


# ---------------------------------------------------------------- equal to alone


@pytest.mark.parametrize("model", ["dense", "cnn"])
def test_a_fused_member_trains_as_it_would_alone(model: str) -> None:
    """SGD, momentum and Adam members, with and without dropout, fused: each one's curve, best
    epoch and test result are those of the same trial (same seed, same batches) trained alone."""
    spec = _spec(model)
    alone = _alone(spec, MEMBERS)
    study = _study(MEMBERS)
    assert _fused(spec, study, len(MEMBERS)) == ["complete"] * len(MEMBERS)
    for a, t in zip(alone, study.get_trials(deepcopy=False), strict=True):
        member = t.user_attrs
        _assert_same_curve(a, member)
        assert t.value == pytest.approx(a["val_acc"], abs=1e-9)
        assert set(member) - WORKER_KEYS == set(a)  # the same record as a trial alone
        assert member["config"] == a["config"]


@pytest.mark.parametrize("model", ["dense", "cnn"])
def test_the_gpu_step_trains_as_alone_too(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where kernel launches bound the step (a GPU) the group runs one grouped convolution, one
    dropout draw and one cross-entropy call for all members. Forced here on CPU: without dropout
    (one draw of rate 0 keeps everything) each member still trains as it would alone."""
    monkeypatch.setattr(fused, "_launch_bound", lambda device: True)
    members = [dict(m, dropout=0.0) for m in MEMBERS[::2]] + [{"lr": 0.01, "optimizer": "adam", "dropout": 0.0}]
    spec = _spec(model)
    alone = _alone(spec, members)
    study = _study(members)
    assert _fused(spec, study, len(members)) == ["complete"] * len(members)
    for a, t in zip(alone, study.get_trials(deepcopy=False), strict=True):
        _assert_same_curve(a, t.user_attrs)


def test_one_draw_masks_keep_each_members_rate() -> None:
    from hpsearch.training.fused_model import FusedModel

    models = [torch.nn.Sequential(torch.nn.Linear(4, 50), torch.nn.Dropout(p)) for p in (0.0, 0.5, 0.2)]
    net = FusedModel(models, [torch.Generator().manual_seed(i) for i in range(3)], one_draw=True)
    out = net.forward(torch.ones(3, 4000, 4), train=True)
    plain = net.forward(torch.ones(3, 4000, 4), train=False)
    masks = out / plain
    assert torch.equal(masks[0], torch.ones_like(masks[0]))  # rate 0: every unit kept, unscaled
    for k, p in ((1, 0.5), (2, 0.2)):
        values = masks[k].round(decimals=4).unique().tolist()
        assert values == [0.0, round(1 / (1 - p), 4)]
        assert (masks[k] == 0).float().mean().item() == pytest.approx(p, abs=0.01)


def test_a_fused_checkpoint_resumes_alone_on_the_same_curve(tmp_path: Path) -> None:
    """Stopped mid-way, each member is handed back with a checkpoint in the single-trial format;
    its retry trained alone resumes from it and ends on the curve of an uninterrupted run."""
    spec = _spec("dense", epochs=4)
    members = MEMBERS[::2]  # sgd, momentum, adam with dropout 0 (and 0.3 in between: seeds differ)
    members = [dict(m, dropout=0.3) for m in members]
    alone = _alone(spec, members)
    store = FileSystemArtifactStore(str(tmp_path))
    study = _study(members)

    stop = Stopping()

    def out(msg: str) -> None:
        if "epoch 2/4" in msg:
            stop.requested.set()  # what SIGTERM does

    assert _fused(spec, study, len(members), out, artifacts=store, checkpoint_every=0, stop=stop) == ["preempted"] * 3
    retries = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING]
    assert len(retries) == 3 and all(t.user_attrs["checkpoint_epoch"] == 2 for t in retries)
    for a, _ in zip(alone, retries, strict=True):
        trial = study.ask()
        trainer.run(trial, spec, trainer.Context(device=CPU, artifact_store=store, progress=lambda m: None))
        assert trial.user_attrs["resumed_from_epoch"] == 2
        _assert_same_curve(a, trial.user_attrs)


# ---------------------------------------------------------------- members leave


class _PruneOne(optuna.pruners.BasePruner):
    def __init__(self, number: int, at: int) -> None:
        self.number, self.at = number, at

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == self.number and (trial.last_step or 0) >= self.at


def test_pruned_and_diverged_members_leave_and_the_others_are_unchanged() -> None:
    spec = _spec("dense", epochs=3)
    members = [MEMBERS[0], {"lr": 1000.0, "optimizer": "sgd", "dropout": 0.0}, MEMBERS[3], MEMBERS[4]]
    study = _study(members, pruner=_PruneOne(number=2, at=1))
    states = _fused(spec, study, len(members))
    assert states == ["complete", "divergent", "pruned", "complete"]
    trials = study.get_trials(deepcopy=False)
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["divergent"] is True
    assert trials[2].state == TrialState.PRUNED and trials[2].user_attrs["pruned_at_epoch"] == 1
    alone = _alone(spec, members)
    for i in (0, 3):
        _assert_same_curve(alone[i], trials[i].user_attrs)


# ---------------------------------------------------------------- the fusion key, the spec field


def test_the_key_fuses_what_shares_shapes_and_nothing_else() -> None:
    spec = _spec("dense")
    key = lambda **p: fused.fusion_key(spec, p, (1, 8, 8), 10)  # noqa: E731
    base = key(lr=0.1, optimizer="sgd", dropout=0.0)
    assert base is not None
    assert key(lr=0.001, optimizer="adam", dropout=0.5) == base  # per member: lr, optimizer, dropout
    assert key(lr=0.1, optimizer="sgd", dropout=0.0, hidden_size=64) != base  # widths shape the stack
    assert key(lr=0.1, optimizer="sgd", dropout=0.0, batch_size=64) != base
    assert key(lr=0.1, optimizer="sgd", dropout=0.0, epochs=5) != base
    assert key(lr=0.1, optimizer="sgd", dropout=0.0, activation="tanh") != base
    assert key(lr=0.1, optimizer="sgd", dropout=0.0, batch_norm=True) is None  # not run fused
    assert key(lr=0.1, optimizer="sgd", dropout=0.0, model="cnn") not in (None, base)


def test_the_group_size_comes_from_the_worker_the_environment_the_spec_or_the_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPSEARCH_FUSE", raising=False)
    spec = spec_from_dict(tiny_spec("f"))
    assert fused.group_size(spec, None, "cpu") == 8 and fused.group_size(spec, None, "cuda:0") == 16
    assert fused.group_size(spec_from_dict(tiny_spec("f", fuse=3)), None, "cpu") == 3
    monkeypatch.setenv("HPSEARCH_FUSE", "2")
    assert fused.group_size(spec_from_dict(tiny_spec("f", fuse=3)), None, "cpu") == 2
    assert fused.group_size(spec_from_dict(tiny_spec("f", fuse=3)), 5, "cpu") == 5
    user = spec_from_dict(tiny_spec("f", objective="hps_objectives:quadratic"))
    assert fused.group_size(user, 5, "cpu") == 1  # a user objective is never fused
    monkeypatch.setenv("HPSEARCH_FUSE", "many")
    with pytest.raises(HpsearchError, match="HPSEARCH_FUSE must be an integer"):
        fused.group_size(spec, None, "cpu")


def test_fuse_in_the_spec_valid_and_invalid() -> None:
    assert spec_from_dict(tiny_spec("f", fuse=8)).fuse == 8
    assert "fuse" not in spec_from_dict(tiny_spec("f")).to_dict()  # old specs keep their hash
    for bad in (0, 65, "4", 2.5):
        with pytest.raises(SpecError, match="fuse: must be an integer in"):
            spec_from_dict(tiny_spec("f", fuse=bad))
    with pytest.raises(SpecError, match="only the built-in trainer"):
        spec_from_dict(tiny_spec("f", fuse=4, objective="hps_objectives:quadratic"))


# ---------------------------------------------------------------- real workers


def _create(tmp_path: Path, url: str, name: str, **over: Any) -> None:
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name, **over))), "--storage", url, check=True)


def _load(name: str, url: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


FUSE4 = cli_env(HPSEARCH_FUSE="4")
# The fault tests' slow epochs, fewer of them: what is checked happens by epoch 3.
FAULT_TRAIN = {**SLOW_TRAIN, "epochs": 5}


def test_two_fused_workers_run_a_grid_of_seeds_exactly_once(pg_session_db: str, tmp_path: Path) -> None:
    url, name = pg_session_db, unique("fused-grid")
    _create(tmp_path, url, name, repeats=3, space={"lr": {"choices": [0.01, 0.1]}, "optimizer": {"choices": ["sgd", "adam"]}})
    default = {k: v for k, v in cli_env().items() if k != "HPSEARCH_FUSE"}  # CPU's default K
    workers = [start_worker(name, url, "--device", "cpu", "--heartbeat", "2", *fuse, env=env, log=tmp_path / f"w{i}.log")
               for i, (fuse, env) in enumerate([((), default), (("--fuse", "4"), None)])]
    for i, w in enumerate(workers):
        assert w.wait(timeout=180) == 0, (tmp_path / f"w{i}.log").read_text()
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    assert "fusing up to 8 compatible trials" in logs[0] and "fusing up to 4 compatible trials" in logs[1]
    assert "fused: trials" in "".join(logs) and "Traceback" not in "".join(logs)
    assert_exactly_once(_load(name, url), planned=12)


def _fused_worker_at(url: str, name: str, tmp_path: Path, epoch: int, heartbeat: int) -> tuple[Any, Tail]:
    """A worker training 2 configurations x 2 seeds as one fused group, once it reaches `epoch`."""
    _create(tmp_path, url, name, repeats=2, space={"lr": {"choices": [0.01, 0.02]}}, train=FAULT_TRAIN)
    w = start_worker(name, url, "--device", "cpu", "--heartbeat", str(heartbeat), "--checkpoint-every", "0", env=FUSE4)
    tail = Tail(w)
    tail.wait_for("fused: trials 0, 1, 2, 3", timeout=60)
    tail.wait_for(f"epoch {epoch}/{FAULT_TRAIN['epochs']}")
    return w, tail


def test_sigterm_hands_back_every_member_and_a_later_worker_resumes_them(pg_session_db: str, tmp_path: Path) -> None:
    url, name = pg_session_db, unique("fused-term")
    w, tail = _fused_worker_at(url, name, tmp_path, epoch=3, heartbeat=5)
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=60) == 0, "".join(tail.lines)
    study = _load(name, url)
    first = study.get_trials(deepcopy=False)[:4]
    assert all(t.state == TrialState.FAIL and t.user_attrs["fail_reason"].startswith("preempted") for t in first)
    assert sum("handed back" in line for line in tail.lines) == 4
    # The retries run alone this time: a fused member's checkpoint is a trial's checkpoint.
    later = start_worker(name, url, "--device", "cpu", env=cli_env(HPSEARCH_FUSE="1"), log=tmp_path / "later.log")
    assert later.wait(timeout=180) == 0, (tmp_path / "later.log").read_text()
    retries = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    assert len(retries) == 4 and all(t.user_attrs["resumed_from_epoch"] >= 2 for t in retries)
    assert all([r["epoch"] for r in t.user_attrs["curve"]] == list(range(1, 6)) for t in retries)
    assert_exactly_once(study, planned=4)


def test_kill9_of_a_fused_worker_requeues_every_member_once(pg_session_db: str, tmp_path: Path) -> None:
    url, name = pg_session_db, unique("fused-kill")
    victim, _ = _fused_worker_at(url, name, tmp_path, epoch=2, heartbeat=2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    other = start_worker(name, url, "--device", "cpu", "--heartbeat", "2", env=FUSE4, log=tmp_path / "other.log")
    assert other.wait(timeout=180) == 0, (tmp_path / "other.log").read_text()
    study = _load(name, url)
    trials = study.get_trials(deepcopy=False)
    assert all(t.state == TrialState.FAIL and t.user_attrs["fail_reason"].startswith("stale") for t in trials[:4])
    retries = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == [0, 1, 2, 3]
    assert all(t.user_attrs["resumed_from_epoch"] >= 1 for t in retries)  # resumed fused, from their checkpoints
    assert "fused: trials" in (tmp_path / "other.log").read_text()
    assert_exactly_once(study, planned=4)


# A real worker whose members each take `argv[1]` seconds to start (as a W&B start can), past the
# grace of its heartbeat (1.5 x 2 s): the group's trials must beat from the claim on.
SLOW_START = """
import sys, time
from hpsearch.worker import train
real = train.trainer_context
def slow(*args, **kwargs):
    time.sleep(float(sys.argv[1]))
    return real(*args, **kwargs)
train.trainer_context = slow
from hpsearch.cli.main import main
sys.exit(main(["worker", *sys.argv[2:]]))
"""


def test_a_slow_member_start_gets_no_member_of_the_group_reaped(pg_session_db: str, tmp_path: Path) -> None:
    url, name = pg_session_db, unique("fused-slow")
    _create(tmp_path, url, name, repeats=2, space={"lr": {"choices": [0.01, 0.02]}})
    proc = subprocess.run([sys.executable, "-c", SLOW_START, "2.5", "--study", name, "--storage", url,
                           "--device", "cpu", "--heartbeat", "2"], env=FUSE4, cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "fused: trials 0, 1, 2, 3" in out  # one group, its members started 2.5 s apart
    assert "no heartbeat" not in out and "result dropped" not in out and "Traceback" not in out, out
    study = _load(name, url)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, out  # none failed stale and re-queued
    assert_exactly_once(study, planned=4)


def test_replacing_the_study_under_a_fused_worker_is_one_clear_line(pg_url: str, tmp_path: Path) -> None:
    # A database of its own: on the session's shared one, another test holding table or row locks
    # open (tests/queue/test_exactly_once.py does, on purpose) kept create-study --replace waiting
    # until this worker had finished, and the replacement then came too late to be seen.
    url, name = pg_url, unique("fused-replaced")
    _create(tmp_path, url, name, repeats=2, space={"lr": {"choices": [0.01, 0.02]}}, train={**SLOW_TRAIN, "epochs": 40})
    w = start_worker(name, url, "--device", "cpu", "--heartbeat", "2", "--checkpoint-every", "0", env=FUSE4)
    tail = Tail(w)
    tail.wait_for("fused: trials 0, 1, 2, 3", timeout=60)
    tail.wait_for("epoch 2/40")
    run_cli("create-study", str(tmp_path / f"{name}.yaml"), "--storage", url, "--replace", check=True)
    code = w.wait(timeout=120)
    out = "".join(tail.lines)
    assert code != 0 and "Traceback" not in out, out
    assert "was deleted or replaced" in out, out
    # One clear line, not 15 "could not record" warnings before it (4 members x their fail reason,
    # divergent flag, traceback, ...): nothing of the old study is left to record anything on.
    assert [line for line in out.splitlines() if "WARNING" in line] == [], out


_TRIAL_TABLES = ("trial_intermediate_values", "trial_user_attributes", "trial_system_attributes", "trial_params",
                 "trial_values", "trial_heartbeats")
_STUDY_TABLES = ("study_directions", "study_user_attributes", "study_system_attributes")


@pytest.mark.parametrize("fuse", ["1", "4"])
def test_a_study_deleted_while_its_worker_writes_is_one_clear_line(pg_url: str, tmp_path: Path, fuse: str) -> None:
    # The window --replace only sometimes hits (CI did): the worker's report waits on the row lock of
    # a delete that has not committed yet, and then fails with a failed statement, not a KeyError.
    # The delete is held open from a second session until a worker's write waits on it.
    url, name = pg_url, unique("deleted-under")
    _create(tmp_path, url, name, repeats=2, space={"lr": {"choices": [0.01, 0.02]}}, train={**SLOW_TRAIN, "epochs": 40})
    w = start_worker(name, url, "--device", "cpu", "--heartbeat", "30", "--checkpoint-every", "0",
                     env=cli_env(HPSEARCH_FUSE=fuse))
    tail = Tail(w)
    tail.wait_for("epoch 1/40", timeout=60)
    engine = engine_of(url)
    try:
        with engine.connect() as conn:
            tx = conn.begin()
            sid = conn.execute(sa.text("SELECT study_id FROM studies WHERE study_name = :n"), {"n": name}).scalar()
            trials = "SELECT trial_id FROM trials WHERE study_id = :s"
            # Locked first: a write of the worker's that starts now waits on them (its foreign key check).
            conn.execute(sa.text("SELECT study_id FROM studies WHERE study_id = :s FOR UPDATE"), {"s": sid})
            conn.execute(sa.text(f"{trials} FOR UPDATE"), {"s": sid})
            for table in _TRIAL_TABLES:
                conn.execute(sa.text(f"DELETE FROM {table} WHERE trial_id IN ({trials})"), {"s": sid})
            conn.execute(sa.text("DELETE FROM trials WHERE study_id = :s"), {"s": sid})
            for table in _STUDY_TABLES:
                conn.execute(sa.text(f"DELETE FROM {table} WHERE study_id = :s"), {"s": sid})
            conn.execute(sa.text("DELETE FROM studies WHERE study_id = :s"), {"s": sid})
            wait_blocked(url)  # a write of the worker's waits on the deleted rows
            tx.commit()
    finally:
        engine.dispose()
    code = w.wait(timeout=120)
    out = "".join(tail.lines)
    assert code != 0 and "Traceback" not in out, out
    assert "was deleted or replaced" in out, out
    assert [line for line in out.splitlines() if "WARNING" in line] == [], out

