"""Local checkpoints are per study: ROOT/STUDY/ID, as S3's PREFIX/STUDY/ID. Two studies sharing an
artifacts directory, or a study and the one that replaced it (create-study --replace), never read,
overwrite or remove each other's checkpoints; a checkpoint written before the layout (ROOT/ID) is
still found when its trial is retried. Real Optuna, real torch, real worker processes."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest

from conftest import run_cli, start_worker, tiny_spec, unique, write_spec
from faultkit import SLOW_TRAIN, Tail, assert_exactly_once
from hpsearch import schema
from hpsearch.objective import record_each
from hpsearch.storage.backend import open_storage

ONE_POINT = {"lr": {"choices": [0.01]}}


def _save(store: Any, trial: optuna.Trial, epoch: int, fill: float) -> None:
    import torch

    from hpsearch.training import checkpoints

    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, fill)
    state = {"epoch": epoch, "curve": [], "best": None, "best_epoch": None, "stale": 0}
    checkpoints.save_checkpoint(SimpleNamespace(artifact_store=store, record=record_each), trial, model,
                                torch.optim.SGD(model.parameters(), lr=0.1), None, torch.Generator().manual_seed(0),
                                state, None)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_two_studies_in_one_directory_keep_their_own_checkpoints(tmp_path: Path) -> None:
    from hpsearch.storage.artifacts import artifact_store
    from hpsearch.training import checkpoints

    url = f"journal:{tmp_path / 'journal.log'}"
    root = tmp_path / "artifacts"  # beside the journal: the default for both studies
    names = ["sweep", "lr/sweep", ".."]  # a '/' stays inside its folder's name; '..' is no way out
    trials, stores = [], []
    for i, name in enumerate(names):
        study = optuna.create_study(study_name=name, storage=open_storage(url, create=True))
        trial = study.ask()  # trial 0 of each: the same number in every study
        store = artifact_store(url, study=name)
        _save(store, trial, epoch=i + 1, fill=float(i))
        trials.append(trial)
        stores.append(store)
    ids = [t.user_attrs[schema.CHECKPOINT] for t in trials]
    assert _files(root) == sorted([f"sweep/{ids[0]}", f"lr%2Fsweep/{ids[1]}", f"%2E%2E/{ids[2]}"])
    assert checkpoints.describe_store(stores[1]) == str(root / "lr%2Fsweep")  # what warnings name

    for i, (store, artifact_id) in enumerate(zip(stores, ids, strict=True)):
        ck = checkpoints.load_checkpoint(store, artifact_id, 0)
        assert ck is not None and ck["state"]["epoch"] == i + 1 and float(ck["model"]["weight"][0, 0]) == i
    # One study's store does not read another's checkpoint, even given its id ...
    assert checkpoints.load_checkpoint(stores[0], ids[1], 0) is None
    # ... nor remove it: discarding study 0's leaves the others'.
    checkpoints.discard_checkpoint(stores[0], {schema.CHECKPOINT: ids[1]})
    checkpoints.discard_checkpoint(stores[0], trials[0].user_attrs)
    assert _files(root) == sorted([f"lr%2Fsweep/{ids[1]}", f"%2E%2E/{ids[2]}"])


def _killed_mid_trial(tmp_path: Path, name: str, url: str, *extra: str) -> None:
    """A study of one slow trial whose worker is killed (kill -9) after checkpointing epoch 3."""
    spec = write_spec(tmp_path, tiny_spec(name, space=ONE_POINT, train=SLOW_TRAIN))
    run_cli("create-study", str(spec), "--storage", url, *extra, check=True)
    victim = start_worker(name, url, "--device", "cpu", "--checkpoint-every", "0", "--heartbeat", "2")
    Tail(victim).wait_for("[trial 0] epoch 3/8")
    victim.send_signal(signal.SIGKILL)
    victim.wait()


def test_a_checkpoint_of_the_old_layout_is_still_resumed_from(tmp_path: Path) -> None:
    # A study whose worker wrote ROOT/ID before checkpoints had a folder per study: its retry,
    # run by today's worker, resumes from that file and removes it once the trial completes.
    name, url = unique("legacy"), f"journal:{tmp_path / 'journal.log'}"
    _killed_mid_trial(tmp_path, name, url)
    root = tmp_path / "artifacts"
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    (killed,) = study.trials
    artifact_id, epoch = killed.user_attrs[schema.CHECKPOINT], killed.user_attrs[schema.CHECKPOINT_EPOCH]
    assert artifact_id.startswith(f"checkpoint-{study.user_attrs[schema.INSTANCE_ATTR]}-trial0-") and epoch >= 2
    for path in (root / name).iterdir():  # where the previous release wrote it, under the same id
        path.rename(root / path.name)

    retry = start_worker(name, url, "--device", "cpu", "--heartbeat", "2")
    out, _ = retry.communicate(timeout=300)
    assert retry.returncode == 0 and f"resumed from epoch {epoch} checkpoint" in out, out
    assert "starting from scratch" not in out, out
    assert_exactly_once(optuna.load_study(study_name=name, storage=open_storage(url)), 1)
    assert artifact_id not in _files(root)  # the legacy file too is removed when its trial completes


def test_a_replaced_study_never_reads_its_predecessors_checkpoint_and_the_replace_removes_it(tmp_path: Path) -> None:
    name, url = unique("replaced"), f"journal:{tmp_path / 'journal.log'}"
    _killed_mid_trial(tmp_path, name, url)
    root = tmp_path / "artifacts"
    old = {path: path.read_bytes() for path in (root / name).iterdir()}  # its checkpoint (and any torn one)
    assert old

    # The same name, another spec: its trial 0 is a new trial of a new study.
    spec = write_spec(tmp_path, tiny_spec(name, space={"lr": {"choices": [0.02]}}, train=SLOW_TRAIN), "new.yaml")
    run_cli("create-study", str(spec), "--storage", url, "--replace", check=True)
    assert not [path for path in old if path.exists()]  # deleted with the study it belonged to, as `delete` does
    worker = start_worker(name, url, "--device", "cpu", "--checkpoint-every", "0", "--heartbeat", "2")
    out, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0 and "resumed" not in out, out  # trained from scratch
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    assert_exactly_once(study, 1)
    assert study.trials[0].user_attrs.get(schema.CHECKPOINT_EPOCH) == 7  # it did checkpoint, epochs 1-7
    # --replace deleted the old study as `delete` does, its checkpoints with it; the new one's own
    # are removed as its trial completes: nothing is left.
    assert _files(root) == []


def test_delete_removes_the_checkpoints_no_trial_names_and_no_other_studys(tmp_path: Path) -> None:
    # kill -9 can leave a checkpoint its trial does not name: written and not yet named, or replaced
    # and not yet removed. Its name carries the study's creation tag, so `delete` finds it; a
    # same-named study of another storage shares the folder, and its checkpoint stays.
    name, url = unique("orphan"), f"journal:{tmp_path / 'journal.log'}"
    _killed_mid_trial(tmp_path, name, url)
    folder = tmp_path / "artifacts" / name
    tag = optuna.load_study(study_name=name, storage=open_storage(url)).user_attrs[schema.INSTANCE_ATTR]
    (folder / f"checkpoint-{tag}-trial0-{'0' * 32}").write_bytes(b"unnamed")
    other = folder / f"checkpoint-{'f' * 12}-trial0-{'1' * 32}"
    other.write_bytes(b"another storage's")
    ours = len(list(folder.iterdir())) - 1
    out = run_cli("delete", name, "--storage", url, "--yes", check=True).stdout
    assert f"{ours} checkpoints removed" in out, out
    assert list(folder.iterdir()) == [other]


@pytest.mark.parametrize("bad", [".", "..."])
def test_a_name_that_is_no_folder_is_still_one_folder(bad: str, tmp_path: Path) -> None:
    from hpsearch.storage.artifacts import artifact_store

    store = artifact_store(f"journal:{tmp_path / 'j.log'}", study=bad)
    assert store.path.parent == tmp_path / "artifacts" and store.path.name not in ("", ".", "..")
