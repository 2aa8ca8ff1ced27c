"""Exceptions a run raises for its callers (main.py turns them into one line)."""


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class SearchFailed(RuntimeError):
    """No trial of a hyperparameter search completed."""
