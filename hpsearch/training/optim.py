"""Optimizers, losses and learning-rate schedules, each a plain registry.

An optimizer builder gets (params, cfg) with cfg the trial's resolved configuration and returns a
torch.optim.Optimizer; a user optimizer is reachable as `package.module:function` with the same
signature. `@reads(...)` names the settings a builder reads (only those reach W&B).

Defaults and accepted values are hpsearch.settings' (a spec's values were checked
against them at create-study). Values are still read through float(): a user objective may call
build_optimizer with a configuration no spec validated, and a number left as text then fails
here with the key's name rather than deep inside torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from hpsearch.errors import HpsearchError
from hpsearch.registry import Registry, check_signature
from hpsearch.settings import default, reads, setting

OPTIMIZERS: Registry[Any] = Registry("optimizer")
LOSSES: Registry[Any] = Registry("loss", allow_plugins=False)
SCHEDULES: Registry[Any] = Registry("schedule", allow_plugins=False)

Params = Iterable[torch.nn.Parameter]


def _num(cfg: dict[str, Any], key: str) -> float:
    try:
        return float(cfg[key])
    except (TypeError, ValueError):
        raise HpsearchError(f"{key} must be a number, but got {key}={cfg[key]!r}") from None


def _common(cfg: dict[str, Any]) -> dict[str, float]:
    return {"lr": _num(cfg, "lr"), "weight_decay": _num(cfg, "weight_decay")}


def _fast(params: Params, fused: bool = True) -> tuple[list[Any], dict[str, bool]]:
    """The parameters as a list, and the quickest implementation torch has for them.

    torch picks its per-tensor loop on CPU by default: Adam then makes eight passes over every
    parameter, one small kernel per pass and tensor. Its fused kernels (SGD, Adam, AdamW; CPU and
    CUDA) make one pass, the same arithmetic up to floating-point rounding; measured 4-8x quicker
    steps for the seed grid's MLP on CPU (bench/fusion.py's optimizer table). Where fused does not
    exist, or for parameters it does not take, the multi-tensor (foreach) loop is still quicker.
    """
    params = list(params)
    # Parameter groups (dicts) are left to torch's default: a caller who builds them chose.
    if not params or not all(isinstance(t, torch.Tensor) and t.is_floating_point()
                             and t.device.type in ("cpu", "cuda") for t in params):
        return params, {}
    return params, ({"fused": True} if fused else {"foreach": True})


def _betas(cfg: dict[str, Any]) -> tuple[float, float]:
    b = cfg.get("betas") or default("betas")
    if not isinstance(b, (list, tuple)) or len(b) != 2:
        raise HpsearchError(f"betas must be a list of two numbers, but got betas={b!r}")
    return float(b[0]), float(b[1])


def _adam_family(cfg: dict[str, Any]) -> dict[str, Any]:
    return {**_common(cfg), "betas": _betas(cfg), "eps": _num(cfg, "eps")}


@OPTIMIZERS.register("sgd")
@reads("lr", "weight_decay")
def sgd(params: Params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Plain SGD: `momentum` is ignored here (the `momentum` and `nag` optimizers use it)."""
    params, impl = _fast(params)
    return torch.optim.SGD(params, **_common(cfg), **impl)


@OPTIMIZERS.register("momentum")
@reads("lr", "weight_decay", "momentum")
def momentum(params: Params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD with heavy-ball momentum (`momentum`, 0.9 by default)."""
    params, impl = _fast(params)
    return torch.optim.SGD(params, momentum=_num(cfg, "momentum"), **_common(cfg), **impl)


@OPTIMIZERS.register("nag")
@reads("lr", "weight_decay", "momentum")
def nag(params: Params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Nesterov accelerated gradient; torch refuses nesterov without momentum, so 0 means the default."""
    momentum_ = _num(cfg, "momentum") or default("momentum")
    params, impl = _fast(params)
    return torch.optim.SGD(params, momentum=momentum_, nesterov=True, **_common(cfg), **impl)


@OPTIMIZERS.register("rmsprop")
@reads("lr", "weight_decay", "alpha", "eps")
def rmsprop(params: Params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """RMSprop with smoothing `alpha` and no momentum (Keras' and torch's default)."""
    alpha = _num({"alpha": default("alpha"), **cfg}, "alpha")
    params, impl = _fast(params, fused=False)
    return torch.optim.RMSprop(params, alpha=alpha, eps=_num(cfg, "eps"), **_common(cfg), **impl)


@OPTIMIZERS.register("adam")
@reads("lr", "weight_decay", "betas", "eps")
def adam(params: Params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    params, impl = _fast(params)
    return torch.optim.Adam(params, **_adam_family(cfg), **impl)


@OPTIMIZERS.register("nadam")
@reads("lr", "weight_decay", "betas", "eps")
def nadam(params: Params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    params, impl = _fast(params, fused=False)
    return torch.optim.NAdam(params, **_adam_family(cfg), **impl)


@OPTIMIZERS.register("adamw")
@reads("lr", "weight_decay", "betas", "eps")
def adamw(params: Params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    params, impl = _fast(params)
    return torch.optim.AdamW(params, **_adam_family(cfg), **impl)


def build_optimizer(params: Params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    builder = OPTIMIZERS.get(cfg["optimizer"])
    check_signature(builder, f"optimizer {cfg['optimizer']!r}", "params, cfg", params, cfg)
    opt = builder(params, cfg)
    if not isinstance(opt, torch.optim.Optimizer):
        raise HpsearchError(f"optimizer {cfg['optimizer']!r} must return a torch.optim.Optimizer, but got {type(opt).__name__}")
    return opt


class MSEOnProbabilities(nn.Module):
    """Mean squared error between softmax outputs and one-hot targets (the classic MLP exercise)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(target, logits.shape[1]).to(logits.dtype)
        return nn.functional.mse_loss(torch.softmax(logits, dim=1), onehot)


@LOSSES.register("cross_entropy")
def cross_entropy() -> nn.Module:
    return nn.CrossEntropyLoss()


@LOSSES.register("mean_squared_error")
def mean_squared_error() -> nn.Module:
    return MSEOnProbabilities()


def build_loss(name: str) -> nn.Module:
    return LOSSES.get(name)()


@SCHEDULES.register("none")
@reads()
def no_schedule(opt: torch.optim.Optimizer, cfg: dict[str, Any]) -> Any:
    return None


@SCHEDULES.register("step")
@reads("step_size", "gamma")
def step_schedule(opt: torch.optim.Optimizer, cfg: dict[str, Any]) -> Any:
    return torch.optim.lr_scheduler.StepLR(opt, step_size=int(cfg["step_size"]), gamma=_num(cfg, "gamma"))


@SCHEDULES.register("cosine")
@reads("epochs")
def cosine_schedule(opt: torch.optim.Optimizer, cfg: dict[str, Any]) -> Any:
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(cfg["epochs"])))


def build_schedule(opt: torch.optim.Optimizer, cfg: dict[str, Any]) -> Any:
    return SCHEDULES.get(setting(cfg, "schedule"))(opt, cfg)
