"""A worker's options: what `hpsearch worker` (and worker.py) passes to run_worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Options:
    study: str
    storage: str | None = None
    n_trials: int | None = None
    timeout: float | None = None
    device: str = "auto"
    heartbeat: int = 30
    max_failures: int = 5
    seed: int | None = None
    stop_timeout: float = 60.0
    checkpoint_every: float = 30.0
    quiet: bool = False
    tracking: dict[str, Any] = field(default_factory=dict)
    trial_timeout: float | None = None  # seconds a trial may run (None: the spec's trial_timeout, else no limit)
    restart: bool = False  # re-exec this worker's command line to start clean (the CLI's worker; not in-process runs)
    fuse: int | None = None  # trials trained as one fused model (None: $HPSEARCH_FUSE, the spec, the default)
