"""Model registry: `@MODELS.register(name)` builders taking the resolved config and data shape.

A builder gets (cfg, input_shape, n_classes) and returns an nn.Module; `input_shape` is (F,) for
tabular data and (C, H, W) for images, so one model family serves every compatible dataset.
Built in: dense (MLP), cnn (conv blocks + FC head), tabular (MLP for feature vectors) and
resnet18 (torchvision's, from scratch / linear probe / fine-tune from a local weights file).
A user model is reachable as `package.module:function` with the same signature. `@reads(...)`
names the training settings a builder reads (only those reach the trial's W&B config).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpsearch.errors import HpsearchError
from hpsearch.registry import Registry, check_signature
from hpsearch.settings import CHOICES, default, reads, setting

MODELS: Registry[Any] = Registry("model")
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "identity": nn.Identity,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}
INITS = CHOICES["init"]


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        from hpsearch.registry import unknown_name_message

        raise HpsearchError(unknown_name_message("activation", name, ACTIVATIONS))
    return ACTIVATIONS[name]()


def init_weights(model: nn.Module, scheme: str, act: str) -> None:
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
        layers.append(activation(setting(cfg, "activation")))
        if float(setting(cfg, "dropout") or 0) > 0:
            layers.append(nn.Dropout(float(cfg["dropout"])))
        n_in = w
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


@MODELS.register("dense")
@reads("hidden_layers", "hidden_size", "widths", "activation", "init", "batch_norm", "dropout")
def dense(cfg: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """MLP over flattened input: depth/width or per-layer widths, activation, init, BN, dropout."""
    n_in = math.prod(input_shape)
    model = nn.Sequential(nn.Flatten(), mlp_layers(n_in, mlp_widths(cfg), n_classes, cfg))
    init_weights(model, setting(cfg, "init"), setting(cfg, "activation"))
    return model


@MODELS.register("cnn")
@reads("filters", "filters1", "filters2", "filters3", "kernel_size", "fc_sizes", "activation", "init",
       "batch_norm", "dropout")
def cnn(cfg: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Conv blocks (conv, BN?, act, 2x2 max pool, dropout) then a fully connected head."""
    if len(input_shape) != 3:
        raise HpsearchError(f"model 'cnn' needs image data (C, H, W), but got input_shape={input_shape}")
    filters = list(cfg.get("filters") or default("filters"))
    for i in range(3):  # filters1..3 let a spec search each block's width on its own
        if cfg.get(f"filters{i + 1}") is not None:
            while len(filters) <= i:
                filters.append(filters[-1])
            filters[i] = int(cfg[f"filters{i + 1}"])
    c, h, w = input_shape
    k = int(setting(cfg, "kernel_size"))
    act = setting(cfg, "activation")
    drop = float(setting(cfg, "dropout") or 0)
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
        # fc_sizes null (or []) is a linear head on the conv features, not the default
        *blocks, nn.Flatten(), mlp_layers(c * h * w, [int(x) for x in cfg.get("fc_sizes") or []], n_classes, head_cfg)
    )
    init_weights(model, setting(cfg, "init"), act)
    return model


