"""For the "reads exactly what it declares" tests of models, optimizers and schedules.

A builder reads a setting when changing that setting (to the other valid value below) changes
what the builder makes, or makes it fail; it does not read it when nothing changes. This checks
behaviour, not which dict keys happen to be touched (a builder may copy its configuration).
"""

from __future__ import annotations

from typing import Any

from hpsearch import settings as config

MISSING_WEIGHTS = "/nonexistent/hpsearch-test-weights.pth"

# setting -> a valid value other than its default
ALTERNATES: dict[str, Any] = {
    "model": "cnn", "epochs": 3, "batch_size": 7, "optimizer": "sgd", "lr": 0.5, "momentum": 0.5,
    "weight_decay": 0.1, "betas": [0.5, 0.6], "eps": 1e-3, "alpha": 0.5, "loss": "mean_squared_error",
    "schedule": "step", "step_size": 3, "gamma": 0.5, "grad_clip": 1.0, "patience": 2, "dropout": 0.3,
    "hidden_layers": 3, "hidden_size": 17, "widths": [5, 7], "activation": "tanh", "init": "xavier",
    "batch_norm": True, "filters": [8], "filters1": 12, "filters2": 9, "filters3": 7, "fc_sizes": [11],
    "kernel_size": 5, "augment": True, "mode": "linear_probe", "weights": MISSING_WEIGHTS, "stem": "imagenet",
    "input_size": 40, "sweep": "a-sweep",
}


def read_settings(outcome: Any, selector: str, extra_bases: list[tuple[dict[str, Any], list[str]]] = ()) -> set[str]:
    """Settings whose change alters `outcome(cfg)`: every setting against the defaults, and the
    listed settings against each extra base (a setting read only in some mode needs that mode)."""
    found = set()
    for base, keys in [({}, [k for k in ALTERNATES if k != selector]), *extra_bases]:
        cfg = {**config.defaults(), **base}
        before = outcome(cfg)
        found |= {k for k in keys if not same(outcome({**cfg, k: ALTERNATES[k]}), before)}
    return found


def same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool(
            torch.equal(a, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
