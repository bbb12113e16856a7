"""K models of one architecture as one wider model: stacked parameters, batched operators.

Each member is first built alone (build_model right after seeding with its own seed), so its
initial weights are those of the trial trained alone. Then every parameter position is stacked
into one leaf tensor of shape (K, *shape), and each member's nn.Parameter is re-pointed at its
slice (`p.data = stacked[k]`). That one move gives the rest for free:

- the member's nn.Module always holds the current fused weights, with no copy: evaluate(),
  state_dict(), checkpoints and the W&B tracker read it as they read a trial trained alone;
- the member's own torch optimizer (any registry optimizer, with its own lr, momentum, betas,
  weight decay, schedule) steps its slice in place with exactly the single-trial arithmetic, and
  its state_dict is the single-trial format, so a retry resumes fused or alone.

Linear layers run as one baddbmm over the stack (on CPU bitwise equal, slice by slice, to
F.linear), with a written-out backward. Convolutions run as one grouped convolution on GPUs, and
member by member on CPU, where oneDNN's grouped kernels measured slower than K separate ones (2-25x at K >= 8 for the seed
grid's CNN, bench/fusion.py) and the per-member call is bitwise the one alone. Dropout draws
each member's mask with the member's own generator in the shape the member alone would draw it,
so masks are the ones the trial alone would use (on CPU); where kernel launches bound the step (a
GPU) all members' masks are one draw instead. Members may differ in dropout rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Leaf modules a fused model runs. Anything else (batch norm, a plugin's layer) is not fused:
# hpsearch.training.fused's key says so before anything is claimed.
ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Identity)
FUSABLE = (nn.Linear, nn.Conv2d, nn.MaxPool2d, nn.Flatten, nn.Dropout, *ELEMENTWISE)


def leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not list(m.children())]


def fusable(model: nn.Module) -> bool:
    return all(isinstance(m, FUSABLE) for m in leaves(model))


@dataclass
class _Op:
    module: nn.Module  # the first member's module: the op's settings (stride, padding, activation)
    params: list[int]  # indices into FusedModel.stacked, in module.parameters() order
    drop: list[float]  # per member: the dropout rate applied right after this op (0: none)


class FusedModel:
    """The members' models stacked. Inputs are (K, B, ...): member k's batch in row k."""

    def __init__(self, models: list[nn.Module], generators: list[torch.Generator], grouped_conv: bool = False,
                 one_draw: bool = False) -> None:
        """`grouped_conv`: one grouped convolution for all members (else member by member).
        `one_draw`: every member's dropout mask in one draw from the first member's generator (else
        each from its own generator in the shape it draws alone: the masks of the trial alone)."""
        self.grouped_conv, self.one_draw = grouped_conv, one_draw
        # --- the shared skeleton: every member's layers but dropout, which may differ ----------
        per_member = [leaves(m) for m in models]
        skeletons = [[m for m in ls if not isinstance(m, nn.Dropout)] for ls in per_member]
        first = skeletons[0]
        for sk in skeletons[1:]:
            if [_signature(m) for m in sk] != [_signature(m) for m in first]:
                raise ValueError("fused members must share one architecture")
        self.ops: list[_Op] = []
        n_params = 0
        for module in first:
            count = len(list(module.parameters(recurse=False)))
            self.ops.append(_Op(module, list(range(n_params, n_params + count)), [0.0] * len(models)))
            n_params += count
        for k, ls in enumerate(per_member):
            i = -1
            for m in ls:
                if isinstance(m, nn.Dropout):
                    self.ops[i].drop[k] = float(m.p)
                else:
                    i += 1
        # --- stack the parameters; each member's parameters become views of its slice --------
        self.member_params = [[p for m in sk for p in m.parameters(recurse=False)] for sk in skeletons]
        self.stacked = [torch.stack([ps[j].detach() for ps in self.member_params]).requires_grad_()
                        for j in range(n_params)]
        self.generators = list(generators)
        self._point_members()

    @property
    def k(self) -> int:
        return len(self.member_params)

    def _point_members(self) -> None:
        for k, ps in enumerate(self.member_params):
            for j, p in enumerate(ps):
                p.data = self.stacked[j].data[k]
                p.grad = None

    # --- forward -------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, train: bool = True) -> torch.Tensor:
        """(K, B, *input) -> (K, B, classes). `train`: apply dropout.

        Three layouts: stacked (K, B, ...) for linear layers; grouped (B, K*C, H, W) around grouped
        convolutions; a list of K (B, C, H, W) tensors around per-member convolutions, so their
        large activations are never copied into a stack (only the flattened features are).
        """
        h: Any = x
        layout = "stacked"
        k = self.k
        for op in self.ops:
            m, w = op.module, [self.stacked[j] for j in op.params]
            if isinstance(m, nn.Linear):
                h, layout = self._stacked(h, layout), "stacked"
                h = _StackedLinear.apply(h, w[0], w[1] if len(w) > 1 else None)
            elif isinstance(m, nn.Conv2d) and self.grouped_conv:
                if layout != "grouped":
                    h, layout = _group(self._stacked(h, layout)), "grouped"
                weight = w[0].reshape(-1, *w[0].shape[2:])
                bias = w[1].reshape(-1) if len(w) > 1 else None
                h = F.conv2d(h, weight, bias, m.stride, m.padding, m.dilation, m.groups * k)
            elif isinstance(m, nn.Conv2d):
                if layout != "list":
                    h, layout = list(self._stacked(h, layout).unbind(0)), "list"
                h = [F.conv2d(h[i], w[0][i], w[1][i] if len(w) > 1 else None, m.stride, m.padding, m.dilation,
                              m.groups) for i in range(k)]
            elif isinstance(m, nn.Flatten):
                h, layout = self._stacked(h, layout).flatten(2), "stacked"
            elif layout == "list":  # max pooling, activations: member by member
                h = [m(t) for t in h]
            elif isinstance(m, nn.MaxPool2d) and layout == "stacked":
                h = _per_image(h, m)
            else:  # max pooling on the grouped layout, activations (elementwise) on any
                h = m(h)
            if train and any(op.drop):
                h = self._dropout(h, op.drop, layout)
        return self._stacked(h, layout)

    def _stacked(self, h: Any, layout: str) -> torch.Tensor:
        if layout == "list":
            return torch.stack(h)
        return _ungroup(h, self.k) if layout == "grouped" else h

    def _dropout(self, h: Any, rates: list[float], layout: str) -> Any:
        """Each member's mask as F.dropout draws it alone on CPU: bernoulli_(1 - p) over the
        member's own activation shape, from the member's generator, divided by 1 - p. A member
        without dropout draws nothing (alone it has no dropout layer)."""
        k = self.k
        if layout == "list":
            return [t * _draw(torch.empty_like(t), p, gen) if p > 0 else t
                    for t, p, gen in zip(h, rates, self.generators, strict=True)]
        shape = (h.shape[0], h.shape[1] // k, *h.shape[2:]) if layout == "grouped" else tuple(h.shape[1:])
        masks = torch.empty((k, *shape), dtype=h.dtype, device=h.device)
        if self.one_draw:  # three kernels for K members, not 2K + 1; a rate of 0 keeps all: ones
            keep = torch.tensor([1 - p for p in rates], dtype=h.dtype, device=h.device).view(k, *[1] * len(shape))
            masks.bernoulli_(keep, generator=self.generators[0]).div_(keep)
        else:  # each member's mask straight into its row: a contiguous slice draws what a fresh tensor would
            for row, p, gen in zip(masks, rates, self.generators, strict=True):
                if p > 0:
                    _draw(row, p, gen)
                else:
                    row.fill_(1)
        return h * (masks.transpose(0, 1).flatten(1, 2) if layout == "grouped" else masks)

    # --- after backward ------------------------------------------------------------------

    def zero_grad(self) -> None:
        for s in self.stacked:
            s.grad = None

    def share_grads(self) -> None:
        """Hand each member its slice of the gradients, for its own optimizer (and clipping)."""
        for j, s in enumerate(self.stacked):
            grad = s.grad
            for k, ps in enumerate(self.member_params):
                ps[j].grad = None if grad is None else grad[k]

    # --- members leave -------------------------------------------------------------------

    def keep(self, indices: list[int]) -> None:
        """Only these members go on; the others' parameters get their own storage back."""
        kept = set(indices)
        for k, ps in enumerate(self.member_params):
            if k not in kept:
                for p in ps:
                    p.data = p.data.clone()
        idx = torch.tensor(indices, dtype=torch.long, device=self.stacked[0].device)
        self.stacked = [s.detach().index_select(0, idx).requires_grad_() for s in self.stacked]
        self.member_params = [self.member_params[k] for k in indices]
        self.generators = [self.generators[k] for k in indices]
        for op in self.ops:
            op.drop = [op.drop[k] for k in indices]
        self._point_members()


