"""The built-in trainer: one trial set up, (resumed,) trained epoch by epoch, tested.

What runs when a spec names no `objective:` (hpsearch.objective.run picks it).

Reads top to bottom: start() resolves the configuration, seeds, builds data/model/optimizer and
restores the last checkpoint if this trial is a retry; then train_epoch()/end_epoch() per epoch
(validate, record, report, prune, checkpoint, stop early); then finish(), the test evaluation.
The test set is touched only after training; selection and pruning see the validation split
only. Checkpoints themselves are hpsearch.training.checkpoints'.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import torch

from hpsearch import schema, settings
from hpsearch import space as space_mod
from hpsearch.metrics import BUILTIN, epoch_metric
from hpsearch.models import build_model, count_parameters
from hpsearch.objective import (
    Divergent,
    Preempted,
    constrain,
    record_each,
    refuse_duplicate,
    result,
)
from hpsearch.training.checkpoints import load_checkpoint, save_checkpoint, snapshot
from hpsearch.training.data import loading as data_mod
from hpsearch.training.optim import build_loss, build_optimizer, build_schedule

if TYPE_CHECKING:
    from hpsearch.spec.model import StudySpec


@dataclass
class Context:
    """What the worker lends a trial: device, checkpoint store, stop flag, progress, tracking, and
    `record`, through which every trial attribute (configuration, curve, result) reaches storage:
    the trainer imports nothing from hpsearch.queue or hpsearch.worker."""

    device: torch.device
    artifact_store: Any = None
    should_stop: Callable[[], bool] = lambda: False
    progress: Callable[[str], None] = print
    tracker: Any = None
    checkpoint_every: float = 30.0
    extra: dict[str, Any] = field(default_factory=dict)
    record: Callable[[optuna.Trial, dict[str, Any]], None] = record_each
    checkpoint_warned: bool = False  # a failed checkpoint write is said once per trial


def resolve_config(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    cfg = settings.defaults()
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


def run(trial: optuna.Trial, spec: StudySpec, ctx: Context) -> float | list[float]:
    """Train one trial alone; its W&B run (ctx.tracker) ends with it, failed or complete."""
    try:
        # Checked here, so a bad result ends the W&B run as failed, not complete.
        value = result(_train(trial, spec, ctx), spec)
    except BaseException as exc:
        if ctx.tracker is not None:
            ctx.tracker.finish_error(exc)
        raise
    if ctx.tracker is not None:
        ctx.tracker.finish("complete")
    return value


def _train(trial: optuna.Trial, spec: StudySpec, ctx: Context) -> float | list[float]:
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

    The fused path (hpsearch.worker.fused) holds one per member and calls the same start/end_epoch/finish,
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
    config_id: str = ""  # the configuration's identity (what refuse_duplicate compares)
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
        """The per-epoch metric that picks the best epoch (the first such objective, else val_loss)."""
        return epoch_metric(self.spec.metrics)

    @property
    def maximize(self) -> bool:
        key = self.metric_key
        given = dict(zip(self.spec.metrics, self.spec.directions, strict=True))
        return given.get(key, BUILTIN[key].direction) == "maximize"

    @property
    def reports(self) -> bool:
        """Whether each epoch is reported to Optuna (what a pruner reads): one objective, measured every
        epoch. Optuna's Trial.report refuses a multi-objective study."""
        return not self.spec.multi_objective and self.spec.metric == self.metric_key


# ---------------------------------------------------------------- setup and resume


