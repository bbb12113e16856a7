"""A fused epoch's direct optimizer steps: bitwise what step() does, grouped or not, and step() where they
do not apply."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from hpsearch import settings
from hpsearch.training import fused_steps
from hpsearch.training.fused_steps import Steps
from hpsearch.training.optim import build_optimizer, build_schedule

DIRECT = ["sgd", "momentum", "nag", "adam", "adamw"]


def _pair(optimizer: str, **over: Any) -> list[tuple[nn.Module, torch.optim.Optimizer, Any]]:
    cfg = {**settings.defaults(), "lr": 0.05, "optimizer": optimizer, "weight_decay": 0.01, "schedule": "step",
           "step_size": 1, "gamma": 0.5, **over}
    out = []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
        opt = build_optimizer(model.parameters(), cfg)
        out.append((model, opt, build_schedule(opt, cfg)))
    return out


def _train(pair: list[tuple[nn.Module, torch.optim.Optimizer, Any]], steps: Steps, epochs: int = 3,
           per_epoch: int = 4) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        for _ in range(per_epoch):
            x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
            for i, (model, opt, _) in enumerate(pair):
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x), y).backward()
                if i == 0:
                    opt.step()
                else:
                    steps.step_all([0])
        for _, _, schedule in pair:
            schedule.step()


@pytest.mark.parametrize("optimizer", DIRECT)
def test_direct_steps_are_bitwise_step_and_see_the_schedule(optimizer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pair = _pair(optimizer)
    steps = Steps([pair[1][1]])
    calls: list[int] = []
    real = fused_steps._run
    monkeypatch.setattr(fused_steps, "_run", lambda directs: (calls.append(len(directs)), real(directs))[1])
    _train(pair, steps)
    assert steps._direct[0] is not None and calls == [1] * 11  # the direct call did the 11 steps after the first
    (a, opt_a, _), (b, opt_b, _) = pair
    assert opt_b.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        for name, value in sa[key].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb[key][name])), (key, name)


@pytest.mark.parametrize("optimizer", ["rmsprop", "nadam"])
def test_optimizers_without_a_direct_call_step_through_step(optimizer: str) -> None:
    pair = _pair(optimizer)
    steps = Steps([pair[1][1]])
    _train(pair, steps)
    assert steps._direct[0] is None
    for pa, pb in zip(pair[0][0].parameters(), pair[1][0].parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_a_step_hook_or_a_missing_gradient_goes_back_to_step() -> None:
    pair = _pair("adam")
    calls = []
    pair[1][1].register_step_post_hook(lambda *a: calls.append(1))
    steps = Steps([pair[1][1]])
    _train(pair, steps, epochs=1)
    assert steps._direct[0] is None and len(calls) == 4  # every step ran the hook

    pair = _pair("momentum")
    steps = Steps([pair[0][1]])
    model, opt, _ = pair[0]
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    steps.step_all([0])
    assert steps._direct[0] is not None
    model[2].bias.grad = None  # step() skips a parameter without a gradient; so must the step
    before = model[2].bias.detach().clone()
    steps.step_all([0])
    assert steps._direct[0] is None and torch.equal(model[2].bias, before)


def test_members_with_equal_settings_step_in_one_call_each_as_its_own_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four Adam members, two sharing every setting, one with another lr, one with another beta:
    stepped together (grouped calls) each ends bitwise where its own step() takes it alone."""
    overs = [{}, {}, {"lr": 0.01}, {"betas": [0.8, 0.99]}]
    alone = [_pair("adam", **o)[0] for o in overs]
    together = [_pair("adam", **o)[0] for o in overs]
    steps = Steps([opt for _, opt, _ in together])
    calls: list[int] = []
    real = fused_steps._run
    monkeypatch.setattr(fused_steps, "_run", lambda directs: (calls.append(len(directs)), real(directs))[1])
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        for (model, opt, _), (model2, opt2, _) in zip(alone, together, strict=True):
            for m, o in ((model, opt), (model2, opt2)):
                o.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        steps.step_all()
    assert calls == [2, 1, 1] * 4  # after the first step: the equal pair in one call, the others alone
    for (a, _, _), (b, _, _) in zip(alone, together, strict=True):
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(pa, pb)