@MODELS.register("tabular")
@reads("hidden_layers", "hidden_size", "widths", "activation", "init", "batch_norm", "dropout")
def tabular(cfg: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The MLP for feature vectors (CSV/NPZ tables): the dense model, refusing image input."""
    if len(input_shape) != 1:
        raise HpsearchError(f"model 'tabular' needs feature vectors (F,), but got input_shape={input_shape}; "
                            "use dense or cnn for images")
    model = mlp_layers(input_shape[0], mlp_widths(cfg), n_classes, cfg)
    init_weights(model, setting(cfg, "init"), setting(cfg, "activation"))
    return model


def build_model(cfg: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    builder = MODELS.get(cfg["model"])
    check_signature(builder, f"model {cfg['model']!r}", "cfg, input_shape, n_classes", cfg, input_shape, n_classes)
    model = builder(cfg, tuple(input_shape), int(n_classes))
    if not isinstance(model, nn.Module):
        raise HpsearchError(f"model {cfg['model']!r} must return a torch.nn.Module, but got {type(model).__name__}")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- ResNet-18
#
# torchvision's ResNet-18 trained from scratch, linear probing or fine-tuning from a weights file.
# Nothing is downloaded: `weights` is a local file holding a state_dict (torchvision's
# resnet18-f37072fd.pth, or one the user saved). The classifier is always replaced for the
# dataset's classes. Two stems: `imagenet` (7x7 stride 2 + max pool, the one the weights were
# trained with) and `small` (3x3 stride 1, no pool: the CIFAR-style stem for images up to 64 px);
# `auto` picks by image size. `input_size` upsamples images first, which is how ImageNet weights
# are usually transferred to 32x32 data (and then auto keeps the pretrained stem).

MODES = CHOICES["mode"]
STEMS = CHOICES["stem"]
SMALL_IMAGE = 64


class ResNetClassifier(nn.Module):
    """A torchvision ResNet plus optional input resizing; a frozen backbone stays in eval mode."""

    def __init__(self, net: nn.Module, input_size: int, frozen: bool) -> None:
        super().__init__()
        self.net = net
        self.input_size = input_size
        self.frozen = frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size and x.shape[-1] != self.input_size:
            x = nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                          align_corners=False)
        return self.net(x)

    def train(self, mode: bool = True) -> ResNetClassifier:
        super().train(mode)
        if self.frozen:
            # Linear probing must not move the backbone: its batch-norm statistics are weights too.
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                        p.requires_grad for p in m.parameters()):
                    m.eval()
        return self


def load_weights(path_text: object) -> dict[str, torch.Tensor]:
    """A state_dict from a local file (plain, or under 'state_dict'/'model', DDP 'module.' prefixes)."""
    if not isinstance(path_text, str) or not path_text:
        raise HpsearchError(f"train.weights must be the path of a local weights file, but got weights={path_text!r}")
    path = Path(os.path.expandvars(path_text)).expanduser()
    if not path.is_file():
        raise HpsearchError(f"train.weights must be an existing file on this worker, but got weights={str(path)!r} "
                            "(no download is attempted: copy resnet18-f37072fd.pth or your own state_dict there)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a pickle of something else, a truncated file ...
        raise HpsearchError(f"train.weights must be a torch state_dict file, but reading {path} failed: {exc}") from None
    for key in ("state_dict", "model"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    if not isinstance(blob, dict):
        raise HpsearchError(f"train.weights must hold a state_dict, but got {type(blob).__name__} in {path}")
    return {k.removeprefix("module."): v for k, v in blob.items()}


def _adapt_conv1(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """RGB stem weights for `channels` inputs: summed for grey images (timm's adapt_input_conv)."""
    if weight.shape[1] == channels:
        return weight
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = -(-channels // weight.shape[1])
    return weight.repeat(1, repeat, 1, 1)[:, :channels] * (weight.shape[1] / channels)


@MODELS.register("resnet18")
@reads("mode", "weights", "stem", "input_size")
def resnet18(cfg: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    from torchvision.models import resnet18 as tv_resnet18

    if len(input_shape) != 3:
        raise HpsearchError(f"model 'resnet18' needs image data (C, H, W), but got input_shape={input_shape}")
    mode = setting(cfg, "mode")
    if mode not in MODES:
        raise HpsearchError(f"train.mode must be one of {', '.join(MODES)}, but got mode={mode!r}")
    stem = setting(cfg, "stem")
    if stem not in STEMS:
        raise HpsearchError(f"train.stem must be one of {', '.join(STEMS)}, but got stem={stem!r}")
    channels, height, width = input_shape
    input_size = int(setting(cfg, "input_size") or 0)
    if stem == "auto":
        stem = "small" if max(input_size or height, input_size or width) <= SMALL_IMAGE else "imagenet"

    net = tv_resnet18(weights=None)
    # --- pretrained weights (never for scratch: that is the baseline they are compared with) ----
    if mode != "scratch":
        if not cfg.get("weights"):
            raise HpsearchError(f"model 'resnet18' in mode {mode!r} must have train.weights (a local state_dict "
                                "file), but got weights=None")
        state = load_weights(cfg["weights"])
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # a new head below
        if "conv1.weight" in state:
            state["conv1.weight"] = _adapt_conv1(state["conv1.weight"], channels)
        net.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise HpsearchError(f"train.weights must be a ResNet-18 state_dict, but got missing={missing[:3]}, "
                                f"unexpected={unexpected[:3]} in {cfg['weights']}")
    # --- adapt to the data: stem and channels, classes -------------------------------------
    if stem == "small":
        net.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)  # new (and trainable in every mode)
        net.maxpool = nn.Identity()
    elif net.conv1.in_channels != channels:
        net.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    net.fc = nn.Linear(net.fc.in_features, n_classes)
    frozen = mode == "linear_probe"
    if frozen:
        for name, p in net.named_parameters():
            p.requires_grad = name.startswith("fc.") or (stem == "small" and name.startswith("conv1."))
    return ResNetClassifier(net, input_size, frozen)
