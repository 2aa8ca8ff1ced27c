"""Entry point: `python main.py --mode=MODE ...`; each mode lives in sskd_tf/modes/.

`--help` lists this project's flags by concern; `--helpfull` adds absl's and
TensorFlow's. TensorFlow's C++ log lines and absl's INFO lines are kept off the
terminal unless `--verbosity=0` or `1` (`-v 1`) is given; TF_CPP_MIN_LOG_LEVEL,
when set, decides TensorFlow's as usual.

A mistake the user can fix (a bad flag, a missing file, data that cannot be
found) ends with one line on stderr and exit status 2; a run stopped because its
steps kept failing, with exit status 1; an interrupted run (SIGINT, after its
checkpoint is saved), with 130.
"""
import sys

from absl import app
from absl import flags as absl_flags

import flags  # defines every flag of the project
from sskd_tf import modes, quiet_start
from sskd_tf.errors import SearchFailed, TrainingDiverged

USAGE_ERROR = 2
RUN_FAILED = 1
INTERRUPTED = 130
# Answered with this project's flags alone; absl's --helpfull still lists every flag.
HELP_ARGUMENTS = ("-?", "-h", "--help", "--helpshort")


def _fail(message, status=USAGE_ERROR):
    sys.stderr.write(f"main.py: error: {message}\n")
    sys.exit(status)


def parse_flags(argv):
    if any(argument in HELP_ARGUMENTS for argument in argv[1:]):
        print(f"{__doc__}\nflags (--helpfull adds absl's and TensorFlow's):\n\n"
              f"{flags.help_text()}")
        sys.exit(0)
    try:
        return absl_flags.FLAGS(argv)
    except absl_flags.Error as error:
        _fail(error)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_start.apply(verbosity_given=absl_flags.FLAGS["verbosity"].present)
    try:
        modes.run(absl_flags.FLAGS.mode, absl_flags.FLAGS)
    except ValueError as error:
        _fail(error)
    except (TrainingDiverged, SearchFailed) as error:
        _fail(error, RUN_FAILED)
    except KeyboardInterrupt as error:
        detail = f" ({error})" if str(error) else ""
        _fail(f"interrupted{detail}; run the same command again to resume", INTERRUPTED)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
