"""A full or read-only disk never fails a trial or corrupts the journal; checkpoints are found again.

Real processes, real files: tiny tmpfs mounts (the tests run as root) for full and read-only disks,
`truncate` for a write cut short, PostgreSQL for a retry in another directory, and moto's S3
server (a real HTTP server on 127.0.0.1) for checkpoints on S3.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, cli_env, moto_s3, run_cli, tiny_spec, unique, write_spec
from hpsearch.errors import HpsearchError
from hpsearch.storage.backend import open_storage
from hpsearch.storage.journal import JournalError, SafeJournalFileBackend

# Slow enough epochs (~0.3 s) to kill a worker in the middle of a trial.
SLOW_TRAIN = {"epochs": 8, "batch_size": 4, "model": "dense", "hidden_size": 256, "hidden_layers": 2,
              "optimizer": "sgd"}
GRID = {"lr": {"choices": [0.01, 0.1]}, "optimizer": {"choices": ["sgd", "adam"]}}  # 4 points
CKPT_WARNING = "not saved to"


# ---------------------------------------------------------------- helpers


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """mount(name, size, ro=False): a tiny tmpfs under tmp_path, unmounted at teardown."""
    mounted: list[Path] = []

    def mount(name: str, size: str = "256k", ro: bool = False) -> Path:
        target = tmp_path / name
        target.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            why = f"cannot mount a tmpfs: {proc.stderr.strip()}"
            if os.environ.get("CI") == "true":
                pytest.fail(why)
            pytest.skip(why)
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], capture_output=True)


def fill(directory: Path) -> Path:
    """Fill the file system of `directory` to the last byte; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        block = b"\0" * 4096
        while True:
            try:
                if os.write(fd, block) == 0:
                    break
            except OSError:
                block = block[: len(block) // 2]  # down to single bytes: every last byte is taken
                if not block:
                    break
    finally:
        os.close(fd)
    return filler


def worker(name: str, url: str, *extra: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
           log: Path) -> subprocess.Popen[str]:
    """A real `python worker.py` in `cwd`, its output (stdout and stderr) in `log`."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "worker.py"), "--study", name, "--storage", url, "--device", "cpu", *extra],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True, env=env or cli_env(), cwd=cwd,  # noqa: SIM115
    )


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not seen; output:\n{path.read_text() if path.exists() else ''}")


def create(tmp_path: Path, url: str, name: str, **over: object) -> None:
    """`hpsearch create-study` through the CLI's own code, in this process (a subprocess would spend
    seconds importing torch); the workers, whose behaviour is under test, are real processes."""
    from hpsearch.cli.main import main

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        with warnings.catch_warnings():
            assert main(["create-study", str(write_spec(tmp_path, tiny_spec(name, **over))), "--storage", url]) == 0
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def load(name: str, url: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def assert_each_point_complete_once(study: optuna.Study, n_points: int) -> None:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    keys = Counter((t.user_attrs["config_id"], t.user_attrs["seed"]) for t in complete)
    assert len(keys) == n_points and set(keys.values()) == {1}, keys
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]


# ---------------------------------------------------------------- artifact store: full, read-only


@pytest.mark.parametrize("disk", ["full", "read-only"])
def test_a_full_or_read_only_artifact_store_fails_no_trial(disk: str, tmpfs: Callable[..., Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmpfs("artifacts", "128k", ro=disk == "read-only")
    if disk == "full":
        fill(store)
    url = f"journal:{tmp_path / 'journal.log'}"
    name = unique(f"ckpt-{disk}")
    monkeypatch.setenv("HPSEARCH_ARTIFACTS", str(store))
    env = cli_env()
    create(tmp_path, url, name, space=GRID, train={**tiny_spec("x")["train"], "epochs": 5})
    log = tmp_path / "w.log"
    proc = worker(name, url, "--checkpoint-every", "0", env=env, log=log)
    assert proc.wait(timeout=180) == 0, log.read_text()
    out = log.read_text()
    assert_each_point_complete_once(load(name, url), 4)
    # Each trial tried to checkpoint after epochs 1 to 4 (16 writes, each removing what it left):
    # one cause, said once by the worker (it was once per trial, and once per epoch for the removal).
    said = [line for line in out.splitlines() if "WARNING" in line]
    assert len(said) == 1 and CKPT_WARNING in said[0] and "said once per worker" in said[0], out
    reason = "No space left on device" if disk == "full" else "Read-only file system"
    assert reason in said[0], said
    assert "Traceback" not in out
    print(f"{disk} artifact store: 4/4 points COMPLETE; first warning: {said[0]}")


def test_checkpoints_of_finished_trials_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "artifacts"
    url = f"journal:{tmp_path / 'journal.log'}"
    name = unique("ckpt-gc")
    monkeypatch.setenv("HPSEARCH_ARTIFACTS", str(store))
    env = cli_env()
    create(tmp_path, url, name, space=GRID, train={**tiny_spec("x")["train"], "epochs": 3})
    log = tmp_path / "w.log"
    assert worker(name, url, "--checkpoint-every", "0", env=env, log=log).wait(timeout=180) == 0, log.read_text()
    study = load(name, url)
    assert_each_point_complete_once(study, 4)
    # Every trial did checkpoint (epochs 1 and 2) ...
    assert all(t.user_attrs.get("checkpoint_epoch") == 2 for t in study.get_trials(deepcopy=False))
    # ... and nothing of it is left once it completed (the study's folder is all there is).
    assert [p.name for p in store.iterdir()] == [name] and not list((store / name).iterdir())


def test_an_unreadable_checkpoint_is_one_warning_and_a_fresh_start(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    from optuna.artifacts import FileSystemArtifactStore

    from hpsearch.training.checkpoints import load_checkpoint

    store = FileSystemArtifactStore(tmp_path)
    (tmp_path / "torn").write_bytes(b"PK\x03\x04 not a whole checkpoint")
    with caplog.at_level(logging.WARNING, logger="hpsearch"):
        assert load_checkpoint(store, "torn", 7) is None
        assert load_checkpoint(store, "gone", 7) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("trial 7: checkpoint torn in ") and "cannot be read" in lines[0]
    assert lines[1].startswith("trial 7: checkpoint gone is not in ") and "HPSEARCH_ARTIFACTS" in lines[1]


# ---------------------------------------------------------------- journal: torn last line, full disk


def _ops(data: bytes) -> list[bytes]:
    return data.split(b"\n")[:-1]  # complete lines only


def test_the_journal_repairs_only_a_torn_last_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "journal.log"
    storage = optuna.storages.JournalStorage(SafeJournalFileBackend(str(path)))
    study = optuna.create_study(study_name="s", storage=storage)
    for i in range(3):
        study.set_user_attr(f"a{i}", i)
    whole = path.read_bytes()
    assert whole.endswith(b"\n")

    # A file that ends with its newline is never touched: an append only adds.
    study.set_user_attr("b", 1)
    assert path.read_bytes().startswith(whole)
    whole = path.read_bytes()

    for cut in (40, 1):  # a torn op, and a whole op that lacks only its newline
        path.write_bytes(whole[:-cut])
        # Readers tolerate the torn line (Optuna skips a line without its newline) ...
        reader = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
            SafeJournalFileBackend(str(path))))
        assert reader.user_attrs == {"a0": 0, "a1": 1, "a2": 2}
        # ... and the next append drops it, with one warning, keeping every complete line.
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hpsearch"):
            reader.set_user_attr("c", cut)
        after = path.read_bytes()
        assert _ops(after)[:-1] == _ops(whole)[:-1] and after.endswith(b"\n")
        assert len(_ops(after)) == len(_ops(whole))
        torn = len(whole) - cut - (whole[:-cut].rfind(b"\n") + 1)
        assert [r.getMessage() for r in caplog.records if "torn" in r.getMessage()] == [
            f"journal {path}: dropped a torn last line ({torn} bytes, an operation whose write was cut short);"
            " all complete operations are kept"]
        fresh = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
            SafeJournalFileBackend(str(path))))
        assert fresh.user_attrs == {"a0": 0, "a1": 1, "a2": 2, "c": cut}


def test_a_torn_journal_line_is_dropped_and_every_command_works(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    url = f"journal:{path}"
    name = unique("torn")
    create(tmp_path, url, name, space=GRID)
    spec_file = tmp_path / f"{name}.yaml"
    first = tmp_path / "w1.log"
    assert worker(name, url, "--n-trials", "1", "--heartbeat", "2", log=first).wait(timeout=120) == 0, first.read_text()
    whole = path.read_bytes()
    subprocess.run(["truncate", "-s", "-40", str(path)], check=True)  # the last op's write cut short
    kept = whole[: whole[:-40].rfind(b"\n") + 1]

    outputs = []
    for args in (["status", name, "--storage", url], ["create-study", str(spec_file), "--storage", url]):
        proc = run_cli(*args)
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, outputs[-1]
    second = tmp_path / "w2.log"
    assert worker(name, url, "--heartbeat", "2", log=second).wait(timeout=180) == 0, second.read_text()
    outputs.append(second.read_text())
    out = "\n".join(outputs)
    assert "Expecting" not in out and "Traceback" not in out, out
    assert out.count("dropped a torn last line") == 1, out  # by create-study, the first to append
    assert "nothing to do" in outputs[1]
    assert path.read_bytes().startswith(kept)  # every complete op is still there, in order
    # The torn op was trial 0's COMPLETE: the trial is reaped as stale and runs again, once.
    assert_each_point_complete_once(load(name, url), 4)


def test_a_full_journal_disk_is_one_line_and_recovers(tmpfs: Callable[..., Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmpfs("journal", "512k")
    path = disk / "journal.log"
    url = f"journal:{path}"
    name = unique("jfull")
    monkeypatch.setenv("HPSEARCH_ARTIFACTS", str(tmp_path / "artifacts"))  # checkpoints off the full disk
    env = cli_env()
    create(tmp_path, url, name, space=GRID)
    filler = fill(disk)

    log = tmp_path / "full.log"
    code = worker(name, url, "--heartbeat", "2", env=env, log=log).wait(timeout=120)
    out = log.read_text()
    errors = [line for line in out.splitlines() if line.startswith("hpsearch: error:")]
    assert code == JournalError.exit_code and len(errors) == 1, out
    assert errors[0].startswith(f"hpsearch: error: journal {path}: disk full (") and "Traceback" not in out, out
    assert path.read_bytes().endswith(b"\n")  # the failed append left no torn tail

    filler.unlink()
    log = tmp_path / "again.log"
    assert worker(name, url, "--heartbeat", "2", env=env, log=log).wait(timeout=180) == 0, log.read_text()
    assert "Expecting" not in log.read_text()
    assert_each_point_complete_once(load(name, url), 4)
    print(f"journal on a full disk: {errors[0]}")


def test_a_journal_append_that_fails_leaves_no_torn_tail(tmpfs: Callable[..., Path]) -> None:
    disk = tmpfs("j", "64k")
    path = disk / "journal.log"
    study = optuna.create_study(study_name="s", storage=optuna.storages.JournalStorage(
        SafeJournalFileBackend(str(path))))
    before = path.read_bytes()
    fill(disk)
    with pytest.raises(JournalError, match=r"disk full \(\[Errno 28\] No space left on device\)"):
        study.set_user_attr("big", "x" * 20000)  # longer than what is left of the file's last page
    assert path.read_bytes() == before


# ---------------------------------------------------------------- where checkpoints live


@pytest.mark.postgres
def test_a_retry_in_another_directory_resumes_from_the_recorded_artifacts(pg_session_db: str,
                                                                         tmp_path: Path) -> None:
    name = unique("cwd")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    env = cli_env()
    env.pop("HPSEARCH_ARTIFACTS", None)
    # create-study runs in `a`: the study records a/.hpsearch/artifacts as an absolute path.
    spec = write_spec(tmp_path, tiny_spec(name, space={"lr": {"choices": [0.01]}}, train=SLOW_TRAIN))
    proc = subprocess.run([sys.executable, "-m", "hpsearch", "create-study", str(spec), "--storage", pg_session_db],
                          capture_output=True, text=True, env=env, cwd=a, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert load(name, pg_session_db).user_attrs["hpsearch:artifacts"] == str(a / ".hpsearch" / "artifacts")

    first = tmp_path / "a.log"
    victim = worker(name, pg_session_db, "--checkpoint-every", "0", "--heartbeat", "2", cwd=a, env=env, log=first)
    wait_for_text(first, "[trial 0] epoch 4/8", victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    second = tmp_path / "b.log"
    assert worker(name, pg_session_db, "--heartbeat", "2", cwd=b, env=env, log=second).wait(timeout=180) == 0
    out = second.read_text()
    assert "resumed from epoch" in out, out
    assert not (b / ".hpsearch").exists()
    assert_each_point_complete_once(load(name, pg_session_db), 1)


# ---------------------------------------------------------------- S3


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3-compatible server on 127.0.0.1 (a real HTTP server) with an empty bucket."""
    with moto_s3(monkeypatch, "checkpoints", "s3://checkpoints") as endpoint:
        yield endpoint


