"""Optimizers, losses and schedules: every registered one works; knobs reach torch; plugins."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import pytest
import torch
from settings_alternates import read_settings
from torch import nn

from conftest import ROOT
from hpsearch import settings as config
from hpsearch.errors import HpsearchError
from hpsearch.training.optim import (
    LOSSES,
    OPTIMIZERS,
    SCHEDULES,
    build_loss,
    build_optimizer,
    build_schedule,
)

sys.path.insert(0, str(ROOT / "tests" / "plugins"))


def cfg(**over: Any) -> dict[str, Any]:
    return {**config.defaults(), "lr": 0.05, **over}


def _problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Linear(4, 3), torch.randn(32, 4), torch.arange(32) % 3


@pytest.mark.parametrize("name", [*OPTIMIZERS.names(), "hps_catalogue_plugins:half_momentum_sgd"])
def test_every_optimizer_takes_steps_that_lower_the_loss(name: str) -> None:
    model, x, y = _problem()
    opt = build_optimizer(model.parameters(), cfg(optimizer=name))
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(("name", "expected"), [
    ("sgd", {"momentum": 0, "nesterov": False, "weight_decay": 0.01}),
    ("momentum", {"momentum": 0.8, "nesterov": False}),
    ("nag", {"momentum": 0.8, "nesterov": True}),
    ("rmsprop", {"alpha": 0.9, "eps": 1e-6, "momentum": 0}),
    ("adam", {"betas": (0.8, 0.95), "eps": 1e-6}),
    ("nadam", {"betas": (0.8, 0.95), "eps": 1e-6}),
    ("adamw", {"betas": (0.8, 0.95), "weight_decay": 0.01}),
])
def test_optimizer_knobs_reach_torch(name: str, expected: dict[str, Any]) -> None:
    opt = build_optimizer(nn.Linear(2, 2).parameters(), cfg(optimizer=name, momentum=0.8, alpha=0.9, eps=1e-6,
                                                             betas=[0.8, 0.95], weight_decay=0.01))
    group = opt.param_groups[0]
    assert group["lr"] == 0.05
    for key, value in expected.items():
        assert group[key] == pytest.approx(value), key


def test_optimizer_errors() -> None:
    with pytest.raises(HpsearchError, match=r"optimizer 'adma' is not registered; known: adam, adamw, momentum, "
                                            r"nadam, nag, rmsprop, sgd \(did you mean 'adam'\?\)"):
        build_optimizer(nn.Linear(2, 2).parameters(), cfg(optimizer="adma"))
    with pytest.raises(HpsearchError, match=r"optimizer 'hps_catalogue_plugins:tiny_model' must take \(params, cfg\), "
                                            r"but got tiny_model\(cfg, input_shape, n_classes\)"):
        build_optimizer(nn.Linear(2, 2).parameters(), cfg(optimizer="hps_catalogue_plugins:tiny_model"))
    with pytest.raises(HpsearchError, match="must return a torch.optim.Optimizer, but got list"):
        build_optimizer(nn.Linear(2, 2).parameters(), cfg(optimizer="hps_catalogue_plugins:not_an_optimizer"))
    with pytest.raises(HpsearchError, match="lr must be a number, but got lr='fast'"):
        build_optimizer(nn.Linear(2, 2).parameters(), cfg(optimizer="adam", lr="fast"))


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_finite_and_differentiable(name: str) -> None:
    logits = torch.randn(8, 5, requires_grad=True)
    loss = build_loss(name)(logits, torch.arange(8) % 5)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_mean_squared_error_compares_probabilities_with_one_hot() -> None:
    logits, target = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    probs = torch.softmax(logits, 1)
    expected = ((probs - torch.tensor([[1.0, 0.0, 0.0]])) ** 2).mean()
    assert torch.allclose(build_loss("mean_squared_error")(logits, target), expected)


def _lrs(schedule_cfg: dict[str, Any], epochs: int) -> list[float]:
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    sched = build_schedule(opt, cfg(**schedule_cfg))
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return lrs


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_runs_and_never_raises_the_lr(name: str) -> None:
    lrs = _lrs({"schedule": name, "epochs": 6, "step_size": 2, "gamma": 0.5}, 6)
    assert lrs[0] == 1.0 and all(b <= a for a, b in zip(lrs, lrs[1:], strict=False))


def test_schedules_shape() -> None:
    assert _lrs({"schedule": "none"}, 4) == [1.0] * 4
    assert _lrs({"schedule": "step", "step_size": 2, "gamma": 0.1}, 5) == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cosine = _lrs({"schedule": "cosine", "epochs": 4}, 4)
    assert cosine[2] == pytest.approx(0.5) and cosine[3] < 0.2
    with pytest.raises(HpsearchError, match="schedule 'cosin' is not registered; known: cosine, none, step"):
        _lrs({"schedule": "cosin"}, 1)


# ---------------------------------------------------------------- what each builder reads
#
# Only the settings an optimizer or schedule declares reach the trial's W&B config
# (hpsearch.training.used.used_keys): each must read exactly what it declares.


def _optimizer_outcome(name: str) -> Any:
    def outcome(c: dict[str, Any]) -> Any:
        model, x, y = _problem()
        try:
            opt = build_optimizer(model.parameters(), {**c, "optimizer": name})
        except HpsearchError as exc:
            return f"error: {exc}"
        groups = [repr(sorted((k, v) for k, v in g.items() if k != "params")) for g in opt.param_groups]
        for _ in range(2):  # what the step does with them
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return [*groups, *model.parameters()]

    return outcome


def _schedule_outcome(name: str) -> Any:
    def outcome(c: dict[str, Any]) -> Any:
        opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        sched = build_schedule(opt, {**c, "schedule": name})
        lrs = []
        for _ in range(12):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if sched is not None:
                sched.step()
        return lrs

    return outcome


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_an_optimizer_reads_exactly_the_settings_it_declares(name: str, one_thread: None) -> None:
    declared = config.declared_reads(OPTIMIZERS.get(name))
    assert declared is not None, f"optimizer {name!r} must declare what it reads with @reads(...)"
    assert read_settings(_optimizer_outcome(name), "optimizer") == declared


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_a_schedule_reads_exactly_the_settings_it_declares(name: str) -> None:
    declared = config.declared_reads(SCHEDULES.get(name))
    assert declared is not None, f"schedule {name!r} must declare what it reads with @reads(...)"
    assert read_settings(_schedule_outcome(name), "schedule") == declared


def test_a_configuration_without_a_setting_takes_its_default_from_settings() -> None:
    """A user objective may build from a partial configuration: what it lacks is settings' default."""
    partial = cfg(optimizer="rmsprop")
    del partial["alpha"]
    assert build_optimizer(nn.Linear(2, 2).parameters(), partial).param_groups[0]["alpha"] == config.default("alpha")
    adam = build_optimizer(nn.Linear(2, 2).parameters(), cfg(optimizer="adam", betas=None))
    assert adam.param_groups[0]["betas"] == tuple(config.default("betas"))
    nag = build_optimizer(nn.Linear(2, 2).parameters(), cfg(optimizer="nag", momentum=0))
    assert nag.param_groups[0]["momentum"] == config.default("momentum")
    no_schedule = cfg()
    del no_schedule["schedule"]
    assert config.default("schedule") == "none" and build_schedule(adam, no_schedule) is None