def start(trial: optuna.Trial, spec: StudySpec, ctx: Context) -> TrialRun:
    """Configuration, build and (for a retry) resume: everything before the first epoch."""
    # --- configuration ------------------------------------------------------------------
    params = space_mod.suggest(trial, spec.space)
    seed = int(trial.user_attrs.get(schema.SEED, spec.seed))
    cfg = resolve_config(spec, params)
    attrs: dict[str, Any] = {schema.CONFIG: {**cfg, "seed": seed, "dataset": spec.dataset},
                             schema.CONFIG_ID: space_mod.config_id(params), schema.NAME: space_mod.short_name(params)}
    # Recorded before the duplicate check, so a concurrent trial of the same configuration sees it
    # (and a refused trial still says which configuration it was).
    ctx.record(trial, attrs)
    refuse_duplicate(trial, spec, attrs[schema.CONFIG_ID], seed)
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
    ctx.record(trial, {schema.N_PARAMETERS: count_parameters(model)})

    r = TrialRun(trial=trial, spec=spec, ctx=ctx, cfg=cfg, seed=seed, gen=gen, data=data, model=model,
                 optimizer=optimizer, schedule=schedule, loss_fn=loss_fn, best_state=None, start_epoch=0,
                 state={"epoch": 0, "curve": [], "best": None, "best_epoch": None, "stale": 0},
                 config_id=attrs[schema.CONFIG_ID])
    _resume(r)
    r.t_start = r.last_ckpt = time.monotonic()  # training starts now, after any resume
    return r


def _resume(r: TrialRun) -> None:
    """A retry goes on from its predecessor's last checkpoint (none, or unreadable: from scratch)."""
    trial, ctx = r.trial, r.ctx
    ckpt_id = trial.user_attrs.get(schema.CHECKPOINT)
    if not ckpt_id or ctx.artifact_store is None:
        return
    ck = load_checkpoint(ctx.artifact_store, ckpt_id, trial.number)
    if ck is None:
        return
    r.model.load_state_dict(ck["model"])
    r.optimizer.load_state_dict(ck["optimizer"])
    if r.schedule is not None and ck.get("schedule"):
        r.schedule.load_state_dict(ck["schedule"])
    r.gen.set_state(ck["generator"])
    torch.set_rng_state(ck["torch_rng"])
    r.best_state = ck.get("best_state")
    r.state = ck["state"]
    r.start_epoch = int(r.state["epoch"])
    trial.set_user_attr(schema.RESUMED_FROM_EPOCH, r.state["epoch"])
    for rec in r.state["curve"] if r.reports else []:  # the retry carries the whole learning curve
        trial.report(rec[r.metric_key], rec["epoch"])
    ctx.progress(f"resumed from epoch {r.state['epoch']} checkpoint")


# ---------------------------------------------------------------- one epoch


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
    value = _record_epoch(r, epoch, tr_loss, tr_correct, seen, t0)
    trial, ctx, state = r.trial, r.ctx, r.state
    # --- report, prune, checkpoint, stop early ---------------------------------------
    if r.reports:
        trial.report(value, epoch)
    # A repeat (`hpsearch repeat`) re-measures a chosen configuration on a new seed: pruning it
    # would bias the very comparison it runs for, so it trains to the end (still reporting).
    # After the last epoch there is nothing left to save: pruning then would only throw away a
    # finished result (and its test), so the pruner is asked after every epoch but the last.
    if epoch < r.epochs and r.reports and not trial.user_attrs.get(schema.IS_REPEAT) and trial.should_prune():
        trial.set_user_attr(schema.PRUNED_AT_EPOCH, epoch)
        raise optuna.TrialPruned(f"pruned at epoch {epoch} ({r.metric_key}={value:.4f})")
    # Checkpoint at most every `checkpoint_every` seconds: a resume loses at most that much,
    # and short epochs do not pay a disk write and a database row each.
    if ctx.artifact_store is not None and epoch < r.epochs and time.monotonic() - r.last_ckpt >= ctx.checkpoint_every:
        save_checkpoint(ctx, trial, r.model, r.optimizer, r.schedule, r.gen, state, r.best_state,
                        r.dropout_rng.get_state if r.dropout_rng is not None else None)
        r.last_ckpt = time.monotonic()
    patience = int(r.cfg.get("patience") or 0)
    if patience and state["stale"] >= patience:
        trial.set_user_attr(schema.EARLY_STOPPED_AT_EPOCH, epoch)
        return True
    return False