def test_checkpoints_on_s3_are_saved_loaded_and_removed(s3_server: str, tmp_path: Path) -> None:
    import boto3
    import torch

    from hpsearch import schema
    from hpsearch.storage.artifacts import artifact_store
    from hpsearch.training import checkpoints, trainer

    store = artifact_store(f"journal:{tmp_path / 'journal.log'}")
    keys = lambda: [o["Key"] for o in boto3.client("s3", endpoint_url=s3_server).list_objects_v2(  # noqa: E731
        Bucket="checkpoints").get("Contents", [])]
    study = optuna.create_study(storage=open_storage(f"journal:{tmp_path / 'journal.log'}", create=True))
    trial = study.ask()
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = trainer.Context(device=torch.device("cpu"), artifact_store=store)
    gen = torch.Generator().manual_seed(1)
    for epoch in (1, 2):
        state = {"epoch": epoch, "curve": [], "best": None, "best_epoch": None, "stale": 0}
        checkpoints.save_checkpoint(ctx, trial, model, optimizer, None, gen, state, None)
    artifact_id = trial.user_attrs[schema.CHECKPOINT]
    assert keys() == [artifact_id]  # the newest only: epoch 1's was removed
    ck = checkpoints.load_checkpoint(store, artifact_id, trial.number)
    assert ck is not None and ck["state"]["epoch"] == 2
    assert torch.equal(ck["model"]["weight"], model.state_dict()["weight"])
    checkpoints.discard_checkpoint(store, trial.user_attrs)
    assert keys() == []
    checkpoints.discard_checkpoint(store, trial.user_attrs)  # already gone: still no error


def test_s3_without_boto3_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpsearch.storage.artifacts import artifact_store

    monkeypatch.setenv("HPSEARCH_ARTIFACTS", "s3://bucket")
    monkeypatch.setitem(sys.modules, "boto3", None)  # what `import boto3` sees when it is not installed
    with pytest.raises(HpsearchError) as info:
        artifact_store("journal:x")
    assert str(info.value) == ("HPSEARCH_ARTIFACTS=s3://bucket needs boto3, but it is not installed: "
                               "pip install 'hpsearch[s3]'")
