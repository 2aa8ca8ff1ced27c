"""Entry point: `python main.py --mode=MODE ...`; each mode lives in sskd_tf/modes/.

`--help` lists this project's flags by concern; `--helpfull` adds absl's and
TensorFlow's. TensorFlow's C++ log lines and absl's INFO lines are kept off the
terminal unless `--verbosity=0` or `1` (`-v 1`) is given; TF_CPP_MIN_LOG_LEVEL,
when set, decides TensorFlow's as usual.

A mistake the user can fix (a bad flag, a missing file, data that cannot be
found: a `UserError`) ends with one line on stderr and exit status 2; a run
stopped because its steps kept failing, with exit status 1; an interrupted run
(SIGINT: 130, SIGTERM: 143; a training run saves its checkpoint first), with 128 plus
the signal's number. Any other exception is a bug of ours: one line saying so, exit
status 1, and its traceback in `--train_dir`/error.log (a temporary file when that
directory is not given or cannot be written). That line starts on a line of its own
(after a progress bar cut off mid-epoch) and is the last: what TensorFlow or the
interpreter would print on stderr while exiting is discarded.
"""
import os
import signal
import sys
import tempfile
import traceback

from absl import app
from absl import flags as absl_flags

import flags  # defines every flag of the project
from flags.flagfiles import check_flagfiles
from sskd_tf import modes, quiet_start
from sskd_tf.errors import (MESSAGE_LIMIT, Interrupted, SearchFailed, TrainingDiverged,
                            UserError, WorkerLost, one_line)

USAGE_ERROR = 2
RUN_FAILED = 1
# Answered with this project's flags alone; absl's --helpfull still lists every flag.
HELP_ARGUMENTS = ("-?", "-h", "--help", "--helpshort")
ERROR_LOG = "error.log"


class LineTrackingStream:
    """A text stream (sys.stdout) that remembers whether its last line is unfinished, as a
    Keras progress bar is until its epoch ends."""

    def __init__(self, stream):
        self.stream = stream
        self.line_open = False

    def write(self, text):
        if text:
            self.line_open = not text.endswith("\n")
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _fail(message, status=USAGE_ERROR, limit=MESSAGE_LIMIT):
    if getattr(sys.stdout, "line_open", False):
        sys.stdout.write("\n")
    sys.stdout.flush()
    sys.stderr.write(f"main.py: error: {one_line(message, limit)}\n")
    sys.stderr.flush()
    discard = os.open(os.devnull, os.O_WRONLY)
    os.dup2(discard, 2)  # the error line stays the last on stderr
    os.close(discard)
    sys.exit(status)


def _write_error_log(text):
    """Write `text` to --train_dir/error.log, else to a temporary file; return its path."""
    try:
        if not absl_flags.FLAGS.train_dir:
            raise OSError("no --train_dir")
        os.makedirs(absl_flags.FLAGS.train_dir, exist_ok=True)
        path = os.path.join(absl_flags.FLAGS.train_dir, ERROR_LOG)
        with open(path, "w") as handle:
            handle.write(text)
        return path
    except OSError:
        with tempfile.NamedTemporaryFile("w", prefix="sskd_tf-error-", suffix=".log",
                                         delete=False) as handle:
            handle.write(text)
        return handle.name


def _internal_error(error):
    log = _write_error_log(traceback.format_exc())
    detail = one_line(error) or "(no message)"
    _fail(f"internal error: {type(error).__name__}: {detail}; full traceback in {log}", RUN_FAILED,
          limit=None)


def parse_flags(argv):
    if any(argument in HELP_ARGUMENTS for argument in argv[1:]):
        print(f"{__doc__}\nflags (--helpfull adds absl's and TensorFlow's):\n\n"
              f"{flags.help_text()}")
        sys.exit(0)
    try:
        check_flagfiles(argv)
        return absl_flags.FLAGS(argv)
    except absl_flags.Error as error:
        _fail(error)


def _terminated(signum, frame):
    """SIGTERM outside training (where the run's checkpoint handles it) ends as Ctrl-C does."""
    raise Interrupted(signum=signum)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_start.apply(verbosity_given=absl_flags.FLAGS["verbosity"].present)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        modes.run(absl_flags.FLAGS.mode, absl_flags.FLAGS)
    except UserError as error:
        _fail(error)
    except (TrainingDiverged, SearchFailed, WorkerLost) as error:
        _fail(error, RUN_FAILED)
    except KeyboardInterrupt as error:
        signum = getattr(error, "signum", signal.SIGINT)
        detail = f" ({error})" if str(error) else ""
        _fail(f"interrupted by {signal.Signals(signum).name}{detail}; run the same command "
              "again to resume", 128 + signum)
    except Exception as error:  # noqa: BLE001 (every other exception is a bug of ours)
        _internal_error(error)


if __name__ == "__main__":
    sys.stdout = LineTrackingStream(sys.stdout)
    app.run(main, flags_parser=parse_flags)
