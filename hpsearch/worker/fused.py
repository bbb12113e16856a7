"""Horizontally fused trials: a worker trains K compatible trials of the built-in trainer as one model.

Compatible means the same fusion key: the same dataset, the same layers in the same order with
the same shapes (model family, widths, filters, kernel, activation), batch size and epochs.
Everything else stays per member: learning rate, optimizer (each member keeps its own torch
optimizer, so momentum, betas, weight decay and schedules are its own), loss, dropout rate, init,
seed, batch order, augmentation, gradient clipping, patience.

Each member remains its own trial in every respect. trainer.start/end_epoch/finish do for it
exactly what they do for a trial trained alone (per-epoch report and pruning, checkpoint in the
same format, W&B run, test with its best-validation weights, the same user attrs), and the worker's
own helpers end it (its heartbeat, hand-back, tell, repeats, checkpoint removal). A member that is
pruned, diverges, stops early or fails leaves the group; the others go on.

Only trials whose parameters are known when claimed are fused: grid points x seeds, repeats and
retries. A sampled (TPE/random) ticket gets its parameters from the sampler only once claimed,
so it runs alone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import optuna
import torch

from hpsearch import schema
from hpsearch.errors import HpsearchError
from hpsearch.models import build_model
from hpsearch.objective import BadResult, Preempted, result
from hpsearch.queue.faults import Heartbeat
from hpsearch.spec.model import MAX_FUSE, StudySpec
from hpsearch.storage.optuna_internals import trial_id
from hpsearch.training import trainer
from hpsearch.training.data import loading as data_mod
from hpsearch.training.fused_model import FusedModel, fusable, leaves
from hpsearch.training.fused_steps import Steps
from hpsearch.worker import train
from hpsearch.worker import trial as trial_mod
from hpsearch.worker.context import TrialContext

# Models whose forward is their layers in order (what FusedModel runs); plugins may branch.
SEQUENTIAL_MODELS = ("dense", "cnn", "tabular")
# Default group size of the built-in trainer per device type, chosen by bench/fusion.py (README,
# "Fused trials"). On the 2-core CPUs here, K=8 of the seed grid's MLP trained 1.2-1.45x the
# trials per hour of one at a time with 2 threads and 1.1x with 1 thread, its CNN 1.07-1.1x, and
# the whole mnist-grid shape with 2 one-thread workers finished 1.1x sooner; K=16 gave no more on
# CPU. On a GPU one such trial uses a few percent of the device and a fused step costs about one
# trial's kernel launches: 16 there (not measured here: no GPU).
DEFAULT_K = {"cpu": 8, "cuda": 16}


def group_size(spec: StudySpec, requested: int | None, device: Any) -> int:
    """K: the worker's --fuse, else $HPSEARCH_FUSE, else the spec's `fuse:`, else the device's default."""
    if spec.objective is not None:
        return 1  # a user objective trains however it likes: never fused
    k: Any = requested
    where = "--fuse"
    if k is None and os.environ.get("HPSEARCH_FUSE"):
        k, where = os.environ["HPSEARCH_FUSE"], "HPSEARCH_FUSE"
        try:
            k = int(k)
        except ValueError:
            raise HpsearchError(f"HPSEARCH_FUSE must be an integer in [1, {MAX_FUSE}], but got {k!r}") from None
    if k is None:
        k, where = spec.fuse, "fuse"
    if k is None:
        return DEFAULT_K.get(torch.device(device).type, 1)
    if not 1 <= int(k) <= MAX_FUSE:
        raise HpsearchError(f"{where} must be an integer in [1, {MAX_FUSE}], but got {k!r}")
    return int(k)


# ---------------------------------------------------------------- the fusion key


