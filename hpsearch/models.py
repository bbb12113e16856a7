"""Model registry: `@MODELS.register(name)` builders taking the resolved config and data shape.

A builder gets (cfg, input_shape, n_classes) and returns an nn.Module; `input_shape` is (F,) for
tabular data and (C, H, W) for images, so one model family serves every compatible dataset.
A user model is reachable as `package.module:function` with the same signature.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from hpsearch.errors import HpsearchError
from hpsearch.registry import Registry

MODELS: Registry[Any] = Registry("model")
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "identity": nn.Identity,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}
INITS = ("default", "random", "xavier", "kaiming")


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        from hpsearch.registry import unknown_name_message

        raise HpsearchError(unknown_name_message("activation", name, ACTIVATIONS))
    return ACTIVATIONS[name]()


def init_weights(model: nn.Module, scheme: str, act: str = "relu") -> None:
    """random: N(0, 0.05) as in the classic from-scratch MLP scripts; xavier/kaiming as named."""
    if scheme == "default":
        return
    if scheme not in INITS:
        from hpsearch.registry import unknown_name_message

        raise HpsearchError(unknown_name_message("init", scheme, INITS))
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if scheme == "random":
                nn.init.normal_(m.weight, 0.0, 0.05)
            elif scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu" if act in ("relu", "gelu") else "linear")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def mlp_widths(cfg: dict[str, Any]) -> list[int]:
    widths = cfg.get("widths")
    if widths:
        return [int(w) for w in widths]
    return [int(cfg["hidden_size"])] * int(cfg["hidden_layers"])


def mlp_layers(n_in: int, widths: list[int], n_out: int, cfg: dict[str, Any]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers.append(nn.Linear(n_in, w))
        if cfg.get("batch_norm"):
            layers.append(nn.BatchNorm1d(w))
        layers.append(activation(cfg.get("activation", "relu")))
        if float(cfg.get("dropout", 0) or 0) > 0:
            layers.append(nn.Dropout(float(cfg["dropout"])))
        n_in = w
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


@MODELS.register("dense")
def dense(cfg: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """MLP over flattened input: depth/width or per-layer widths, activation, init, BN, dropout."""
    n_in = math.prod(input_shape)
    model = nn.Sequential(nn.Flatten(), mlp_layers(n_in, mlp_widths(cfg), n_classes, cfg))
    init_weights(model, cfg.get("init", "default"), cfg.get("activation", "relu"))
    return model


@MODELS.register("cnn")
def cnn(cfg: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Conv blocks (conv, BN?, act, 2x2 max pool, dropout) then a fully connected head."""
    if len(input_shape) != 3:
        raise HpsearchError(f"model 'cnn' needs image data (C, H, W), but got input_shape={input_shape}")
    filters = list(cfg.get("filters") or [16, 32])
    for i in range(3):  # filters1..3 let a spec search each block's width on its own
        if cfg.get(f"filters{i + 1}") is not None:
            while len(filters) <= i:
                filters.append(filters[-1])
            filters[i] = int(cfg[f"filters{i + 1}"])
    c, h, w = input_shape
    k = int(cfg.get("kernel_size", 3))
    act = cfg.get("activation", "relu")
    drop = float(cfg.get("dropout", 0) or 0)
    blocks: list[nn.Module] = []
    for f in filters:
        blocks.append(nn.Conv2d(c, int(f), k, padding=k // 2))
        if cfg.get("batch_norm"):
            blocks.append(nn.BatchNorm2d(int(f)))
        blocks.append(activation(act))
        if min(h, w) >= 2:
            blocks.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        if drop > 0:
            blocks.append(nn.Dropout(drop))
        c = int(f)
    head_cfg = {**cfg, "batch_norm": False}
    model = nn.Sequential(
        *blocks, nn.Flatten(), mlp_layers(c * h * w, [int(x) for x in cfg.get("fc_sizes") or []], n_classes, head_cfg)
    )
    init_weights(model, cfg.get("init", "default"), act)
    return model


def build_model(cfg: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    builder = MODELS.get(cfg["model"])
    model = builder(cfg, tuple(input_shape), int(n_classes))
    if not isinstance(model, nn.Module):
        raise HpsearchError(f"model {cfg['model']!r} must return a torch.nn.Module, but got {type(model).__name__}")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


