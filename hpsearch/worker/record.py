"""Bookkeeping a worker records beside a trial's result, without letting it hide the result.

A failed write of a trial's reason or of the study's class counts is a warning: the trial's own
outcome (told, handed back or dropped) is what must reach the storage.
"""

from __future__ import annotations

import importlib.metadata
import logging
from functools import cache
from typing import Any

import optuna

from hpsearch import schema
from hpsearch.storage.backend import mask
from hpsearch.worker.context import TrialContext

log = logging.getLogger("hpsearch.worker")

def safe(fn: Any, *args: Any) -> bool:
    """Call fn(*args); False (and a warning) when it failed."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - bookkeeping must not hide the trial's real outcome
        log.warning("could not record %s: %s", args[:1], mask(str(exc)))
        return False
    return True


def how_computed(ctx: TrialContext) -> dict[str, Any]:
    """The trial's provenance: device, threads, fused group size, torch and hpsearch releases."""
    return {schema.DEVICE: str(ctx.device), schema.THREADS: ctx.threads, schema.FUSED: ctx.fused,
            schema.TORCH_VERSION: _version("torch"), schema.HPSEARCH_VERSION: _version("hpsearch")}


@cache
def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)  # without importing it (a user objective may not use torch)
    except importlib.metadata.PackageNotFoundError:
        return None


def record_class_counts(study: optuna.Study, data: Any, ctx: TrialContext) -> None:
    """The dataset's class histograms on the study (the report's baselines), by the first trial that loads it."""
    if ctx.class_counts_stored:
        return
    stored = schema.CLASS_COUNTS_ATTR in study.user_attrs
    if not stored:
        stored = safe(study.set_user_attr, schema.CLASS_COUNTS_ATTR,
                      {**data.class_counts(), "classes": data.class_names})
    ctx.class_counts_stored = stored
