"""Models: every registered model on every compatible data shape, variants, ResNet modes, plugins."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from settings_alternates import ALTERNATES, read_settings
from torch import nn

from conftest import ROOT
from hpsearch import models
from hpsearch import settings as config
from hpsearch.errors import HpsearchError
from hpsearch.models import MODELS, build_model
from hpsearch.training.used import used_config

sys.path.insert(0, str(ROOT / "tests" / "plugins"))

# The shapes of the datasets in the catalogue: digits, MNIST/Fashion, CIFAR, a table.
SHAPES = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "cifar100": ((3, 32, 32), 100), "table": ((6,), 3)}
IMAGE_ONLY = {"cnn", "resnet18"}
TABLE_ONLY = {"tabular"}


def compatible(model: str, shape: tuple[int, ...]) -> bool:
    return not ((model in IMAGE_ONLY and len(shape) != 3) or (model in TABLE_ONLY and len(shape) != 1))


def cfg(**over: Any) -> dict[str, Any]:
    return {**config.defaults(), **over}


def forward_backward(model: nn.Module, shape: tuple[int, ...], n_classes: int, n: int = 4) -> torch.Tensor:
    torch.manual_seed(0)
    model.train()
    out = model(torch.randn(n, *shape))
    assert out.shape == (n, n_classes)
    loss = nn.functional.cross_entropy(out, torch.arange(n) % n_classes)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    return out


@pytest.mark.parametrize("shape_name", sorted(SHAPES))
@pytest.mark.parametrize("model_name", MODELS.names())
def test_every_model_trains_on_every_compatible_shape(model_name: str, shape_name: str) -> None:
    shape, n_classes = SHAPES[shape_name]
    if not compatible(model_name, shape):
        with pytest.raises(HpsearchError, match=f"model '{model_name}' needs .*but got input_shape="):
            build_model(cfg(model=model_name), shape, n_classes)
        return
    forward_backward(build_model(cfg(model=model_name), shape, n_classes), shape, n_classes)


@pytest.mark.parametrize("init", models.INITS)
@pytest.mark.parametrize("activation", sorted(models.ACTIVATIONS))
def test_dense_every_activation_and_init(activation: str, init: str) -> None:
    model = build_model(cfg(model="dense", activation=activation, init=init, hidden_layers=3, hidden_size=16,
                            batch_norm=True, dropout=0.1), (1, 28, 28), 10)
    forward_backward(model, (1, 28, 28), 10)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 3


def test_dense_per_layer_widths() -> None:
    model = build_model(cfg(model="dense", widths=[32, 16, 8]), (1, 8, 8), 10)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [32, 16, 8, 10]


def test_cnn_as_the_cifar100_spec_builds_it() -> None:
    """Three conv blocks (BN, max pool, dropout) with per-block filters and three FC layers."""
    model = build_model(cfg(model="cnn", filters=[64, 128, 256], filters1=32, filters3=96, batch_norm=True,
                            dropout=0.25, fc_sizes=[64, 32]), (3, 32, 32), 100)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [32, 128, 96]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [64, 32, 100]
    forward_backward(model, (3, 32, 32), 100)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-18 state_dict saved the way torchvision's files are (1000-way head included)."""
    from torchvision.models import resnet18

    torch.manual_seed(1)
    net = resnet18(weights=None)
    for m in net.modules():  # non-trivial running statistics, to see that probing keeps them
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(net.state_dict(), path)
    return path


