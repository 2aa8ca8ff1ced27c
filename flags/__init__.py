"""absl flag definitions of main.py, one module per concern.

Importing this package defines every flag; each module validates its own
flags at parse time so that a bad value fails with one line naming it.
"""
from flags import common  # noqa: F401
from flags import compare  # noqa: F401
from flags import data  # noqa: F401
from flags import distill  # noqa: F401
from flags import export  # noqa: F401
from flags import model  # noqa: F401
from flags import train  # noqa: F401
from flags import tune  # noqa: F401
