"""HPSEARCH_ARTIFACTS=s3://BUCKET/PREFIX: checkpoints land under PREFIX/STUDY/, a retry resumes from
them, and `hpsearch delete` removes them; on moto's S3 server (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from conftest import ROOT, cli_env, moto_s3, run_cli, start_worker, tiny_spec, unique, write_spec
from faultkit import SLOW_TRAIN, Tail, assert_exactly_once
from hpsearch import schema
from hpsearch.storage.backend import open_storage

BUCKET, PREFIX = "shared-bucket", "team-a/checkpoints"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's S3 server with an empty bucket; HPSEARCH_ARTIFACTS points under a prefix of it."""
    import boto3

    with moto_s3(monkeypatch, BUCKET, f"s3://{BUCKET}/{PREFIX}/") as endpoint:
        yield boto3.client("s3", endpoint_url=endpoint)


def _keys(client: Any) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def test_a_checkpoint_is_written_read_and_removed_under_prefix_and_study(s3: Any, tmp_path: Path) -> None:
    import torch

    from hpsearch import schema
    from hpsearch.storage.artifacts import artifact_store
    from hpsearch.training import checkpoints, trainer

    url = f"journal:{tmp_path / 'journal.log'}"
    store = artifact_store(url, study="lr/sweep")  # a '/' in a name stays inside its segment
    study = optuna.create_study(storage=open_storage(url, create=True))
    trial = study.ask()
    model = torch.nn.Linear(3, 2)
    ctx = trainer.Context(device=torch.device("cpu"), artifact_store=store)
    state = {"epoch": 1, "curve": [], "best": None, "best_epoch": None, "stale": 0}
    checkpoints.save_checkpoint(ctx, trial, model, torch.optim.SGD(model.parameters(), lr=0.1), None,
                                torch.Generator().manual_seed(1), state, None)
    artifact_id = trial.user_attrs[schema.CHECKPOINT]
    assert _keys(s3) == [f"{PREFIX}/lr%2Fsweep/{artifact_id}"]
    ck = checkpoints.load_checkpoint(store, artifact_id, trial.number)
    assert ck is not None and ck["state"]["epoch"] == 1
    assert checkpoints.describe_store(store) == f"s3://{BUCKET}/{PREFIX}/lr%2Fsweep"  # what warnings name
    checkpoints.discard_checkpoint(store, trial.user_attrs)
    assert _keys(s3) == []


def _killed_mid_trial(tmp_path: Path, name: str, url: str) -> None:
    """A study of one slow trial whose worker is killed (kill -9) after checkpointing epoch 3."""
    spec = write_spec(tmp_path, tiny_spec(name, space={"lr": {"choices": [0.01]}}, train=SLOW_TRAIN))
    run_cli("create-study", str(spec), "--storage", url, check=True)
    victim = start_worker(name, url, "--device", "cpu", "--checkpoint-every", "0", "--heartbeat", "2")
    Tail(victim).wait_for("[trial 0] epoch 3/8")
    victim.send_signal(signal.SIGKILL)
    victim.wait()


def test_a_retry_resumes_from_the_checkpoint_under_the_prefix(s3: Any, tmp_path: Path) -> None:
    name, url = unique("s3-prefix"), f"journal:{tmp_path / 'journal.log'}"
    _killed_mid_trial(tmp_path, name, url)
    keys = _keys(s3)
    tag = optuna.load_study(study_name=name, storage=open_storage(url)).user_attrs[schema.INSTANCE_ATTR]
    assert keys and all(k.startswith(f"{PREFIX}/{name}/checkpoint-{tag}-trial0-") for k in keys), keys

    retry = start_worker(name, url, "--device", "cpu", "--heartbeat", "2")
    out, _ = retry.communicate(timeout=300)
    assert retry.returncode == 0 and "resumed from epoch" in out, out
    assert "not saved to" not in out and "not in s3://" not in out, out  # every write and read went through
    assert_exactly_once(optuna.load_study(study_name=name, storage=open_storage(url)), 1)
    assert _keys(s3) == []  # the finished trial's checkpoint is removed


def test_delete_removes_the_study_checkpoints_from_s3(s3: Any, tmp_path: Path) -> None:
    name, url = unique("s3-delete"), f"journal:{tmp_path / 'journal.log'}"
    _killed_mid_trial(tmp_path, name, url)
    tag = optuna.load_study(study_name=name, storage=open_storage(url)).user_attrs[schema.INSTANCE_ATTR]
    # What a kill -9 can also leave (CI's full run once did): a checkpoint written and not yet named
    # on its trial, or the one it replaced not yet removed. And in the same folder, a checkpoint of
    # a same-named study of another storage, which is not this study's to delete.
    folder = f"{PREFIX}/{name}"
    s3.put_object(Bucket=BUCKET, Key=f"{folder}/checkpoint-{tag}-trial0-{'0' * 32}", Body=b"unnamed")
    other = f"{folder}/checkpoint-{'f' * 12}-trial0-{'1' * 32}"
    s3.put_object(Bucket=BUCKET, Key=other, Body=b"another storage's")
    ours = [k for k in _keys(s3) if k != other]
    proc = subprocess.run([sys.executable, "-m", "hpsearch", "delete", name, "--storage", url, "--yes"],
                          capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and f"{len(ours)} checkpoints removed" in proc.stdout, proc.stdout + proc.stderr
    assert _keys(s3) == [other]
