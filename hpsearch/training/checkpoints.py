"""Epoch checkpoints of the built-in trainer: saved to the artifact store, loaded by a retry, removed.

A checkpoint is an optimisation: it only saves a retry some epochs. Writing one (disk full,
read-only store, S3 down), reading one and removing one may fail without failing the trial.
Checkpoints are written straight to the artifact store and found through the trial's
`checkpoint` user attr; they are not registered as Optuna artifacts, since they are removed when
the trial finishes and the dashboard would list dead links.
"""

from __future__ import annotations

import copy
import io
import logging
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import optuna
import torch

from hpsearch.schema import CHECKPOINT, CHECKPOINT_EPOCH
from hpsearch.storage.artifacts import checkpoint_prefix
from hpsearch.storage.optuna_internals import file_store_path

log = logging.getLogger("hpsearch.objective")  # the trainer's logger: its lines keep their source


# Causes already said by this process: a read-only or full store fails every write and removal of
# every trial the same way, and one line says it (78 lines for 8 trials did not say more).
_SAID: set[tuple[str, ...]] = set()


class Saving(Protocol):
    """What save_checkpoint needs of the trial's context (hpsearch.training.trainer.Context)."""

    artifact_store: Any
    record: Callable[[optuna.Trial, dict[str, Any]], None]


def snapshot(model: torch.nn.Module) -> dict[str, Any]:
    """A compact copy of the model's state. Cloned, not deep-copied: a fused member's tensors are
    views into its group's stacked storage, and deepcopy (and torch.save) would copy all of it."""
    state = model.state_dict()
    copy_ = type(state)((k, v.detach().clone()) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)  # load_state_dict reads the modules' versions from it
    if metadata is not None:
        copy_._metadata = metadata  # type: ignore[attr-defined]
    return copy_


def save_checkpoint(ctx: Saving, trial: optuna.Trial, model: torch.nn.Module, optimizer: Any, schedule: Any,
                    gen: torch.Generator, state: dict[str, Any], best_state: dict[str, Any] | None,
                    torch_rng: Callable[[], torch.Tensor] | None = None) -> None:
    """`torch_rng` reads the state of the generator that draws dropout (default: torch's global one,
    which a trial trained alone uses; a fused member has its own)."""
    blob = {
        "model": snapshot(model), "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict() if schedule is not None else None,
        "generator": gen.get_state(), "torch_rng": (torch_rng or torch.get_rng_state)(),
        "state": copy.deepcopy(state), "best_state": best_state,
    }
    previous = trial.user_attrs.get(CHECKPOINT)
    # Named by the study's creation (its store's tag): `hpsearch delete` finds it even if the worker is
    # killed before the trial names it below, and never takes a same-named study's from a shared folder.
    artifact_id = f"{checkpoint_prefix(getattr(ctx.artifact_store, 'tag', None))}trial{trial.number}-{uuid.uuid4().hex}"
    try:
        _write(ctx.artifact_store, artifact_id, blob)
    except Exception as exc:  # noqa: BLE001 - see above: never fail a trial for its checkpoint
        _remove(ctx.artifact_store, artifact_id, quiet=True)  # what a full disk let through is of no use
        where = describe_store(ctx.artifact_store)
        _warn_once(("save", where, _why(exc)),
                   "trial %d: checkpoint of epoch %d not saved to %s (%s); training goes on, a retry would resume "
                   "from %s (said once per worker: later checkpoints failing the same way are not)", trial.number,
                   state["epoch"], where, _why(exc),
                   f"epoch {trial.user_attrs.get(CHECKPOINT_EPOCH)}" if previous else "scratch")
        return
    try:
        ctx.record(trial, {CHECKPOINT: artifact_id, CHECKPOINT_EPOCH: state["epoch"]})
    except BaseException:
        # The trial cannot name it (its study was deleted or replaced under the worker, the storage
        # is gone): nothing would find it, and it would lie in the study's folder for good.
        _remove(ctx.artifact_store, artifact_id, quiet=True)
        raise
    # Only the newest checkpoint is needed to resume; older ones would fill the disk.
    if previous and previous != artifact_id:
        _remove(ctx.artifact_store, previous)


def _write(store: Any, artifact_id: str, blob: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        torch.save(blob, path)
        with open(path, "rb") as f:
            store.write(artifact_id, f)


def load_checkpoint(store: Any, artifact_id: str, trial_number: int | None = None) -> dict[str, Any] | None:
    """The checkpoint's contents, or None (the trial then starts from scratch, saying why)."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    who = f"trial {trial_number}: " if trial_number is not None else ""
    try:
        with store.open_reader(artifact_id) as f:
            buf = io.BytesIO(f.read())
        return torch.load(buf, weights_only=False)
    except ArtifactNotFound:
        log.warning("%scheckpoint %s is not in %s (another artifacts location? see HPSEARCH_ARTIFACTS); "
                    "starting from scratch", who, artifact_id, describe_store(store))
    except Exception as exc:  # noqa: BLE001 - unreadable (truncated, permissions, S3 down): start over
        log.warning("%scheckpoint %s in %s cannot be read (%s); starting from scratch", who, artifact_id,
                    describe_store(store), _why(exc))
    return None


def discard_checkpoint(artifact_store: Any, trial_user_attrs: dict[str, Any]) -> None:
    """Remove a finished trial's last checkpoint. Never raises.

    For trials that ended COMPLETE or PRUNED: nothing will resume from it, and kept, every
    trial's last checkpoint fills the disk. A trial handed back or reaped keeps it (its retry
    resumes from it).
    """
    artifact_id = trial_user_attrs.get(CHECKPOINT)
    if artifact_store is None or not isinstance(artifact_id, str) or not artifact_id:
        return
    _remove(artifact_store, artifact_id)


def describe_store(store: Any) -> str:
    """The store's place for messages: a directory (the study's folder) or s3://bucket/prefix."""
    if isinstance(getattr(store, "path", None), Path):  # hpsearch.storage.artifacts.StudyDirStore
        return str(store.path)
    path = file_store_path(store)
    if path is not None:
        return path
    if getattr(store, "bucket", None):
        return f"s3://{store.bucket}"
    return type(store).__name__


def _remove(store: Any, artifact_id: str, quiet: bool = False) -> None:
    """`quiet`: removing what a failed write may have left, whose failure was said already."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    try:
        store.remove(artifact_id)
    except ArtifactNotFound:
        pass
    except Exception as exc:  # noqa: BLE001 - housekeeping: never fail a trial (or a worker) for it
        if not quiet:
            where = describe_store(store)
            _warn_once(("remove", where, _why(exc)), "checkpoint %s in %s not removed (%s; said once per worker: "
                       "later removals failing the same way are not)", artifact_id, where, _why(exc))


def _warn_once(cause: tuple[str, ...], message: str, *args: Any) -> None:
    if cause not in _SAID:
        _SAID.add(cause)
        log.warning(message, *args)


def _why(exc: BaseException) -> str:
    """One line: the OS's reason when there is one (not a path-laden repr)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}"[:300]