def test_resnet_linear_probe_trains_only_the_head(weights_file: Path) -> None:
    state = torch.load(weights_file)
    model = build_model(cfg(model="resnet18", mode="linear_probe", weights=str(weights_file), stem="imagenet"),
                        (3, 32, 32), 10)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"net.fc.weight", "net.fc.bias"}
    assert torch.equal(model.net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    before = model.net.bn1.running_mean.clone()
    forward_backward(model, (3, 32, 32), 10)
    assert torch.equal(model.net.bn1.running_mean, before)  # the frozen backbone keeps its statistics


def test_resnet_finetune_on_grey_images_adapts_the_stem(weights_file: Path) -> None:
    state = torch.load(weights_file)
    model = build_model(cfg(model="resnet18", mode="finetune", weights=str(weights_file), stem="imagenet"),
                        (1, 28, 28), 10)
    assert all(p.requires_grad for p in model.parameters())
    assert torch.allclose(model.net.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    forward_backward(model, (1, 28, 28), 10)


def test_resnet_scratch_ignores_weights_and_resizes_input(weights_file: Path) -> None:
    state = torch.load(weights_file)
    model = build_model(cfg(model="resnet18", mode="scratch", weights=str(weights_file), input_size=48),
                        (3, 16, 16), 5)
    assert isinstance(model.net.maxpool, nn.Identity)  # 48 px: the small stem
    assert not torch.equal(model.net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    forward_backward(model, (3, 16, 16), 5, n=2)


@pytest.mark.parametrize(("over", "message"), [
    ({"mode": "finetune"}, "in mode 'finetune' must have train.weights"),
    ({"mode": "linear_probe", "weights": "/nonexistent/r18.pth"}, "must be an existing file on this worker"),
    ({"mode": "probe"}, "train.mode must be one of scratch, linear_probe, finetune, but got mode='probe'"),
])
def test_resnet_errors(over: dict[str, Any], message: str) -> None:
    with pytest.raises(HpsearchError, match=message):
        build_model(cfg(model="resnet18", **over), (3, 32, 32), 10)


def test_resnet_rejects_a_file_of_another_model(tmp_path: Path) -> None:
    torch.save(nn.Linear(3, 3).state_dict(), tmp_path / "other.pt")
    with pytest.raises(HpsearchError, match="must be a ResNet-18 state_dict, but got missing="):
        build_model(cfg(model="resnet18", mode="finetune", weights=str(tmp_path / "other.pt")), (3, 32, 32), 10)


def test_plugin_model_and_bad_plugin() -> None:
    model = build_model(cfg(model="hps_catalogue_plugins:tiny_model", hidden_size=4), (1, 8, 8), 10)
    forward_backward(model, (1, 8, 8), 10)
    with pytest.raises(HpsearchError, match="must return a torch.nn.Module, but got str"):
        build_model(cfg(model="hps_catalogue_plugins:not_a_model"), (1, 8, 8), 10)


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(HpsearchError, match=r"model 'resnt18' is not registered; known: cnn, dense, resnet18, "
                                            r"tabular \(did you mean 'resnet18'\?\)"):
        build_model(cfg(model="resnt18"), (3, 32, 32), 10)


# ---------------------------------------------------------------- what each model reads
#
# The W&B config of a trial keeps only the settings its model, optimizer and schedule declare
# (hpsearch.training.used.used_keys); a declaration that missed a setting would hide it there, one that
# named an unread setting would add a meaningless axis.

# A setting read only in some mode is probed in that mode too: (base, settings to change there).
EXTRA_BASES: dict[str, list[tuple[dict[str, Any], list[str]]]] = {
    "resnet18": [({"mode": "finetune", "weights": "/nonexistent/other.pth"}, ["weights"])],
}


def _model_outcome(name: str, shape: tuple[int, ...]) -> Any:
    def outcome(c: dict[str, Any]) -> Any:
        torch.manual_seed(0)
        try:
            model = build_model({**c, "model": name}, shape, 3)
        except HpsearchError as exc:
            return f"error: {exc}"
        model.eval()
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            out = model(x)
        return [repr(model), *model.state_dict().values(), out]

    return outcome


def test_every_setting_has_an_alternate() -> None:
    assert set(ALTERNATES) == set(config.TRAIN_KEYS)
    assert all(ALTERNATES[k] != default for k, (default, _) in config.TRAIN_KEYS.items())


@pytest.mark.parametrize("model_name", MODELS.names())
def test_a_model_reads_exactly_the_settings_it_declares(model_name: str, one_thread: None) -> None:
    declared = config.declared_reads(MODELS.get(model_name))
    assert declared is not None, f"model {model_name!r} must declare what it reads with @reads(...)"
    shape = next(s for s, _ in SHAPES.values() if compatible(model_name, s))
    found = read_settings(_model_outcome(model_name, shape), "model", EXTRA_BASES.get(model_name, []))
    assert found == declared, f"reads but does not declare: {sorted(found - declared)}; " \
                              f"declares but does not read: {sorted(declared - found)}"


def test_used_config_keeps_what_the_model_and_optimizer_read() -> None:
    cfg = {**config.defaults(), "model": "dense", "optimizer": "adam", "seed": 3, "dataset": {"name": "digits"}}
    used = used_config(cfg)
    assert {"hidden_size", "dropout", "lr", "betas", "eps", "epochs", "seed", "dataset"} <= set(used)
    assert not {"momentum", "alpha", "filters", "kernel_size", "fc_sizes", "step_size", "gamma", "stem"} & set(used)
    assert "widths" not in used  # None: not set
    cnn_sgd = used_config({**cfg, "model": "cnn", "optimizer": "momentum", "schedule": "step"})
    assert {"filters", "kernel_size", "momentum", "step_size", "gamma"} <= set(cnn_sgd)
    assert not {"hidden_size", "betas", "eps", "alpha"} & set(cnn_sgd)
    # A plugin that does not declare what it reads keeps every setting (nothing used is hidden).
    plugin = used_config({**cfg, "model": "hps_catalogue_plugins:tiny_model"})
    assert {k for k, v in plugin.items() if v is not None} >= {k for k, v in cfg.items() if v is not None}


def test_reads_refuses_an_unknown_setting() -> None:
    assert config.declared_reads(config.reads("lr", "dropout")(lambda: None)) == {"lr", "dropout"}
    with pytest.raises(ValueError, match=r"must name training settings.*\['hidden_sise'\]"):
        config.reads("hidden_sise")


def test_a_cnn_without_filters_takes_the_default_from_settings() -> None:
    model = build_model({k: v for k, v in cfg(model="cnn").items() if k not in ("filters", "kernel_size")},
                        (1, 8, 8), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == config.default("filters")
    assert all(c.kernel_size == (config.default("kernel_size"),) * 2 for c in convs)
