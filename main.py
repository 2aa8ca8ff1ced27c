"""Entry point: `python main.py --mode=MODE ...`; each mode lives in sskd_tf/modes/.

A mistake the user can fix (a bad flag, a missing file, data that cannot be
found) ends with one line on stderr and exit status 2; a run stopped because its
steps kept failing, with exit status 1; an interrupted run (SIGINT, after its
checkpoint is saved), with 130.
"""
import sys

from absl import app
from absl import flags as absl_flags

import flags  # noqa: F401  (defines every flag of the project)
from sskd_tf import modes
from sskd_tf.errors import SearchFailed, TrainingDiverged

USAGE_ERROR = 2
RUN_FAILED = 1
INTERRUPTED = 130


def _fail(message, status=USAGE_ERROR):
    sys.stderr.write(f"main.py: error: {message}\n")
    sys.exit(status)


def parse_flags(argv):
    try:
        return absl_flags.FLAGS(argv)
    except absl_flags.Error as error:
        _fail(error)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
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
