"""User plugins for the catalogue tests: a model, an optimizer and a dataset named package.module:function."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn


def tiny_model(cfg: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """A user model: the same signature as the built-in builders."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), int(cfg.get("hidden_size", 8))),
                         nn.Tanh(), nn.Linear(int(cfg.get("hidden_size", 8)), n_classes))


def half_momentum_sgd(params: Any, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """A user optimizer: SGD with its own fixed momentum."""
    return torch.optim.SGD(params, lr=float(cfg["lr"]), momentum=0.5)


def not_a_model(cfg: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> str:
    return "oops"


def not_an_optimizer(params: Any, cfg: dict[str, Any]) -> list:
    return list(params)


def blobs(cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """A user dataset returning a plain dict of the four arrays."""
    rng = np.random.default_rng(int(cfg.get("seed", 0)))
    n, f = int(cfg.get("n", 80)), 5
    y = np.arange(n) % 2
    x = (rng.normal(0, 1, (n, f)) + 2.0 * y[:, None]).astype(np.float32)
    return {"x_train": x[: n * 3 // 4], "y_train": y[: n * 3 // 4], "x_test": x[n * 3 // 4 :], "y_test": y[n * 3 // 4 :]}
