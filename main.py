"""Entry point: `python main.py --mode=MODE ...`; each mode lives in sskd_tf/modes/."""
from absl import app
from absl import flags as absl_flags

import flags  # noqa: F401  (defines every flag of the project)
from sskd_tf import modes


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    modes.run(absl_flags.FLAGS.mode, absl_flags.FLAGS)


if __name__ == "__main__":
    app.run(main)
