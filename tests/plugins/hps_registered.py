"""A plugin module as a user writes one: importing it registers a model, an optimizer and a dataset
under plain names, which a spec then uses like the built-in ones (its `plugins:` lists this module)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from hpsearch import MODELS, OPTIMIZERS, Raw, reads, register_dataset


@MODELS.register("plugin_mlp")
@reads("hidden_size")
def plugin_mlp(cfg: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    width = int(cfg.get("hidden_size", 8))
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.Tanh(), nn.Linear(width, n_classes))


@OPTIMIZERS.register("plugin_sgd")
@reads("lr")
def plugin_sgd(params: Any, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=float(cfg["lr"]), momentum=0.5)


@register_dataset("plugin_blobs", ("n",))
def plugin_blobs(cfg: dict[str, Any]) -> Raw:
    """Two Gaussian blobs in 5 features: easy enough that a tiny MLP beats chance in one epoch."""
    rng = np.random.default_rng(0)
    n = int(cfg.get("n", 120))
    y = np.arange(n) % 2
    x = (rng.normal(0, 1, (n, 5)) + 2.0 * y[:, None]).astype(np.float32)
    cut = n * 3 // 4
    return Raw(x[:cut], y[:cut], x[cut:], y[cut:], ["a", "b"])
