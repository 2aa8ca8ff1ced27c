"""absl flag definitions of main.py, one module per concern.

Importing this package defines every flag; each module validates its own
flags at parse time so that a bad value fails with one line naming it.
`help_text()` is main.py's `--help`: these flags by concern, without absl's.
"""
import textwrap

from absl import flags as absl_flags

from flags import common, compare, data, distill, export, model, train, tune

# The order of --help.
MODULES = (common, data, model, distill, train, compare, tune, export)


def help_text(flag_values=absl_flags.FLAGS):
    """Each module's flags under its name and the first paragraph of its docstring."""
    sections = []
    for module in MODULES:
        heading, _, flags_help = flag_values.module_help(module).strip("\n").partition("\n")
        concern = " ".join(module.__doc__.split("\n\n")[0].split())
        sections.append(f"{textwrap.fill(f'{heading} {concern}', 80)}\n{flags_help}")
    return "\n\n".join(sections)
