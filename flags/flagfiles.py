"""--flagfile checks absl leaves out: absl skips a flagfile that includes itself
(directly or through others) with a log line and runs on; here it is an error."""
import os

from absl import flags

_FLAGFILE_PREFIXES = ("--flagfile=", "-flagfile=")


def _flagfiles(arguments):
    """The flagfiles named in `arguments` (a command line or a flagfile's lines)."""
    names, previous = [], None
    for argument in arguments:
        argument = argument.strip()
        if argument.startswith(_FLAGFILE_PREFIXES):
            names.append(argument.split("=", 1)[1])
        elif previous in ("--flagfile", "-flagfile"):
            names.append(argument)
        previous = argument
    return names


def _lines(path):
    try:
        with open(path) as handle:
            return [line for line in handle if not line.lstrip().startswith(("#", "//"))]
    except (OSError, UnicodeDecodeError):
        return []  # absl reports a file it cannot read


def check_flagfiles(argv):
    """Raise flags.Error when a flagfile named in `argv` includes itself."""
    def visit(path, chain):
        real = os.path.realpath(os.path.expanduser(path))
        if real in chain:
            cycle = " -> ".join(list(chain.values())[list(chain).index(real):] + [path])
            raise flags.Error(f"--flagfile={path} includes itself ({cycle}); remove the line that "
                              "closes the loop")
        chain = {**chain, real: path}
        for included in _flagfiles(_lines(real)):
            visit(included, chain)

    for path in _flagfiles(argv[1:]):
        visit(path, {})
