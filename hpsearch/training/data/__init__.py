"""Datasets: the registry and the built-in loaders (embedded, torchvision files, user files).

Importing the package registers the built-in loaders; the loaders import only registry.py, and the
in-memory data path (loading.py) only reads the registry, so nothing here imports in a circle.
"""

from hpsearch.training.data import embedded, files, vision  # noqa: F401  (they register themselves)
