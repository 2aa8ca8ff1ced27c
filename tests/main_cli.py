"""Running main.py as a user does, for the tests of its error messages."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ERROR_PREFIX = "main.py: error:"


def main_error(*argv, timeout=300):
    """Run `python main.py *argv`, check that it failed as a user's mistake must
    (exit status 2, exactly one `main.py: error:` line, no traceback) and return
    that line and the completed process."""
    completed = subprocess.run([sys.executable, "main.py", *argv], cwd=REPO,
                               capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 2, completed.stderr[-2000:]
    errors = [line for line in completed.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr
    return errors[0], completed