class _StackedLinear(torch.autograd.Function):
    """K linear layers at once: (K, B, in) x weights (K, out, in) [+ bias (K, out)] -> (K, B, out).

    The forward is baddbmm (slice by slice bitwise F.linear on CPU). The backward is written out
    because autograd's own for baddbmm against the transposed weight view computes the weight's
    gradient as (K, in, out) and copies it into the weight's layout: measured 2-3x slower for the
    seed grid's MLP on CPU than the products below, which land in the weight's layout directly.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        if bias is None:
            return torch.bmm(h, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, weight = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad
        return (torch.bmm(grad, weight) if need_h else None,
                torch.bmm(grad.transpose(1, 2), h) if need_w else None,
                grad.sum(1) if need_b and ctx.has_bias else None)


def _signature(m: nn.Module) -> tuple[object, ...]:
    return (type(m).__name__, *[tuple(p.shape) for p in m.parameters(recurse=False)], repr(m))


def _draw(out: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """A dropout mask of rate p into `out`, as F.dropout draws it on CPU: bernoulli(1 - p) / (1 - p)."""
    return out.bernoulli_(1 - p, generator=gen).div_(1 - p)


def _per_image(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A per-image op on (K, B, C, H, W) as one call over K*B images."""
    y = fn(x.reshape(-1, *x.shape[2:]))
    return y.reshape(*x.shape[:2], *y.shape[1:])


def _group(x: torch.Tensor) -> torch.Tensor:
    """(K, B, C, H, W) -> (B, K*C, H, W): member k's channels are the k-th group."""
    k, b = x.shape[:2]
    return x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])


def _ungroup(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, K*C, H, W) -> (K, B, C, H, W)."""
    b = x.shape[0]
    return x.reshape(b, k, x.shape[1] // k, *x.shape[2:]).transpose(0, 1)