def fusion_key(spec: StudySpec, params: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> str | None:
    """What shapes the fused computation, as a string; None when the trial is never fused.

    Read from the model itself, built on the meta device (no memory, no init): each layer's type,
    settings and parameter shapes in order, dropout layers aside (their rate is per member).
    """
    if spec.objective is not None:
        return None
    cfg = trainer.resolve_config(spec, params)
    if cfg.get("model") not in SEQUENTIAL_MODELS:
        return None
    return _key(json.dumps(cfg, sort_keys=True, default=str), json.dumps(spec.dataset, sort_keys=True, default=str),
                tuple(input_shape), int(n_classes))


@lru_cache(maxsize=4096)
def _key(cfg_json: str, dataset_json: str, input_shape: tuple[int, ...], n_classes: int) -> str | None:
    cfg = json.loads(cfg_json)
    try:
        with torch.device("meta"):
            model = build_model(cfg, input_shape, n_classes)
    except Exception:  # noqa: BLE001 - a configuration that does not build fails alone, with its reason
        return None
    if not fusable(model):
        return None
    layers = [repr(m) for m in leaves(model) if not isinstance(m, torch.nn.Dropout)]
    return json.dumps({"dataset": json.loads(dataset_json), "layers": layers, "batch_size": int(cfg["batch_size"]),
                       "epochs": int(cfg["epochs"])}, sort_keys=True)


class Fusion:
    """A worker's fusion: its group size, the key of a waiting trial, and the group runner."""

    def __init__(self, spec: StudySpec, device: Any, k: int) -> None:
        data = data_mod.load(spec.dataset, device)
        self.spec, self.k = spec, k
        self._shape, self._classes = tuple(data.input_shape), int(data.n_classes)

    def key(self, frozen: optuna.trial.FrozenTrial) -> str | None:
        params = frozen.system_attrs.get(schema.FIXED_PARAMS)
        if not params and self.spec.space:
            return None  # a sampled ticket: its parameters are not chosen yet
        return fusion_key(self.spec, dict(params or {}), self._shape, self._classes)

    def run_group(self, study: optuna.Study, trials: list[optuna.Trial], spec: StudySpec, ctx: TrialContext,
                  opts: Any, out: Any) -> list[str]:
        return run_group(study, trials, spec, ctx, opts, out)


# ---------------------------------------------------------------- one group, worker side


@dataclass
class Member:
    trial: optuna.Trial
    timing: Callable[[], dict[str, Any]]
    heartbeat: Heartbeat  # the group's, shared: release()d for this member when it ends
    ctx: trainer.Context | None = None
    run: trainer.TrialRun | None = None
    dropout: torch.Generator | None = None
    state: str | None = None  # how it ended: complete, pruned, preempted, failed, divergent, dropped
    epoch: int = 0

    @property
    def label(self) -> str:
        return f"trial {self.trial.number}"


def run_group(study: optuna.Study, trials: list[optuna.Trial], spec: StudySpec, ctx: TrialContext, opts: Any,
              out: Any) -> list[str]:
    """Train `trials` fused; each ends as it would alone. Returns each member's end state."""

    out(f"fused: trials {', '.join(str(t.number) for t in trials)}")
    members: list[Member] = []
    # One heartbeat thread for the whole group, beating from the claim on: members start one after
    # another (a W&B start can take seconds each), and a member not yet started must not look dead.
    beat = Heartbeat(study, [trial_id(t) for t in trials], opts.heartbeat)
    with ExitStack() as stack:
        try:
            beat.__enter__()
            stack.callback(beat.__exit__, None, None, None)
            for trial in trials:
                members.append(Member(trial, trial_mod.begin(study, trial, ctx, opts), beat))
            # --- start: each member's W&B run, configuration, build, resume ---------------------
            for m in members:
                m.ctx = train.trainer_context(m.trial, spec, ctx, opts, lambda msg, m=m: out(f"[{m.label}] {msg}"))
                try:
                    m.run = trainer.start(m.trial, spec, m.ctx)
                    # Right away: the next member's start() reseeds torch's global generator.
                    m.dropout = _dropout_generator(m.run, ctx.device)
                except Exception as exc:  # noqa: BLE001 - this member's configuration: it fails alone
                    _end(study, m, spec, ctx, out, exc=exc)
            # --- train the rest together ------------------------------------------------------
            _train(study, [m for m in members if m.state is None], spec, ctx, out)
        except BaseException as exc:  # the group itself: every member still running ends with it
            _end_all(study, [m for m in members if m.state is None], spec, ctx, out, exc)
    # A trial that never became a member (the group's first beat or begin failed) is not this worker's.
    return [m.state or "dropped" for m in members] + ["dropped"] * (len(trials) - len(members))


def _train(study: optuna.Study, members: list[Member], spec: StudySpec, ctx: TrialContext, out: Any) -> None:
    if not members:
        return
    device = ctx.device
    for m in members:
        m.epoch = m.run.start_epoch  # type: ignore[union-attr]
    launch_bound = _launch_bound(device)
    net = FusedModel([m.run.model for m in members], [m.dropout for m in members],  # type: ignore[union-attr,misc]
                     grouped_conv=launch_bound, one_draw=launch_bound)
    # The registry's cross_entropy (losses take no plugins): every member's loss in one call.
    batched_loss = launch_bound and all(m.run.cfg["loss"] == "cross_entropy" for m in members)  # type: ignore[union-attr]
    data = members[0].run.data  # type: ignore[union-attr]

    while members:
        runs = [m.run for m in members]
        assert all(r is not None for r in runs)
        t0 = time.monotonic()
        for m in members:
            m.epoch += 1
        # --- one epoch of every member, fused ---------------------------------------------
        sums = _fused_epoch(net, runs, data, batched_loss)  # type: ignore[arg-type]
        # --- each member's epoch end, as alone: validate, report, prune, checkpoint --------
        leaving: list[tuple[Member, BaseException | None]] = []
        for (loss, correct, seen), m in zip(sums, members, strict=True):
            try:
                stop = trainer.end_epoch(m.run, m.epoch, loss, correct, seen, t0)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - pruned, divergent or failed: this member leaves
                leaving.append((m, exc))
                continue
            if stop or m.epoch >= m.run.epochs:  # type: ignore[union-attr]
                leaving.append((m, None))
        if not leaving:
            continue
        # --- members leave; the others go on with a smaller stack --------------------------
        gone = {id(m) for m, _ in leaving}
        keep = [i for i, m in enumerate(members) if id(m) not in gone]
        net.keep(keep)
        members = [members[i] for i in keep]
        for m, exc in leaving:
            if exc is None:
                try:
                    value = trainer.finish(m.run)  # type: ignore[arg-type]
                except Exception as failed:  # noqa: BLE001
                    _end(study, m, spec, ctx, out, exc=failed)
                    continue
                _end(study, m, spec, ctx, out, value=value)
            else:
                _end(study, m, spec, ctx, out, exc=exc)


def _launch_bound(device: Any) -> bool:
    """Whether kernel launches, not arithmetic, bound a small model's fused step: on a GPU. There
    convolutions are one grouped kernel, dropout masks one draw and cross-entropy one call for all
    members. On CPU each member's convolution, masks (its own generator: the masks it draws alone)
    and loss stay its own, so it trains as it would alone."""
    return torch.device(device).type != "cpu"


def _fused_epoch(net: FusedModel, runs: list[trainer.TrialRun], data: data_mod.Data,
                 batched_loss: bool = False) -> list[tuple[float, int, int]]:
    """One epoch for every member: each its own batches (its generator), one fused step per batch.
    `batched_loss`: every member's cross-entropy in one call (every member's loss is cross_entropy)."""
    device = data.x_train.device
    k = len(runs)
    steps = Steps([r.optimizer for r in runs])
    tr_loss = torch.zeros(k, device=device)
    tr_correct = torch.zeros(k, dtype=torch.long, device=device)
    seen = 0
    # Each member's own batch order (its generator), one gather for all: same data and batch size.
    for x, y in data_mod.stacked_batches(data.x_train, data.y_train, runs[0].batch_size, [r.gen for r in runs]):
        if runs[0].ctx.should_stop():
            raise _Stop()
        if any(r.cfg.get("augment") for r in runs):
            x = torch.stack([data_mod.augment(xb, r.gen, r.cfg["augment"]) if r.cfg.get("augment") else xb
                             for r, xb in zip(runs, x, strict=True)])
        net.zero_grad()
        out = net.forward(x)
        if batched_loss:
            per_example = torch.nn.functional.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
            losses = per_example.view(k, -1).mean(1)
        else:
            losses = torch.stack([r.loss_fn(out[i], y[i]) for i, r in enumerate(runs)])
        losses.sum().backward()  # d(sum)/d(loss_i) = 1: member i's gradient is its own loss's
        net.share_grads()
        for r in runs:
            if r.cfg.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(r.model.parameters(), float(r.cfg["grad_clip"]))
        steps.step_all()
        tr_loss += losses.detach() * len(y[0])
        tr_correct += (out.detach().argmax(2) == y).sum(1)
        seen += len(y[0])
    return [(float(loss), int(correct), seen) for loss, correct in zip(tr_loss.tolist(), tr_correct.tolist(),
                                                                       strict=True)]


class _Stop(Exception):
    """The worker was asked to stop during a fused epoch: every member is handed back."""


def _dropout_generator(r: trainer.TrialRun, device: Any) -> torch.Generator:
    """The generator of the member's dropout masks. On CPU it continues torch's global generator
    from where start() left it (seeded, then drawn by the init or restored from the checkpoint), so
    the masks are those of the trial alone; checkpoints save it as the trial's torch_rng."""
    if torch.device(device).type == "cpu":
        gen = torch.Generator()
        gen.set_state(torch.get_rng_state())
        r.dropout_rng = gen
        return gen
    # Elsewhere torch's own dropout kernel draws differently anyway: a member's seed and epoch.
    gen = torch.Generator(device=device)
    gen.manual_seed(r.seed * 1_000_003 + r.start_epoch)
    return gen


# ---------------------------------------------------------------- ending members


def _end(study: optuna.Study, m: Member, spec: StudySpec, ctx: TrialContext, out: Any,
         value: float | None = None, exc: BaseException | None = None) -> None:
    """End one member as the worker ends a trial alone: W&B run, then tell/hand back, heartbeat."""

    if exc is None:
        try:
            value = result(value, spec)
        except BadResult as bad:  # ends as a failure, its W&B run included
            exc = bad
    tracker = m.ctx.tracker if m.ctx is not None else None
    if exc is not None:
        if tracker is not None:
            tracker.finish_error(exc)
        try:
            m.state = trial_mod.ended(study, m.trial, exc, m.timing, ctx, out)
        except optuna.exceptions.UpdateFinishedTrialError:
            m.state = trial_mod.dropped(m.label, out)
        finally:
            ctx.stop.release(m.trial)
            m.heartbeat.release(trial_id(m.trial))
        return
    if tracker is not None:
        tracker.finish("complete")
    ctx.stop.release(m.trial)
    m.heartbeat.release(trial_id(m.trial))
    m.state = trial_mod.completed(study, m.trial, spec, value, m.timing, ctx, out)  # type: ignore[arg-type]


def _end_all(study: optuna.Study, members: list[Member], spec: StudySpec, ctx: TrialContext, out: Any,
             exc: BaseException) -> None:
    """A group-wide end (stop signal, interrupt, a failure of the fused step): each member ends with
    it, all of them even if one of them re-raises (an interrupt hands every member back first)."""
    raised: BaseException | None = None
    for m in members:
        mine: BaseException = exc
        if isinstance(exc, _Stop):
            resume = m.run.state["epoch"] if m.run is not None else 0
            mine = Preempted(f"stopped during epoch {m.epoch}; resumes from epoch {resume}")
        try:
            _end(study, m, spec, ctx, out, exc=mine)
        except BaseException as again:  # noqa: BLE001 - re-raised once every member has ended
            m.state = m.state or "preempted"
            raised = raised or again
    if raised is not None:
        raise raised
