"""What a trained model costs to run: FLOPs per example and inference latency per batch.

Measured once, after the test, with the weights the trial keeps, and only when the spec asks
for them (as an objective or in a constraint): the latency takes a fraction of a second.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

LATENCY_RUNS = 20  # timed forward passes at most (the median is kept)
LATENCY_BUDGET_S = 0.5  # ... or fewer once this much time is spent, but never fewer than MIN_RUNS
MIN_RUNS = 5
WARMUP_RUNS = 2  # allocator, kernel selection and caches settle before timing


def flops_per_example(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one example's forward pass, as torch.utils.flop_counter counts them: matrix products
    and convolutions, two per multiply-add (element-wise work such as activations is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x[:1])
    return int(counter.get_total_flops())


def latency_ms(model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: Any) -> float:
    """Median wall time of one forward pass of a batch of `batch_size` examples on `device`, in ms.

    The batch is drawn from `x` (repeated when it holds fewer examples); a CUDA device is
    synchronized around every pass, so the time is the kernels', not their launch's."""
    model.eval()
    batch = x[torch.arange(batch_size, device=x.device) % len(x)].to(device)
    cuda = torch.device(device).type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    times: list[float] = []
    with torch.no_grad():
        for _ in range(WARMUP_RUNS):
            model(batch)
        sync()
        deadline = time.perf_counter() + LATENCY_BUDGET_S
        while len(times) < LATENCY_RUNS and (len(times) < MIN_RUNS or time.perf_counter() < deadline):
            t0 = time.perf_counter()
            model(batch)
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0
