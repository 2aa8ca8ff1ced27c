"""Exceptions a run raises for its callers (main.py turns them into one line)."""


class UserError(ValueError):
    """A mistake the user can fix (a flag, a file, a directory): main.py prints its
    one-line message and exits with status 2. Everything else that escapes a run is
    reported as an internal error, with its traceback in a log."""


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class SearchFailed(RuntimeError):
    """No trial of a hyperparameter search completed."""
