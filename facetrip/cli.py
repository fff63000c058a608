"""The `facetrip` command line. Parses, calls one workflow, renders with rich: no logic here.

TensorFlow is imported inside commands, never at module import, so that
`facetrip --help` answers at once.
"""

from __future__ import annotations

import typer
from rich.console import Console

from facetrip import __version__

app = typer.Typer(
    name="facetrip",
    help="Train and evaluate face embeddings with triplet loss and online triplet mining.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


@app.callback()
def main() -> None:
    """facetrip: triplet-loss face embeddings on TensorFlow 2 / Keras 3."""


@app.command()
def version() -> None:
    """Print the versions of facetrip, TensorFlow and Keras."""
    from facetrip.tf_runtime import import_tensorflow

    tf = import_tensorflow()
    import keras

    console.print(f"facetrip {__version__}  tensorflow {tf.__version__}  keras {keras.__version__}")


if __name__ == "__main__":
    app()
