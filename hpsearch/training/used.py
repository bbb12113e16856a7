"""Which training settings a trial of the built-in trainer reads (what its W&B config shows).

The trainer's own keys (settings.TRAINER_READS) plus what its model, optimizer and schedule
builders declared with @reads. Above the builders on purpose: settings.py stays torch-free and
below them, so it imports neither; this module imports both (torch: only training workers use it).
"""

from __future__ import annotations

from typing import Any

from hpsearch.models import MODELS
from hpsearch.settings import TRAIN_KEYS, TRAINER_READS, declared_reads, setting
from hpsearch.training.optim import OPTIMIZERS, SCHEDULES


def used_keys(cfg: dict[str, Any]) -> frozenset[str]:
    """The training settings a built-in-trainer trial with this configuration reads.

    Every setting when a builder cannot be found or did not declare what it reads: dropping a
    setting that was used would hide it, keeping an unused one only adds an axis.
    """
    used = set(TRAINER_READS)
    for registry, key in ((MODELS, "model"), (OPTIMIZERS, "optimizer"), (SCHEDULES, "schedule")):
        try:
            declared = declared_reads(registry.get(setting(cfg, key)))
        except Exception:  # noqa: BLE001 - an unknown or unimportable name fails the trial, not this
            declared = None
        if declared is None:
            return frozenset(TRAIN_KEYS)
        used |= declared
    return frozenset(used)


def used_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The configuration without the training settings this trial does not read (and unset ones).

    Keys that are not training settings (seed, dataset, ...) are kept.
    """
    used = used_keys(cfg)
    return {k: v for k, v in cfg.items() if k not in TRAIN_KEYS or (k in used and v is not None)}
