"""W&B per trial: real workers write real offline runs, read back from their .wandb files.

wandb 0.31 has no Python reader for its run files, so `read_run` below decodes the file framing
(the LevelDB-style log W&B writes: a 7-byte header, 32 KiB blocks, CRC-checked records) and parses
each record with wandb's own protobuf schema (`wandb.proto.wandb_internal_pb2.Record`).
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from conftest import cli_env, run_cli, start_worker, tiny_spec, unique, write_spec
from hpsearch import settings as config
from hpsearch.spec.parse import spec_from_dict
from hpsearch.training import tracking, tracking_metrics

# ---------------------------------------------------------------- reading W&B run files

_BLOCK, _HEADER = 32 * 1024, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:_HEADER])
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B run file"
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # a block's tail too short for a record header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if (crc, length, kind) == (0, 0, 0):
            pos += left
            continue
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: bad checksum at {pos}"
        pos += _HEADER + length
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(run_dir: Path) -> dict[str, Any]:
    """One offline run directory -> id, name, group, config, per-step history, summary, exit."""
    (path,) = run_dir.glob("run-*.wandb")
    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "exit_code": None, "preempting": False,
                           "dir": run_dir}
    for r in read_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(id=r.run.run_id, name=r.run.display_name, group=r.run.run_group, project=r.run.project,
                       resumed=r.run.resume, tags=list(r.run.tags))
            out["config"].update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            out["summary"].update({_key(u): json.loads(u.value_json) for u in r.summary.update})
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
        elif kind == "preempting":
            out["preempting"] = True
    return out


def offline_runs(wandb_dir: Path) -> list[dict[str, Any]]:
    return [read_run(d) for d in sorted((wandb_dir / "wandb").glob("offline-run-*"))]


def tracked_spec(name: str, **over: Any) -> dict[str, Any]:
    return tiny_spec(name, tracking={"project": "hpsearch-tests", "tags": ["ci"]}, **over)


# ---------------------------------------------------------------- a small study, end to end


def test_offline_runs_of_a_study_hold_epochs_config_and_final_state(tmp_path: Path, journal_url: str) -> None:
    # Three grid points, run in order by one worker: a good one completes, a hopeless one is pruned
    # at epoch 1 against it, and an absurd learning rate diverges (a failed trial).
    name = unique("wb-study")
    spec = tracked_spec(
        name, pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        train={"epochs": 3, "batch_size": 128, "model": "dense", "hidden_size": 16, "hidden_layers": 1,
               "optimizer": "adam"},
        space={"lr": {"choices": [0.01, 1.0e-7, 1.0e30]}},
        fuse=1,  # one trial at a time, so the median pruner has a finished trial to compare with
    )
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", journal_url, check=True)
    env = cli_env(WANDB_DIR=str(tmp_path))
    proc = start_worker(name, journal_url, env=env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert out.count("W&B: runs are written offline") == 1, out

    runs = {r["config"]["trial_number"]: r for r in offline_runs(tmp_path)}
    assert sorted(runs) == [0, 1, 2]
    trials = {t.number: t for t in optuna.load_study(study_name=name, storage=_storage(journal_url)).trials}
    for number, run in runs.items():
        assert run["id"] == trials[number].user_attrs["wandb_run_id"]
        assert run["group"] == name and run["project"] == "hpsearch-tests"
        assert run["name"] == trials[number].user_attrs["name"]
        assert run["config"]["study"] == name
        assert run["config"]["lr"] == trials[number].params["lr"]  # the resolved configuration
        assert run["config"]["hidden_size"] == 16 and run["config"]["dataset"]["name"] == "digits"
        # Only what a dense model, Adam and no schedule read (no momentum, alpha, filters, step_size ...).
        settings = {k for k in run["config"] if k in config.TRAIN_KEYS}
        assert settings == DENSE_ADAM, (sorted(settings - DENSE_ADAM), sorted(DENSE_ADAM - settings))
        assert {"hpsearch", "ci"} <= set(run["tags"])
        # How it was computed: why a rerun may differ (threads, device, fused group, releases).
        assert run["config"]["threads"] == 1 and run["config"]["device"] == "cpu"
        assert run["config"]["fused_group"] == 1 and run["config"]["torch_version"]
        assert run["config"]["hpsearch_version"] == trials[number].user_attrs["hpsearch_version"]

    done = runs[0]
    epochs = [h for h in done["history"] if "epoch" in h]
    assert [h["epoch"] for h in epochs] == [1, 2, 3]
    for h in epochs:
        assert {"train/loss", "train/acc", "val/loss", "val/acc", "lr", "epoch_time", "grad_norm/total"} <= set(h)
        layers = [k for k in h if k.startswith("grad_norm/") and k != "grad_norm/total"]
        assert sorted(layers) == ["grad_norm/linear1", "grad_norm/linear2"]  # named, one per layer
        assert all(h[k] >= 0 for k in layers)
    assert done["summary"]["state"] == "complete" and done["exit_code"] == 0
    assert done["summary"]["test/acc"] == pytest.approx(trials[0].user_attrs["test_acc"])
    assert done["summary"]["test/confusion"] == trials[0].user_attrs["confusion_matrix"]
    assert done["summary"]["optuna/trial_number"] == 0 and done["summary"]["optuna/study"] == name
    assert done["summary"]["objective"] == pytest.approx(trials[0].value)
    table = done["dir"] / "files" / done["summary"]["test/confusion_matrix_table/path"]
    cells = json.loads(table.read_text())["data"]  # W&B's confusion-matrix chart: actual, predicted, n
    assert sum(c[2] for c in cells) == sum(map(sum, trials[0].user_attrs["confusion_matrix"]))

    pruned = runs[1]
    assert pruned["summary"]["state"] == "pruned at epoch 1", pruned["summary"]
    assert [h["epoch"] for h in pruned["history"] if "epoch" in h] == [1]
    assert "pruned" in pruned["tags"] and pruned["exit_code"] == 0

    failed = runs[2]
    assert failed["summary"]["state"].startswith("failed: Divergent"), failed["summary"]
    assert failed["exit_code"] == 1 and "failed" in failed["tags"]


# The training loop's settings plus what the dense model and Adam declare; `widths` is unset (None).
DENSE_ADAM = {"model", "optimizer", "loss", "schedule", "epochs", "batch_size", "augment", "grad_clip", "patience",
              "hidden_layers", "hidden_size", "activation", "init", "batch_norm", "dropout",
              "lr", "weight_decay", "betas", "eps"}


def test_a_cnn_momentum_run_gets_its_own_settings_and_named_layer_norms(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # One real offline run written in this process, for the model/optimizer pair the worker test lacks.
    from hpsearch.models import build_model
    from hpsearch.training.trainer import resolve_config

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    # wandb.init exports its in-process service's address; the worker processes later tests start
    # must not inherit it (monkeypatch removes what it set at teardown).
    for var in ("WANDB_SERVICE", "WANDB_SILENT"):
        monkeypatch.delenv(var, raising=False)
    spec = spec_from_dict(tracked_spec("wb-cnn", train={"model": "cnn", "optimizer": "momentum", "schedule": "step",
                                                        "filters": [4, 8], "fc_sizes": [8]}, space={}))
    trial = optuna.create_study(study_name="wb-cnn").ask()
    cfg = resolve_config(spec, {})
    trial.set_user_attr("config", {**cfg, "seed": 0, "dataset": spec.dataset})
    tracker = tracking.start_run(trial, spec, {})
    assert tracker is not None
    model = build_model(cfg, (1, 8, 8), 10)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.arange(4)).backward()
    tracker.log_epoch({"epoch": 1, "train_loss": 1.0, "val_acc": 0.5}, model)
    tracker.finish()
    import wandb

    wandb.teardown()  # the service this process started

    (run,) = offline_runs(tmp_path)
    settings = {k for k in run["config"] if k in config.TRAIN_KEYS}
    assert {"filters", "kernel_size", "fc_sizes", "momentum", "step_size", "gamma", "lr"} <= settings
    assert not {"betas", "eps", "alpha", "hidden_size", "hidden_layers", "stem", "mode"} & settings
    assert run["config"]["seed"] == 0 and run["config"]["dataset"]["name"] == "digits"
    (h,) = [h for h in run["history"] if "epoch" in h]
    assert {k for k in h if k.startswith("grad_norm/")} == {
        "grad_norm/conv1", "grad_norm/conv2", "grad_norm/linear1", "grad_norm/linear2", "grad_norm/total"}


def _storage(url: str) -> Any:
    from hpsearch.storage.backend import open_storage

    return open_storage(url)


def test_a_resumed_trial_appends_to_the_same_run(tmp_path: Path, journal_url: str) -> None:
    name = unique("wb-resume")
    # Epochs slow enough (~0.3 s) that SIGTERM lands mid-trial.
    spec = tracked_spec(name, train={"epochs": 6, "batch_size": 16, "model": "dense", "hidden_size": 1024,
                                     "hidden_layers": 2, "optimizer": "adam"},
                        space={"lr": {"choices": [0.001]}})
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", journal_url, check=True)
    env = cli_env(WANDB_DIR=str(tmp_path), HPSEARCH_CHECKPOINT_EVERY="0")  # a checkpoint every epoch

    first = start_worker(name, journal_url, "--heartbeat", "5", env=env)
    lines = []
    for line in first.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if "epoch 2/6" in line:
            first.send_signal(signal.SIGTERM)
            break
    rest, _ = first.communicate(timeout=60)
    assert first.returncode == 0, "".join(lines) + rest
    assert "handed back" in rest, "".join(lines) + rest

    second = start_worker(name, journal_url, env=env)
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 0 and "resumed from epoch" in out, out

    before, after = offline_runs(tmp_path)
    assert before["id"] == after["id"], "the retry must continue the same W&B run"
    assert after["resumed"]
    assert before["preempting"] and before["exit_code"] == tracking.PREEMPTED_EXIT
    stopped_at = before["summary"]["state"]
    assert stopped_at.startswith("preempted; resumes from epoch"), stopped_at
    k = int(stopped_at.rsplit(" ", 1)[1])
    first_epochs = [h["epoch"] for h in before["history"] if "epoch" in h]
    second_epochs = [h["epoch"] for h in after["history"] if "epoch" in h]
    assert first_epochs[:k] == list(range(1, k + 1))
    assert second_epochs == list(range(k + 1, 7)), (first_epochs, second_epochs)
    assert after["summary"]["state"] == "complete"
    # The retry is a new Optuna trial linked to the first; the run's config says so.
    assert after["config"]["retry_of"] == 0 and after["config"]["trial_number"] == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_wandb_writes_offline_and_never_fails_a_trial(tmp_path: Path, journal_url: str) -> None:
    name = unique("wb-down")
    # Both trials trained fused (one model, two members): each keeps its own run, open at once.
    spec = tracked_spec(name, space={"lr": {"choices": [0.01, 0.1]}}, fuse=2)
    spec["tracking"].update(mode="online", init_timeout=3)
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", journal_url, check=True)
    key = "k" * 40
    env = cli_env(WANDB_DIR=str(tmp_path), WANDB_API_KEY=key,
                  WANDB_BASE_URL=f"http://127.0.0.1:{_closed_port()}", HOME=str(tmp_path))
    env.pop("WANDB_MODE")
    t0 = time.monotonic()
    proc = start_worker(name, journal_url, env=env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "2 trials (2 complete)" in out, out
    assert out.count("W&B is unreachable") == 1, out  # one warning per worker, not per trial
    assert key not in out
    assert time.monotonic() - t0 < 60  # one bounded init timeout, not one per trial
    runs = offline_runs(tmp_path)
    assert len(runs) == 2 and all(r["summary"]["state"] == "complete" for r in runs)
    assert sorted(r["name"] for r in runs) == ["lr_0.01", "lr_0.1"]
    assert all([h["epoch"] for h in r["history"] if "epoch" in h] == [1, 2] for r in runs)


# ---------------------------------------------------------------- settings and helpers


def test_without_an_api_key_runs_are_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "absent-netrc"))
    assert tracking.choose_mode(None) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.choose_mode(None) == "online"
    assert tracking.choose_mode("offline") == "offline"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the cluster's setting beats the spec's
    assert tracking.choose_mode("online") == "offline"


def test_settings_come_from_command_line_then_spec() -> None:
    spec = spec_from_dict(tiny_spec("s", tracking={"project": "from-spec", "entity": "team"}))
    s = tracking.resolve_settings(spec, {"project": "from-cli"})
    assert (s.project, s.entity) == ("from-cli", "team")
    plain = spec_from_dict(tiny_spec("s", tracking="wandb"))
    assert tracking.resolve_settings(plain, {}).project == tracking.DEFAULT_PROJECT


@pytest.mark.parametrize(("tracking_cfg", "env"), [
    ("none", {}),
    ("wandb", {"HPSEARCH_TRACKING": "off"}),
    ("wandb", {"WANDB_MODE": "disabled"}),
])
def test_tracking_off_starts_no_run(tracking_cfg: Any, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Path) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    spec = spec_from_dict(tiny_spec("off", tracking=tracking_cfg))
    trial = optuna.create_study().ask()
    assert tracking.start_run(trial, spec, {}) is None
    assert "wandb_run_id" not in trial.user_attrs
    assert not (tmp_path / "wandb").exists()


def test_gradient_norms_are_per_layer() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    for p in model.parameters():
        p.grad = torch.full_like(p, 2.0)
    norms = tracking_metrics.gradient_norms(model)
    # linear1: 6 weights + 2 biases of value 2 -> sqrt(8 * 4); linear2: 2 + 1 -> sqrt(3 * 4)
    assert set(norms) == {"grad_norm/linear1", "grad_norm/linear2", "grad_norm/total"}  # not grad_norm/0
    assert norms["grad_norm/linear1"] == pytest.approx((8 * 4) ** 0.5)
    assert norms["grad_norm/linear2"] == pytest.approx((3 * 4) ** 0.5)
    assert norms["grad_norm/total"] == pytest.approx((11 * 4) ** 0.5)


def test_layer_names_count_kinds_in_order_and_keep_named_paths() -> None:
    seq = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.ReLU(),
                              torch.nn.Conv2d(2, 2, 3), torch.nn.Flatten(),
                              torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2)))
    assert tracking_metrics.layer_names(seq) == {"0": "conv1", "1": "batchnorm1", "3": "conv2", "5.0": "linear1",
                                         "5.1": "linear2"}

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(torch.nn.Linear(2, 2))
            self.head = torch.nn.Linear(2, 2)

    assert tracking_metrics.layer_names(Named()) == {"features.0": "features.0", "head": "head"}


def test_gradient_norms_of_a_model_without_gradients_are_empty() -> None:
    assert tracking_metrics.gradient_norms(torch.nn.Linear(2, 2)) == {}

