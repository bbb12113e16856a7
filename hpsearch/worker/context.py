"""What a worker lends each trial it runs: its device, checkpoint store, share of the machine and stop state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpsearch.worker.stopping import Stopping


@dataclass
class TrialContext:
    device: Any  # the torch device ("cpu" for a user objective, which imports torch only if it wants to)
    artifacts: Any  # the study's checkpoint store (the study records where, so a retry elsewhere finds them)
    stop: Stopping  # the worker's: asked to stop, the trials it holds, the running trial's time limit
    threads: int | None = None  # torch threads now (re-read before each claim)
    fused: int = 1  # trials in the group now running (1: alone)
    claim_s: float = 0.0  # seconds the claim of the running trial took (its share of the service's overhead)
    # The study's class counts are known to be stored (read once at the worker's start, or written
    # by this worker), so later trials neither read the study's attributes nor write them again.
    class_counts_stored: bool = False
