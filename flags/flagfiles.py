"""--flagfile checks absl leaves out: absl skips a flagfile that includes itself
(directly or through others) with a log line and runs on, and stops with a traceback
at a file that is not text of the locale's encoding; here both are one-line errors."""
import locale
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
    """The lines of flagfile `path` that are not comments, decoded as absl decodes them
    (the locale's encoding); flags.Error naming the first undecodable byte's line."""
    try:
        with open(path, "rb") as handle:
            content = handle.read()
    except OSError:
        return []  # absl reports a file it cannot read
    encoding = locale.getpreferredencoding(False)
    try:
        text = content.decode(encoding)
    except UnicodeDecodeError as error:
        line_number = content.count(b"\n", 0, error.start) + 1
        raise flags.Error(f"--flagfile={path} is not {encoding} text: line {line_number} holds "
                          f"the byte 0x{content[error.start]:02x}; save the file as {encoding}"
                          ) from None
    return [line for line in text.splitlines() if not line.lstrip().startswith(("#", "//"))]


def check_flagfiles(argv):
    """Raise flags.Error when a flagfile named in `argv` includes itself or is not text."""
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