@pytest.mark.parametrize("name", ["sgd", "momentum", "nag", "adam", "adamw", "rmsprop", "nadam"])
def test_optimizers_take_torch_s_quickest_implementation_with_the_same_arithmetic(name: str) -> None:
    """Fused kernels where torch has them (SGD, Adam, AdamW), the multi-tensor loop elsewhere; after
    50 steps the weights equal those of torch's default implementation up to rounding."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(32, 20), torch.randint(0, 4, (32,))
    cfg = {"optimizer": name, "lr": 0.01, "weight_decay": 1e-4, "momentum": 0.9, "eps": 1e-8,
           "betas": [0.9, 0.999], "alpha": 0.99}
    weights = []
    for ours in (True, False):
        model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
        model.load_state_dict(base.state_dict())
        opt = build_optimizer(model.parameters(), cfg)
        if ours:
            assert opt.defaults.get("fused" if name in ("sgd", "momentum", "nag", "adam", "adamw") else "foreach")
        else:  # the same optimizer and settings, torch's default implementation
            accepted = inspect.signature(type(opt)).parameters
            opt = type(opt)(model.parameters(), **{k: v for k, v in opt.defaults.items()
                                                   if k in accepted and k not in ("fused", "foreach")})
        for _ in range(50):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-6)


def test_parameter_groups_keep_torch_s_default_implementation() -> None:
    model = nn.Linear(3, 2)
    opt = build_optimizer([{"params": list(model.parameters())}], {"optimizer": "adam", "lr": 0.01,
                                                                  "weight_decay": 0.0, "eps": 1e-8})
    assert opt.defaults.get("fused") is None and opt.defaults.get("foreach") is None
