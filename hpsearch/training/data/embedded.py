"""The embedded default dataset: it ships inside scikit-learn, so it needs no download.

Its split tensors go to the machine's tensor cache like a file dataset's: importing scikit-learn
(and with it SciPy and pandas) to read them cost every worker process as much CPU as importing
torch, ~1-3 s; a later worker maps the cached tensors without importing it. The cache is keyed on
the data file and scikit-learn's own __init__.py (its version), so an upgrade builds anew.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.training.data.registry import Raw, register


def _sources(cfg: Mapping[str, Any]) -> list[Path]:
    """scikit-learn's digits file and version, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("scikit-learn is not installed")  # the loader says so in its own words
    package = Path(spec.origin).parent
    return [package / "datasets" / "data" / "digits.csv.gz", package / "__init__.py"]


@register("digits", ("test_fraction",), sources=_sources)
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
