"""Exceptions a run raises for its callers (main.py turns them into one line)."""


class UserError(ValueError):
    """A mistake the user can fix (a flag, a file, a directory): main.py prints its
    one-line message and exits with status 2. Everything else that escapes a run is
    reported as an internal error, with its traceback in a log."""


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class SearchFailed(RuntimeError):
    """No trial of a hyperparameter search completed."""


class UserError(ValueError):
    """A mistake in what the user asked for; its message is one line saying what was
    wrong and what is allowed (main.py prints it and exits with status 2)."""
