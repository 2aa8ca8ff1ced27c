"""Running main.py as a user does, for the tests of its error messages: one command per
process (`main_error`), or many in one process (`main_errors`), where what is checked is
what main.py prints, not how a process starts."""
import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ERROR_PREFIX = "main.py: error:"
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def check_user_error(status, stderr):
    """The line of a run that failed as a user's mistake must: exit status 2, exactly one
    `main.py: error:` line, no traceback."""
    assert status == 2, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    return errors[0]


def main_error(*argv, timeout=300):
    """Run `python main.py *argv`, check that it failed as a user's mistake must
    (`check_user_error`) and return that line and the completed process."""
    completed = subprocess.run([sys.executable, "main.py", *argv], cwd=REPO,
                               capture_output=True, text=True, timeout=timeout)
    return check_user_error(completed.returncode, completed.stderr), completed


# main.py's flag parser and main() on each command line in turn, in one process; absl's
# flags are reset between them. Prints [[exit status, stderr], ...] as JSON.
_BATCH = textwrap.dedent("""
    import contextlib, io, json, sys
    from absl import flags as absl_flags
    import main

    outcomes = []
    for argv in json.loads(sys.stdin.read()):
        absl_flags.FLAGS.unparse_flags()
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            try:
                main.main(main.parse_flags(["main.py", *argv]))
                status = 0
            except SystemExit as exit:
                status = exit.code
        outcomes.append([status, stderr.getvalue()])
    sys.stdout.write("\\n" + json.dumps(outcomes))
""")


def main_errors(*commands, timeout=600):
    """Run each command line (a list of arguments) through main.py's parser and main in one
    process, and return for each (the line it failed with, as `check_user_error` checks,
    and everything it wrote to sys.stderr)."""
    completed = subprocess.run([sys.executable, "-c", _BATCH], cwd=REPO, env=ENV,
                               input=json.dumps([list(command) for command in commands]),
                               capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-3000:]
    outcomes = json.loads(completed.stdout.rsplit("\n", 1)[-1])
    return [(check_user_error(status, stderr), stderr) for status, stderr in outcomes]
