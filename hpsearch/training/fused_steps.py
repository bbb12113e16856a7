"""The members' optimizer steps of a fused epoch, without torch's per-call machinery.

A fused step of K members calls K optimizers. torch.optim.Optimizer.step() spends about 0.2 ms
of Python per call around the kernel (the step wrapper's hooks and profiler record, _init_group's
walk over every parameter's state): for the seed grid's MLP that was a fifth of a fused epoch on
CPU, more than the fused Adam/SGD kernels themselves (bench/fusion.py, part 1c).

For the optimizers hpsearch builds itself (torch's Adam, AdamW and SGD, one parameter group, no
step hooks, no AMP scaler attached), a member's first step of an epoch goes through step(), which
creates its state; its later steps call the very functional torch's step() calls
(torch.optim.adam.adam, torch.optim.sgd.sgd) with the arguments step() passes, read from the
param group on every call, so a schedule's learning rate is seen: the same kernels and the same
arithmetic, bitwise. Any other optimizer (a plugin's, RMSprop, a parameter without a gradient)
steps through step().
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Step = Callable[[], None]


class Steps:
    """Steps a fixed list of optimizers, each directly once step() has made its state."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)
        self._direct: list[Step | None] = [None] * len(self.optimizers)
        self._started = [False] * len(self.optimizers)

    def step(self, i: int) -> None:
        direct = self._direct[i]
        if direct is not None:
            try:
                direct()
                return
            except _Undirect:  # a parameter without a gradient this step: step() skips it
                self._direct[i] = None
        opt = self.optimizers[i]
        opt.step()
        if not self._started[i]:
            self._started[i] = True
            self._direct[i] = direct_step(opt)


class _Undirect(Exception):
    """The direct call does not apply this step (raised before anything was changed)."""


def direct_step(opt: torch.optim.Optimizer) -> Step | None:
    """A call that does what opt.step() does next, or None where step() must be called."""
    if len(opt.param_groups) != 1 or getattr(opt, "grad_scale", None) is not None \
            or getattr(opt, "found_inf", None) is not None or _hooked(opt):
        return None
    group = opt.param_groups[0]
    if group.get("differentiable") or group.get("capturable") or not group.get("fused"):
        return None
    params = list(group["params"])
    if not params or any(p.grad is None or p.grad.is_sparse or p.is_complex() for p in params):
        return None
    state = [opt.state.get(p, {}) for p in params]
    if type(opt) in (torch.optim.Adam, torch.optim.AdamW):
        return _adam(params, group, state)
    if type(opt) is torch.optim.SGD:
        return _sgd(params, group, state)
    return None


def _hooked(opt: torch.optim.Optimizer) -> bool:
    """Step hooks of the optimizer or global ones: step() would run them, so it must be called."""
    from torch.optim import optimizer as optimizer_mod

    for hooks in (getattr(opt, "_optimizer_step_pre_hooks", None), getattr(opt, "_optimizer_step_post_hooks", None),
                  getattr(optimizer_mod, "_global_optimizer_pre_hooks", None),
                  getattr(optimizer_mod, "_global_optimizer_post_hooks", None)):
        if hooks is None or len(hooks):
            return True
    return False


def _adam(params: list[torch.Tensor], group: dict, state: list[dict]) -> Step | None:
    from torch.optim.adam import adam

    if not all("exp_avg" in s and "exp_avg_sq" in s and "step" in s for s in state):
        return None
    amsgrad = bool(group["amsgrad"])
    if amsgrad and not all("max_exp_avg_sq" in s for s in state):
        return None
    exp_avgs = [s["exp_avg"] for s in state]
    exp_avg_sqs = [s["exp_avg_sq"] for s in state]
    max_exp_avg_sqs = [s["max_exp_avg_sq"] for s in state] if amsgrad else []
    steps = [s["step"] for s in state]

    def step() -> None:
        grads = [p.grad for p in params]
        if any(g is None for g in grads):
            raise _Undirect
        beta1, beta2 = group["betas"]
        adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
             amsgrad=group["amsgrad"], has_complex=False, beta1=beta1, beta2=beta2, lr=group["lr"],
             weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
             foreach=group["foreach"], capturable=False, differentiable=False, fused=True,
             grad_scale=None, found_inf=None, decoupled_weight_decay=group["decoupled_weight_decay"])

    return step


def _sgd(params: list[torch.Tensor], group: dict, state: list[dict]) -> Step | None:
    from torch.optim.sgd import sgd

    buffers = [s.get("momentum_buffer") for s in state]
    if group["momentum"] != 0 and any(b is None for b in buffers):
        return None

    def step() -> None:
        grads = [p.grad for p in params]
        if any(g is None for g in grads):
            raise _Undirect
        sgd(params, grads, buffers, weight_decay=group["weight_decay"],
            momentum=group["momentum"], lr=group["lr"], dampening=group["dampening"], nesterov=group["nesterov"],
            maximize=group["maximize"], has_sparse_grad=False, foreach=group["foreach"], fused=True,
            grad_scale=None, found_inf=None)

    return step
