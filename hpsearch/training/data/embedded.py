"""The embedded default dataset: it ships inside scikit-learn, so it needs no download."""

from __future__ import annotations

from typing import Any

import numpy as np

from hpsearch.training.data.registry import Raw, register


@register("digits", ("test_fraction",))
def digits(cfg: dict[str, Any]) -> Raw:
    """scikit-learn's 8x8 digits (1,797 images): ships inside the package, no download."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, d.target, test_size=float(cfg.get("test_fraction", 0.2)), random_state=0, stratify=d.target
    )
    return Raw(x_tr, y_tr, x_te, y_te, [str(i) for i in range(10)])
