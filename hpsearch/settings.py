"""The training settings the built-in trainer understands: their defaults and accepted values.

The one place either is written: spec validation checks values against ACCEPTS and CHOICES, a
trial's configuration starts from defaults(), and the model, optimizer and schedule builders read
a setting their configuration lacks through setting() (a user objective may pass a partial one).
Torch-free on purpose: spec validation and plugin-objective workers import this without torch.
Any of these keys may be fixed under `train:` or searched under `space:` in a spec.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

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


def default(key: str) -> Any:
    """One setting's default (a copy: some are lists, and a builder may change what it gets)."""
    return copy.deepcopy(TRAIN_KEYS[key][0])


def setting(cfg: Mapping[str, Any], key: str) -> Any:
    """cfg's value of a training setting, or its default when cfg does not have it."""
    return cfg[key] if key in cfg else default(key)


# ---------------------------------------------------------------- which settings a trial uses
#
# Every trial's resolved configuration holds all of TRAIN_KEYS (defaults filled in), but an Adam
# run never reads `momentum` and a dense model never reads `filters`. W&B gets only the settings
# the trial used, or its parallel-coordinates and importance panels show constant or meaningless
# axes. What is used is declared in one place: the training loop's own keys here, and each
# registered model, optimizer and schedule with `@reads(...)` beside its builder
# (tests/test_models.py and tests/training/test_optim.py check that a builder reads exactly what it
# declares). hpsearch.training.used puts the two together (it imports the builders: torch).

# Read by the training loop (hpsearch.training.trainer) whatever the model and optimizer; `sweep` is a
# label the reports (and W&B's grouping) use.
TRAINER_READS = frozenset({"model", "optimizer", "loss", "schedule", "epochs", "batch_size", "augment",
                           "grad_clip", "patience", "sweep"})
READS_ATTR = "hpsearch_reads"

F = TypeVar("F", bound=Callable[..., Any])


def reads(*keys: str) -> Callable[[F], F]:
    """Declare the training settings a model/optimizer/schedule builder reads.

    A user builder (`package.module:function`) may use it too; one that declares nothing keeps
    every setting in its trial's W&B config.
    """
    unknown = sorted(set(keys) - set(TRAIN_KEYS))
    if unknown:
        raise ValueError(f"reads() must name training settings (hpsearch.settings.TRAIN_KEYS), but got {unknown}")

    def deco(fn: F) -> F:
        setattr(fn, READS_ATTR, frozenset(keys))
        return fn

    return deco


def declared_reads(builder: Callable[..., Any]) -> frozenset[str] | None:
    """What a builder declared with @reads, or None when it did not say."""
    value = getattr(builder, READS_ATTR, None)
    return frozenset(value) if value is not None else None


# ---------------------------------------------------------------- accepted values
#
# The one place that says which numbers a training setting can take. Spec validation checks
# `train:` values, `space:` choices and both ends of `space:` ranges against it, so a value the
# trainer (or torch) would refuse on every trial fails at create-study, not on a GPU node.


@dataclass(frozen=True)
class Accepts:
    """A numeric setting's accepted values: an interval of ints or numbers, or a list of them."""

    integer: bool
    low: float
    high: float = math.inf
    low_open: bool = False  # low itself excluded (lr > 0)
    high_open: bool = True  # high itself excluded (dropout < 1)
    many: bool = False  # a list of such values (widths, filters, betas)
    length: int | None = None  # exact list length (betas)
    min_length: int = 0  # (filters: at least one conv block)
    nullable: bool = False  # None means "not set" (widths, filters1..3)

    def describe(self) -> str:
        if self.many:
            if self.length == 2:
                return f"two numbers{self._bounds()}"
            return "a list of positive integers" if self.integer and self.low == 1 else f"a list of numbers{self._bounds()}"
        return ("an integer" if self.integer else "a number") + self._bounds()

    def _bounds(self) -> str:
        if self.high == math.inf:
            return f" {'>' if self.low_open else '>='} {_num_text(self.low)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f" in {left}{_num_text(self.low)}, {_num_text(self.high)}{right}"

    def accepts_one(self, value: Any) -> bool:
        """One number: a scalar setting, a list's item, a range's end or a choice."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.integer and not (float(value).is_integer() and (not self.many or isinstance(value, int))):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def accepts(self, value: Any) -> bool:
        """A whole value as it appears under train: or as one choice under space:."""
        if value is None:
            return self.nullable
        if not self.many:
            return self.accepts_one(value)
        if not isinstance(value, list) or len(value) < self.min_length:
            return False
        return (self.length is None or len(value) == self.length) and all(self.accepts_one(v) for v in value)

    def problem(self, key: str, value: Any) -> str | None:
        """None, or the message for a value the trainer cannot take."""
        if self.accepts(value):
            return None
        hint = ""
        if isinstance(value, str) and "e" in value.lower() and "." not in value:
            # PyYAML follows YAML 1.1: 1e-3 is a string, 1.0e-3 a float.
            hint = f" (YAML reads {value} as text; write it with a dot, e.g. 1.0e-3)"
        return f"must be {self.describe()}, but got {key}={value!r}"[:300] + hint


def _num_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_POSITIVE_INT = Accepts(integer=True, low=1)
_NON_NEGATIVE_INT = Accepts(integer=True, low=0)
_POSITIVE = Accepts(integer=False, low=0, low_open=True)
_NON_NEGATIVE = Accepts(integer=False, low=0)
_FRACTION = Accepts(integer=False, low=0, high=1)  # [0, 1)
_WIDTH = Accepts(integer=True, low=1, nullable=True)

# Names a setting accepts where no registry holds them (models, optimizers, losses, schedules,
# activations and datasets are registries: hpsearch.spec.catalog checks those).
CHOICES: dict[str, tuple[str, ...]] = {
    "init": ("default", "random", "xavier", "kaiming"),
    "mode": ("scratch", "linear_probe", "finetune"),  # ResNet: from scratch, linear probe, fine-tune
    "stem": ("auto", "imagenet", "small"),
}

# key -> accepted values. Keys not listed (names, flags, paths) are checked by their registries
# and CHOICES (hpsearch.spec.catalog).
ACCEPTS: dict[str, Accepts] = {
    "epochs": _POSITIVE_INT,
    "batch_size": _POSITIVE_INT,
    "lr": _POSITIVE,
    "momentum": _FRACTION,  # >= 1 diverges
    "weight_decay": _NON_NEGATIVE,
    "betas": Accepts(integer=False, low=0, high=1, many=True, length=2),
    "eps": _POSITIVE,
    "alpha": Accepts(integer=False, low=0, high=1, high_open=False),  # RMSprop: > 1 takes a negative root
    "step_size": _POSITIVE_INT,
    "gamma": _POSITIVE,
    "grad_clip": _NON_NEGATIVE,
    "patience": _NON_NEGATIVE_INT,
    "dropout": _FRACTION,  # 1 drops every unit
    "hidden_layers": _NON_NEGATIVE_INT,  # 0: a linear model, a fair baseline
    "hidden_size": _POSITIVE_INT,
    "widths": Accepts(integer=True, low=1, many=True, nullable=True),
    "filters": Accepts(integer=True, low=1, many=True, min_length=1),
    "filters1": _WIDTH,
    "filters2": _WIDTH,
    "filters3": _WIDTH,
    "fc_sizes": Accepts(integer=True, low=1, many=True, nullable=True),
    "kernel_size": _POSITIVE_INT,
    "input_size": _NON_NEGATIVE_INT,
}
