"""The training settings the built-in trainer understands, with their defaults.

Torch-free on purpose: spec validation and plugin-objective workers import this without torch.
Any of these keys may be fixed under `train:` or searched under `space:` in a spec.
"""

from __future__ import annotations

from typing import Any

# key -> (default, one-line meaning). A spec naming any other key fails validation.
TRAIN_KEYS: dict[str, tuple[Any, str]] = {
    "model": ("dense", "model family from the model registry"),
    "epochs": (5, "training epochs"),
    "batch_size": (32, "mini-batch size"),
    "optimizer": ("adam", "optimizer from the optimizer registry"),
    "lr": (1e-3, "learning rate"),
    "momentum": (0.9, "momentum for sgd-like optimizers"),
    "weight_decay": (0.0, "L2 weight decay"),
    "betas": ([0.9, 0.999], "Adam-family betas"),
    "eps": (1e-8, "optimizer epsilon"),
    "alpha": (0.99, "RMSprop smoothing constant"),
    "loss": ("cross_entropy", "loss from the loss registry"),
    "schedule": ("none", "lr schedule: none, step, cosine"),
    "step_size": (10, "epochs between lr drops for the step schedule"),
    "gamma": (0.1, "lr factor of the step schedule"),
    "grad_clip": (0.0, "max gradient norm; 0 disables clipping"),
    "patience": (0, "early stopping patience in epochs on the metric; 0 disables it"),
    "dropout": (0.0, "dropout probability"),
    "hidden_layers": (2, "number of hidden layers of an MLP"),
    "hidden_size": (64, "width of every hidden layer of an MLP"),
    "widths": (None, "per-layer widths of an MLP (overrides hidden_layers/hidden_size)"),
    "activation": ("relu", "activation: identity, sigmoid, tanh, relu, gelu"),
    "init": ("default", "weight init: default, random, xavier, kaiming"),
    "batch_norm": (False, "batch normalisation between layers"),
    "filters": ([16, 32], "CNN filters per conv block"),
    "filters1": (None, "CNN filters of conv block 1 (searchable per block)"),
    "filters2": (None, "CNN filters of conv block 2"),
    "filters3": (None, "CNN filters of conv block 3"),
    "fc_sizes": ([64], "CNN fully connected head widths"),
    "kernel_size": (3, "CNN kernel size"),
    "augment": (False, "batch augmentation of images: true (= crop_flip), crop, flip, none/false"),
    "mode": ("scratch", "ResNet training mode: scratch, linear_probe, finetune"),
    "weights": (None, "path of a local pretrained weights file for ResNet (a state_dict)"),
    "stem": ("auto", "ResNet stem: auto, imagenet (7x7/2 + pool), small (3x3/1, for <= 64 px images)"),
    "input_size": (0, "resize images to this side before a ResNet (0: as they are)"),
    "sweep": (None, "label of a one-at-a-time sweep; the trainer ignores it, reports group by it"),
}


def defaults() -> dict[str, Any]:
    return {k: v[0] for k, v in TRAIN_KEYS.items()}