def _record_epoch(r: TrialRun, epoch: int, tr_loss: float, tr_correct: int, seen: int, t0: float) -> float:
    """Validate, append the epoch's record to the curve, keep the best weights; the metric's value."""
    state = r.state
    if not math.isfinite(tr_loss):
        raise Divergent(f"loss became {tr_loss / max(1, seen)} at epoch {epoch}")
    lr = r.optimizer.param_groups[0]["lr"]
    if r.schedule is not None:
        r.schedule.step()
    val = evaluate(r.model, r.loss_fn, r.data.x_val, r.data.y_val, r.batch_size, r.data.n_classes)
    if not math.isfinite(val["loss"]):
        raise Divergent(f"validation loss became {val['loss']} at epoch {epoch}")
    rec = {
        "epoch": epoch, "train_loss": tr_loss / max(1, seen), "train_acc": tr_correct / max(1, seen),
        "val_loss": val["loss"], "val_acc": val["acc"], "lr": lr, "epoch_time": time.monotonic() - t0,
    }
    state["curve"].append(rec)
    state["epoch"] = epoch
    value = rec[r.metric_key]
    improved = state["best"] is None or (value > state["best"] if r.maximize else value < state["best"])
    if improved:
        state["best"], state["best_epoch"], state["stale"] = value, epoch, 0
        r.best_state = snapshot(r.model)
    else:
        state["stale"] += 1
    r.ctx.record(r.trial, {schema.CURVE: state["curve"], schema.EPOCHS_TRAINED: epoch - r.start_epoch})
    if r.ctx.tracker is not None:
        r.ctx.tracker.log_epoch(rec, r.model)
    r.ctx.progress(
        f"epoch {epoch}/{r.epochs} train_loss {rec['train_loss']:.4f} val_loss {rec['val_loss']:.4f} "
        f"val_acc {rec['val_acc']:.4f} ({rec['epoch_time']:.1f}s)"
    )
    return value


# ---------------------------------------------------------------- test


def finish(r: TrialRun) -> float | list[float]:
    """The test evaluation, only now and with the weights of the best validation epoch; then what the
    spec optimizes or bounds besides accuracy (cost), and the constraints. The value(s) to tell."""
    model, data, state = r.model, r.data, r.state
    # Looked at again before a result exists: another worker may have drawn the same configuration
    # and seed at the same moment (hpsearch.objective.refuse_duplicate).
    refuse_duplicate(r.trial, r.spec, r.config_id, r.seed)
    if r.best_state is not None:
        model.load_state_dict(r.best_state)
    test = evaluate(model, r.loss_fn, data.x_test, data.y_test, r.batch_size, data.n_classes, confusion=True)
    best_rec = next((x for x in state["curve"] if x["epoch"] == state["best_epoch"]), state["curve"][-1])
    attrs = {
        schema.VAL_ACC: best_rec["val_acc"], schema.VAL_LOSS: best_rec["val_loss"],
        schema.BEST_EPOCH: state["best_epoch"], schema.TEST_ACC: test["acc"], schema.TEST_LOSS: test["loss"],
        schema.CONFUSION_MATRIX: test["confusion"], schema.TRAIN_TIME_S: time.monotonic() - r.t_start,
        schema.N_PARAMETERS: count_parameters(model), **_costs(r),
    }
    r.ctx.record(r.trial, attrs)
    if r.ctx.tracker is not None:
        r.ctx.tracker.log_test(test, data.class_names)
    constrain(r.trial, r.spec, lambda m: _number(attrs.get(BUILTIN[m].key)), r.ctx.record)
    values = [float(attrs[BUILTIN[m].key]) for m in r.spec.metrics]
    return values if r.spec.multi_objective else values[0]


def _costs(r: TrialRun) -> dict[str, Any]:
    """FLOPs per example and latency per batch, measured only when the spec optimizes or bounds them."""
    from hpsearch.training import costs

    wanted = set(r.spec.metrics) | set(r.spec.constraints)
    out: dict[str, Any] = {}
    if "flops" in wanted:
        out[schema.FLOPS] = costs.flops_per_example(r.model, r.data.x_val)
    if "latency_ms" in wanted:
        out[schema.LATENCY_MS] = costs.latency_ms(r.model, r.data.x_val, r.batch_size, r.ctx.device)
    return out


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
