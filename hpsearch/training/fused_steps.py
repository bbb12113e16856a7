"""The members' optimizer steps of a fused epoch: grouped, without torch's per-call machinery.

A fused step of K members steps K optimizers. torch.optim.Optimizer.step() spends about 0.1 ms
of Python per call around the kernel (the step wrapper's hooks and profiler record, _init_group's
walk over every parameter's state): about as much as the fused Adam kernel itself for the seed
grid's MLP on CPU (bench/fusion.py, part 1c).

For the optimizers hpsearch builds itself (torch's Adam, AdamW and SGD with fused kernels, one
parameter group, no step hooks, no AMP scaler attached), a member's first step in a Steps (a
fused epoch makes one) goes through step(), which creates its state. Later steps call the very functional torch's step() calls
(torch.optim.adam.adam, torch.optim.sgd.sgd) with the arguments step() passes, read from the
param group on every step, so a schedule's learning rate is seen. Members whose settings are
equal that step (a grid point's seeds) go in one call over all their tensors: the kernels are
elementwise and each tensor keeps its own state and step count, so every member gets the same
arithmetic, bitwise, as its own step() (tests/training/test_fused_steps.py); on a GPU that is one
multi-tensor kernel launch for the group instead of one per member. Any other optimizer (a
plugin's, RMSprop, NAdam, a parameter without a gradient that step) steps through step().
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


class Steps:
    """Steps a fixed list of optimizers (a fused epoch makes one): step_all() every one, or some."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)
        self._direct: list[_Direct | None] = [None] * len(self.optimizers)
        self._started = [False] * len(self.optimizers)

    def step_all(self, indices: list[int] | None = None) -> None:
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i in range(len(self.optimizers)) if indices is None else indices:
            direct = self._direct[i]
            if direct is None:
                self._through_step(i)
            else:
                groups.setdefault(direct.key(), []).append(i)
        for members in groups.values():
            directs = [self._direct[i] for i in members]
            if any(g is None for d in directs for g in d.grads()):  # type: ignore[union-attr]
                for i in members:  # step() skips a parameter without a gradient: let it
                    self._direct[i] = None
                    self._through_step(i)
                continue
            _run(directs)  # type: ignore[arg-type]

    def _through_step(self, i: int) -> None:
        opt = self.optimizers[i]
        opt.step()
        if not self._started[i]:
            self._started[i] = True
            self._direct[i] = direct_step(opt)


@dataclass
class _Direct:
    """One optimizer's tensors and param group, for the functional call step() would make."""

    kind: str  # "adam" (Adam, AdamW) or "sgd"
    group: dict[str, Any]
    params: list[torch.Tensor]
    state: dict[str, list[Any]] = field(default_factory=dict)

    def grads(self) -> list[torch.Tensor | None]:
        return [p.grad for p in self.params]

    def key(self) -> tuple[Any, ...]:
        """What one call shares: the kind and every setting of the group, as this step reads them."""
        g = self.group
        if self.kind == "adam":
            return ("adam", _num(g["lr"]), tuple(_num(b) for b in g["betas"]), g["weight_decay"], g["eps"],
                    g["amsgrad"], g["maximize"], g["foreach"], g["decoupled_weight_decay"])
        return ("sgd", _num(g["lr"]), g["weight_decay"], g["momentum"], g["dampening"], g["nesterov"],
                g["maximize"], g["foreach"])


def _num(x: Any) -> Any:
    return float(x) if isinstance(x, torch.Tensor) and x.numel() == 1 else x


def direct_step(opt: torch.optim.Optimizer) -> _Direct | None:
    """What opt.step() does next as a direct call, or None where step() must be called."""
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
        names = ["exp_avg", "exp_avg_sq", "step"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])
        if not all(n in s for s in state for n in names):
            return None
        return _Direct("adam", group, params, {n: [s[n] for s in state] for n in names})
    if type(opt) is torch.optim.SGD:
        buffers = [s.get("momentum_buffer") for s in state]
        if group["momentum"] != 0 and any(b is None for b in buffers):
            return None
        return _Direct("sgd", group, params, {"momentum_buffer": buffers})
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


def _run(directs: list[_Direct]) -> None:
    """One functional call for optimizers of one key: their tensors concatenated, in order."""
    params = [p for d in directs for p in d.params]
    grads = [p.grad for p in params]
    g = directs[0].group

    def cat(name: str) -> list[Any]:
        return [t for d in directs for t in d.state.get(name, [])]

    if directs[0].kind == "adam":
        from torch.optim.adam import adam

        beta1, beta2 = g["betas"]
        adam(params, grads, cat("exp_avg"), cat("exp_avg_sq"), cat("max_exp_avg_sq"), cat("step"),
             amsgrad=g["amsgrad"], has_complex=False, beta1=beta1, beta2=beta2, lr=g["lr"],
             weight_decay=g["weight_decay"], eps=g["eps"], maximize=g["maximize"], foreach=g["foreach"],
             capturable=False, differentiable=False, fused=True, grad_scale=None, found_inf=None,
             decoupled_weight_decay=g["decoupled_weight_decay"])
        return
    from torch.optim.sgd import sgd

    sgd(params, grads, cat("momentum_buffer"), weight_decay=g["weight_decay"], momentum=g["momentum"], lr=g["lr"],
        dampening=g["dampening"], nesterov=g["nesterov"], maximize=g["maximize"], has_sparse_grad=False,
        foreach=g["foreach"], fused=True, grad_scale=None, found_inf=None)
