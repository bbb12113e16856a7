"""One trial of the built-in trainer: build, (resume,) train, evaluate, report, prune, checkpoint.

Reads top to bottom: resolve the configuration, seed, build data/model/optimizer, restore the last
checkpoint if this trial is a retry, then the epoch loop, then the test evaluation. The test set is
touched only after training; selection and pruning see the validation split only.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from hpsearch.errors import Preempted
from hpsearch.queue.study import set_user_attrs
from hpsearch.spec import space as space_mod
from hpsearch.spec.parse import StudySpec
from hpsearch.training import settings as config_mod
from hpsearch.training.data import loading as data_mod
from hpsearch.training.models import build_model, count_parameters
from hpsearch.training.optim import build_loss, build_optimizer, build_schedule

CHECKPOINT = "checkpoint"  # user attr: artifact id of the trial's last epoch checkpoint
log = logging.getLogger("hpsearch.objective")


class Divergent(Exception):
    """The loss became NaN or infinite: recorded as a failed, divergent trial."""


@dataclass
class Context:
    """What the worker lends a trial: device, checkpoint store, stop flag, progress and tracking."""

    device: torch.device
    artifact_store: Any = None
    should_stop: Callable[[], bool] = lambda: False
    progress: Callable[[str], None] = print
    tracker: Any = None
    checkpoint_every: float = 30.0
    extra: dict[str, Any] = field(default_factory=dict)
    checkpoint_warned: bool = False  # a failed checkpoint write is said once per trial


def resolve_config(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    cfg = config_mod.defaults()
    cfg.update(spec.train)
    cfg.update(params)
    return cfg


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def evaluate(model: torch.nn.Module, loss_fn: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int, n_classes: int, confusion: bool = False) -> dict[str, Any]:
    model.eval()
    total_loss, correct = 0.0, 0
    cm = torch.zeros(n_classes, n_classes, dtype=torch.long) if confusion else None
    with torch.no_grad():
        for xb, yb in data_mod.batches(x, y, max(batch_size, 256), shuffle=False):
            out = model(xb)
            total_loss += float(loss_fn(out, yb)) * len(yb)
            pred = out.argmax(1)
            correct += int((pred == yb).sum())
            if cm is not None:
                cm += torch.bincount((yb * n_classes + pred).cpu(), minlength=n_classes**2).view(n_classes, n_classes)
    n = max(1, len(y))
    result: dict[str, Any] = {"loss": total_loss / n, "acc": correct / n}
    if cm is not None:
        result["confusion"] = cm.tolist()
    return result


def run(trial: optuna.Trial, spec: StudySpec, ctx: Context) -> float:
    r = start(trial, spec, ctx)
    for epoch in range(r.start_epoch + 1, r.epochs + 1):
        t0 = time.monotonic()
        sums = train_epoch(r, epoch)
        if end_epoch(r, epoch, *sums, t0):
            break
    return finish(r)


@dataclass
class TrialRun:
    """One trial's training in progress: what start() built and what each epoch updates.

    The fused path (hpsearch.training.fused) holds one per member and calls the same start/end_epoch/finish,
    so a fused member reports, prunes, checkpoints and tests exactly as a trial trained alone.
    """

    trial: optuna.Trial
    spec: StudySpec
    ctx: Context
    cfg: dict[str, Any]
    seed: int
    gen: torch.Generator  # batch order and augmentation; the global RNG drives dropout
    data: data_mod.Data
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    loss_fn: torch.nn.Module
    state: dict[str, Any]
    best_state: dict[str, Any] | None
    start_epoch: int
    dropout_rng: torch.Generator | None = None  # a fused member's own; None: torch's global generator
    t_start: float = field(default_factory=time.monotonic)
    last_ckpt: float = field(default_factory=time.monotonic)

    @property
    def epochs(self) -> int:
        return int(self.cfg["epochs"])

    @property
    def batch_size(self) -> int:
        return int(self.cfg["batch_size"])

    @property
    def metric_key(self) -> str:
        return self.spec.metric  # val_acc | val_loss


def start(trial: optuna.Trial, spec: StudySpec, ctx: Context) -> TrialRun:
    """Configuration, build and (for a retry) resume: everything before the first epoch."""
    # --- configuration ------------------------------------------------------------------
    params = space_mod.suggest(trial, spec.space)
    seed = int(trial.user_attrs.get("seed", spec.seed))
    cfg = resolve_config(spec, params)
    attrs: dict[str, Any] = {"config": {**cfg, "seed": seed, "dataset": spec.dataset},
                             "config_id": space_mod.config_id(params), "name": space_mod.short_name(params)}
    gen = seed_everything(seed)
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    ctx.progress(f"start: {shown or 'fixed settings'}, seed {seed}")

    # --- build -------------------------------------------------------------------------
    data = data_mod.load(spec.dataset, ctx.device)
    if ctx.extra.get("on_data"):
        ctx.extra["on_data"](data)
    model = build_model(cfg, data.input_shape, data.n_classes).to(ctx.device)
    optimizer = build_optimizer(model.parameters(), cfg)
    schedule = build_schedule(optimizer, cfg)
    loss_fn = build_loss(cfg["loss"])
    attrs["n_parameters"] = count_parameters(model)
    set_user_attrs(trial, attrs)

    # --- resume ------------------------------------------------------------------------
    state = {"epoch": 0, "curve": [], "best": None, "best_epoch": None, "stale": 0}
    best_state: dict[str, Any] | None = None
    ckpt_id = trial.user_attrs.get(CHECKPOINT)
    if ckpt_id and ctx.artifact_store is not None:
        ck = load_checkpoint(ctx.artifact_store, ckpt_id, trial.number)
        if ck is not None:
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            if schedule is not None and ck.get("schedule"):
                schedule.load_state_dict(ck["schedule"])
            gen.set_state(ck["generator"])
            torch.set_rng_state(ck["torch_rng"])
            best_state = ck.get("best_state")
            state = ck["state"]
            trial.set_user_attr("resumed_from_epoch", state["epoch"])
            for rec in state["curve"]:  # the retry carries the whole learning curve
                trial.report(rec[spec.metric], rec["epoch"])
            ctx.progress(f"resumed from epoch {state['epoch']} checkpoint")
    return TrialRun(trial=trial, spec=spec, ctx=ctx, cfg=cfg, seed=seed, gen=gen, data=data, model=model,
                    optimizer=optimizer, schedule=schedule, loss_fn=loss_fn, state=state, best_state=best_state,
                    start_epoch=int(state["epoch"]))


def train_epoch(r: TrialRun, epoch: int) -> tuple[float, int, int]:
    """One epoch of training alone: (summed loss, correct predictions, examples seen)."""
    model, optimizer, cfg = r.model, r.optimizer, r.cfg
    model.train()
    # Sums stay on the device: a float()/int() per step would sync the GPU every batch.
    tr_loss = torch.zeros((), device=r.ctx.device)
    tr_correct = torch.zeros((), dtype=torch.long, device=r.ctx.device)
    seen = 0
    for xb, yb in data_mod.batches(r.data.x_train, r.data.y_train, r.batch_size, r.gen):
        if r.ctx.should_stop():
            raise Preempted(f"stopped during epoch {epoch}; resumes from epoch {r.state['epoch']}")
        if cfg.get("augment"):
            xb = data_mod.augment(xb, r.gen, cfg["augment"])
        optimizer.zero_grad(set_to_none=True)
        out = model(xb)
        loss = r.loss_fn(out, yb)
        loss.backward()
        if cfg.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg["grad_clip"]))
        optimizer.step()
        tr_loss += loss.detach() * len(yb)
        tr_correct += (out.detach().argmax(1) == yb).sum()
        seen += len(yb)
    return float(tr_loss), int(tr_correct), seen


def end_epoch(r: TrialRun, epoch: int, tr_loss: float, tr_correct: int, seen: int, t0: float) -> bool:
    """Validate, record, report, prune, checkpoint: after the epoch's last step. True: stop early.
    Raises Divergent or optuna.TrialPruned."""
    trial, spec, ctx, model, state = r.trial, r.spec, r.ctx, r.model, r.state
    if not math.isfinite(tr_loss):
        raise Divergent(f"loss became {tr_loss / max(1, seen)} at epoch {epoch}")
    lr = r.optimizer.param_groups[0]["lr"]
    if r.schedule is not None:
        r.schedule.step()
    val = evaluate(model, r.loss_fn, r.data.x_val, r.data.y_val, r.batch_size, r.data.n_classes)
    if not math.isfinite(val["loss"]):
        raise Divergent(f"validation loss became {val['loss']} at epoch {epoch}")
    rec = {
        "epoch": epoch, "train_loss": tr_loss / max(1, seen), "train_acc": tr_correct / max(1, seen),
        "val_loss": val["loss"], "val_acc": val["acc"], "lr": lr, "epoch_time": time.monotonic() - t0,
    }
    state["curve"].append(rec)
    state["epoch"] = epoch
    value = rec[r.metric_key]
    maximize = spec.direction == "maximize"
    improved = state["best"] is None or (value > state["best"] if maximize else value < state["best"])
    if improved:
        state["best"], state["best_epoch"], state["stale"] = value, epoch, 0
        r.best_state = snapshot(model)
    else:
        state["stale"] += 1
    set_user_attrs(trial, {"curve": state["curve"], "epochs_trained": epoch - r.start_epoch})
    if ctx.tracker is not None:
        ctx.tracker.log_epoch(rec, model)
    ctx.progress(
        f"epoch {epoch}/{r.epochs} train_loss {rec['train_loss']:.4f} val_loss {rec['val_loss']:.4f} "
        f"val_acc {rec['val_acc']:.4f} ({rec['epoch_time']:.1f}s)"
    )

    # --- report, prune, checkpoint, stop early ---------------------------------------
    trial.report(value, epoch)
    # A repeat (`hpsearch repeat`) re-measures a chosen configuration on a new seed: pruning it
    # would bias the very comparison it runs for, so it trains to the end (still reporting).
    if not trial.user_attrs.get("is_repeat") and trial.should_prune():
        trial.set_user_attr("pruned_at_epoch", epoch)
        raise optuna.TrialPruned(f"pruned at epoch {epoch} ({r.metric_key}={value:.4f})")
    # Checkpoint at most every `checkpoint_every` seconds: a resume loses at most that much,
    # and short epochs do not pay a disk write and a database row each.
    if ctx.artifact_store is not None and epoch < r.epochs and time.monotonic() - r.last_ckpt >= ctx.checkpoint_every:
        save_checkpoint(ctx, trial, model, r.optimizer, r.schedule, r.gen, state, r.best_state,
                        r.dropout_rng.get_state if r.dropout_rng is not None else None)
        r.last_ckpt = time.monotonic()
    patience = int(r.cfg.get("patience") or 0)
    if patience and state["stale"] >= patience:
        trial.set_user_attr("early_stopped_at_epoch", epoch)
        return True
    return False


def finish(r: TrialRun) -> float:
    """The test evaluation, only now and with the weights of the best validation epoch."""
    model, data, state = r.model, r.data, r.state
    if r.best_state is not None:
        model.load_state_dict(r.best_state)
    test = evaluate(model, r.loss_fn, data.x_test, data.y_test, r.batch_size, data.n_classes, confusion=True)
    best_rec = next((x for x in state["curve"] if x["epoch"] == state["best_epoch"]), state["curve"][-1])
    set_user_attrs(r.trial, {
        "val_acc": best_rec["val_acc"], "val_loss": best_rec["val_loss"], "best_epoch": state["best_epoch"],
        "test_acc": test["acc"], "test_loss": test["loss"], "confusion_matrix": test["confusion"],
        "train_time_s": time.monotonic() - r.t_start,
    })
    if r.ctx.tracker is not None:
        r.ctx.tracker.log_test(test, data.class_names)
    return float(best_rec[r.metric_key])


def snapshot(model: torch.nn.Module) -> dict[str, Any]:
    """A compact copy of the model's state. Cloned, not deep-copied: a fused member's tensors are
    views into its group's stacked storage, and deepcopy (and torch.save) would copy all of it."""
    state = model.state_dict()
    copy_ = type(state)((k, v.detach().clone()) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)  # load_state_dict reads the modules' versions from it
    if metadata is not None:
        copy_._metadata = metadata  # type: ignore[attr-defined]
    return copy_


