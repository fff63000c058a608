"""The `facetrip` command line. Parses, calls one workflow, renders with rich: no logic here.

One module per command or close group, over :mod:`facetrip.cli.core` (the app, its consoles,
one-line failures, the shared options). Importing this package registers every command on
``app``, in the order ``facetrip --help`` lists them. TensorFlow is imported inside
commands, never at module import, so that ``facetrip --help`` answers at once.
"""

from facetrip.cli.core import app, console, error_console, fail, setup_logging

# Each module registers its commands on the app as it is imported.
from facetrip.cli import data, train, verification, embedding, evaluation, identification, prepare  # noqa: E402, I001

__all__ = ["app", "console", "error_console", "fail", "setup_logging"]
