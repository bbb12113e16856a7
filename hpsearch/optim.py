"""Optimizers, losses and learning-rate schedules, each a plain registry."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from hpsearch.errors import HpsearchError
from hpsearch.registry import Registry

OPTIMIZERS: Registry[Any] = Registry("optimizer")
LOSSES: Registry[Any] = Registry("loss", allow_plugins=False)
SCHEDULES: Registry[Any] = Registry("schedule", allow_plugins=False)

Params = Iterable[torch.nn.Parameter]


def _betas(cfg: dict[str, Any]) -> tuple[float, float]:
    b = cfg.get("betas") or [0.9, 0.999]
    return float(b[0]), float(b[1])


@OPTIMIZERS.register("sgd")
def sgd(params: Params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Plain SGD: no momentum, whatever `momentum` says (that is what `momentum` is for)."""
    return torch.optim.SGD(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


@OPTIMIZERS.register("momentum")
def momentum(params: Params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])


@OPTIMIZERS.register("nag")
def nag(params: Params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"] or 0.9, nesterov=True,
                           weight_decay=cfg["weight_decay"])


@OPTIMIZERS.register("rmsprop")
def rmsprop(params: Params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=cfg["lr"], eps=cfg["eps"], weight_decay=cfg["weight_decay"])


@OPTIMIZERS.register("adam")
def adam(params: Params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg["lr"], betas=_betas(cfg), eps=cfg["eps"], weight_decay=cfg["weight_decay"])


@OPTIMIZERS.register("nadam")
def nadam(params: Params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.NAdam(params, lr=cfg["lr"], betas=_betas(cfg), eps=cfg["eps"], weight_decay=cfg["weight_decay"])


@OPTIMIZERS.register("adamw")
def adamw(params: Params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg["lr"], betas=_betas(cfg), eps=cfg["eps"], weight_decay=cfg["weight_decay"])


def build_optimizer(params: Params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    opt = OPTIMIZERS.get(cfg["optimizer"])(params, cfg)
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
def no_schedule(opt: torch.optim.Optimizer, cfg: dict[str, Any]) -> Any:
    return None


@SCHEDULES.register("step")
def step_schedule(opt: torch.optim.Optimizer, cfg: dict[str, Any]) -> Any:
    return torch.optim.lr_scheduler.StepLR(opt, step_size=int(cfg["step_size"]), gamma=float(cfg["gamma"]))


@SCHEDULES.register("cosine")
def cosine_schedule(opt: torch.optim.Optimizer, cfg: dict[str, Any]) -> Any:
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(cfg["epochs"])))


def build_schedule(opt: torch.optim.Optimizer, cfg: dict[str, Any]) -> Any:
    return SCHEDULES.get(cfg.get("schedule", "none"))(opt, cfg)
