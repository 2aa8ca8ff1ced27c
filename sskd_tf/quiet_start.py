"""A quiet start: TensorFlow's C++ log lines and absl's INFO lines (TFDS's "Generating
dataset ...") kept off the terminal unless asked for.

absl's `app.run` lowers the Python logging threshold to INFO when --verbosity is not given;
`apply` puts it back at WARNING, so warnings (a skipped non-finite step) still show.

TensorFlow 2.21 logs through absl's C++ logging before absl is initialised, and those
lines ("Could not find cuda drivers", "This TensorFlow binary is optimized ...", "failed
call to cuInit") reach stderr whatever `TF_CPP_MIN_LOG_LEVEL` says. They are written while
TensorFlow is imported and while it first looks for devices, so `import_tensorflow_quietly`
does both with the stderr file descriptor pointed at a temporary file (replayed if the
import fails), after setting `TF_CPP_MIN_LOG_LEVEL=2`, which keeps TensorFlow's later INFO and
WARNING lines away; its ERROR lines still show. Python output (Keras progress bars, our
messages, warnings, tracebacks) is untouched.
"""
import os
import sys
import tempfile

from absl import logging

# Set by a user who chose TensorFlow's C++ logging: a quiet start leaves it alone.
LOGGING_VARIABLES = ("TF_CPP_MIN_LOG_LEVEL", "TF_CPP_MAX_VLOG_LEVEL", "TF_CPP_VMODULE")


def apply(verbosity_given, environ=os.environ):
    """Unless --verbosity / -v was passed: absl's Python logging at WARNING, and TensorFlow
    imported quietly unless a TensorFlow logging variable is set."""
    if verbosity_given:
        return
    logging.set_verbosity(logging.WARNING)
    if not any(name in environ for name in LOGGING_VARIABLES):
        import_tensorflow_quietly()


def import_tensorflow_quietly():
    """Imports TensorFlow and lists its devices with stderr's file descriptor captured."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    terminal = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        except BaseException:
            sys.stderr.flush()
            os.dup2(terminal, 2)
            capture.seek(0)
            os.write(2, capture.read())
            raise
        finally:
            sys.stderr.flush()
            os.dup2(terminal, 2)
            os.close(terminal)
