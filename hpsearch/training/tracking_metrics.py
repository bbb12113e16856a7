"""What a trial's W&B run logs beyond scalars: per-layer gradient norms and the confusion chart.

torch and wandb are imported where used: hpsearch.training.tracking imports this in every worker.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["confusion_chart", "gradient_norms", "layer_names"]


def gradient_norms(model: Any) -> dict[str, float]:
    """L2 norm of each layer's gradient (weights and bias together) and of all of them.

    Read right after the last batch's backward pass, so vanishing (-> 0) or exploding layers show
    per layer in W&B. One device sync for the whole model. Keys name the layer (layer_names).
    """
    import torch

    names = layer_names(model)
    squares: dict[str, Any] = {}
    for module_path, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if p.grad is None:
                continue
            layer = names[module_path]
            sq = p.grad.detach().float().pow(2).sum()
            squares[layer] = squares[layer] + sq if layer in squares else sq
    if not squares:
        return {}
    values = torch.stack(list(squares.values())).cpu().tolist()
    norms = {f"grad_norm/{layer}": math.sqrt(v) for layer, v in zip(squares, values, strict=True)}
    norms["grad_norm/total"] = math.sqrt(sum(values))
    return norms


def layer_names(model: Any) -> dict[str, str]:
    """module path -> a readable name for every module that holds parameters.

    Built-in models are nn.Sequential, whose paths are positions ("1.0", "1.3"): a W&B panel of
    `grad_norm/1.0` says nothing. Those layers are named by kind and order instead (linear1,
    linear2, conv1, batchnorm1, ...), counted in the order the model holds them (the forward
    order of a Sequential). A path with a name in it (ResNet's `net.layer1.0.conv1`) is kept.
    """
    kinds = {"Linear": "linear", "Conv1d": "conv", "Conv2d": "conv", "Conv3d": "conv", "BatchNorm1d": "batchnorm",
             "BatchNorm2d": "batchnorm", "BatchNorm3d": "batchnorm", "LayerNorm": "layernorm", "Embedding": "embedding"}
    names: dict[str, str] = {}
    counts: dict[str, int] = {}
    for path, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if path and not all(part.isdigit() for part in path.split(".")):
            names[path] = path
            continue
        kind = kinds.get(type(module).__name__, type(module).__name__.lower())
        counts[kind] = counts.get(kind, 0) + 1
        names[path] = f"{kind}{counts[kind]}"
    taken = set()
    for path, name in names.items():  # a named path that looks like a generated name: keep both apart
        if name in taken:
            names[path] = f"{name}@{path}"
        taken.add(names[path])
    return names


def confusion_chart(matrix: list[list[int]], class_names: list[str]) -> Any:
    """W&B's confusion-matrix chart from a matrix (wandb.plot.confusion_matrix wants every prediction)."""
    import wandb

    data = [[class_names[i], class_names[j], int(matrix[i][j])]
            for i in range(len(matrix)) for j in range(len(matrix[i]))]
    table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=data)
    return wandb.plot.plot_table(
        "wandb/confusion_matrix/v1", table,
        {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
        {"title": "Test confusion matrix"},
    )
