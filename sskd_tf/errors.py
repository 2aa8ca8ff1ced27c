"""Exceptions a run raises for its callers (main.py turns them into one line)."""


class UserError(ValueError):
    """A mistake the user can fix (a flag, a file, data that cannot be found or fetched)."""


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class SearchFailed(RuntimeError):
    """No trial of a hyperparameter search completed."""
