"""Exceptions a run raises for its callers (main.py turns them into one line)."""
import re
import signal


class UserError(ValueError):
    """A mistake the user can fix (a flag, a file, a directory): main.py prints its
    one-line message and exits with status 2. Everything else that escapes a run is
    reported as an internal error, with its traceback in a log."""


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class SearchFailed(RuntimeError):
    """No trial of a hyperparameter search completed."""


class WorkerLost(RuntimeError):
    """Another worker of a multi-worker run stopped; restarting all of them resumes."""


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT: Ctrl-C, or SIGTERM), after saving its
    checkpoint when it was training; main.py exits with status 128 + `signum`."""

    def __init__(self, message="", signum=signal.SIGINT):
        super().__init__(message)
        self.signum = signum


# Where a message starts to print a tensor or an array: nothing from there on is shown.
_TENSOR_REPRS = ("PerReplica:", "tf.Tensor(", "<tf.Tensor", "<tf.Variable", "array(", "[[")
MESSAGE_LIMIT = 1000
# Keras re-raises an exception from a layer's call with its message in bold inside
# a report of the call's arguments.
_KERAS_CALL_REPORT = re.compile(r"^Exception encountered when calling .*?\x1b\[1m(.*?)\x1b\[0m", re.S)


def one_line(message, limit=MESSAGE_LIMIT):
    """`message` as one line for a terminal: its first line, whitespace collapsed, cut
    where a tensor's or an array's repr begins and after `limit` characters (None: no limit)."""
    message = str(message)
    keras_report = _KERAS_CALL_REPORT.match(message)
    if keras_report:
        message = keras_report.group(1)
    lines = message.strip().splitlines()
    text = " ".join(lines[0].split()) if lines else ""
    cuts = [text.find(marker) for marker in _TENSOR_REPRS if marker in text]
    if cuts:
        text = text[:min(cuts)].rstrip() + " ..."
    return text if limit is None or len(text) <= limit else text[:limit - 4].rstrip() + " ..."
