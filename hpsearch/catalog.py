"""Name checks for spec validation across the torch-side registries (imports torch)."""

from __future__ import annotations

from collections.abc import Callable

from hpsearch.registry import unknown_name_message


def _fixed(kind: str, names: tuple[str, ...] | list[str]) -> Callable[[object], str | None]:
    def check(name: object) -> str | None:
        return None if name in names else unknown_name_message(kind, name, names)

    return check


def name_checks() -> dict[str, Callable[[object], str | None]]:
    from hpsearch import data, models, optim

    return {
        "model": models.MODELS.check,
        "optimizer": optim.OPTIMIZERS.check,
        "loss": optim.LOSSES.check,
        "schedule": optim.SCHEDULES.check,
        "activation": _fixed("activation", list(models.ACTIVATIONS)),
        "init": _fixed("init", models.INITS),
        "mode": _fixed("mode", ("scratch", "linear_probe", "finetune")),
        "dataset": data.DATASETS.check,
    }
