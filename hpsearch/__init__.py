"""hpsearch: hyperparameter search service on Optuna."""

__version__ = "0.1.0"