# ---------------------------------------------------------------- checkpoints
#
# A checkpoint is an optimisation: it only saves a retry some epochs. Writing one (disk full,
# read-only store, S3 down), reading one and removing one may fail without failing the trial.
# Checkpoints are written straight to the artifact store and found through the trial's
# `checkpoint` user attr; they are not registered as Optuna artifacts, since they are removed when
# the trial finishes and the dashboard would list dead links.


def save_checkpoint(ctx: Context, trial: optuna.Trial, model: torch.nn.Module, optimizer: Any, schedule: Any,
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
    artifact_id = f"checkpoint-trial{trial.number}-{uuid.uuid4().hex}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "checkpoint.pt"
            torch.save(blob, path)
            with open(path, "rb") as f:
                ctx.artifact_store.write(artifact_id, f)
    except Exception as exc:  # noqa: BLE001 - see above: never fail a trial for its checkpoint
        _remove(ctx.artifact_store, artifact_id)  # what a full disk let through is of no use
        if not ctx.checkpoint_warned:  # once per trial: a full disk stays full for a while
            ctx.checkpoint_warned = True
            log.warning("trial %d: checkpoint of epoch %d not saved to %s (%s); training goes on, a retry "
                        "would resume from %s", trial.number, state["epoch"], describe_store(ctx.artifact_store),
                        _why(exc), f"epoch {trial.user_attrs.get('checkpoint_epoch')}" if previous else "scratch")
        return
    set_user_attrs(trial, {CHECKPOINT: artifact_id, "checkpoint_epoch": state["epoch"]})
    # Only the newest checkpoint is needed to resume; older ones would fill the disk.
    if previous and previous != artifact_id:
        _remove(ctx.artifact_store, previous)


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
    """The store's place for messages: a directory or s3://bucket."""
    if getattr(store, "_base_path", None) is not None:
        return str(store._base_path)
    if getattr(store, "bucket", None):
        return f"s3://{store.bucket}"
    return type(store).__name__


def _remove(store: Any, artifact_id: str) -> None:
    from optuna.artifacts.exceptions import ArtifactNotFound

    try:
        store.remove(artifact_id)
    except ArtifactNotFound:
        pass
    except Exception as exc:  # noqa: BLE001 - housekeeping: never fail a trial (or a worker) for it
        log.warning("checkpoint %s in %s not removed (%s)", artifact_id, describe_store(store), _why(exc))


def _why(exc: BaseException) -> str:
    """One line: the OS's reason when there is one (not a path-laden repr)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}"[:300]
