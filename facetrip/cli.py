"""The `facetrip` command line. Parses, calls one workflow, renders with rich: no logic here.

TensorFlow is imported inside commands, never at module import, so that
`facetrip --help` answers at once.
"""

from __future__ import annotations

import logging
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from facetrip import __version__

app = typer.Typer(
    name="facetrip",
    help="Train and evaluate face embeddings with triplet loss and online triplet mining.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
error_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print one line to stderr and exit non-zero: what went wrong and what to do."""
    error_console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def setup_logging() -> None:
    """facetrip's warnings (skipped files, small identities) through rich, once per process."""
    logger = logging.getLogger("facetrip")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=error_console, show_time=False, show_path=False))
        logger.setLevel(logging.INFO)
        logger.propagate = False


def load_source(source: str, data_dir: Optional[str]):
    """Load a data source for a command, with a spinner while tfds prepares it."""
    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    import tensorflow_datasets as tfds

    from facetrip.data import load_faces

    tfds.disable_progress_bar()
    logging.getLogger("absl").setLevel(logging.ERROR)
    with console.status(f"Loading {source} ..."):
        return load_faces(source, data_dir=data_dir)


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


DATA_HELP = "orl_faces (the offline default), folder:PATH with PATH/<identity>/<image>, or tfds:NAME (e.g. tfds:lfw)."
DATA_DIR_HELP = "Where tfds keeps prepared datasets (default: ~/tensorflow_datasets)."


@app.command()
def data(
    source: str = typer.Argument("orl_faces", help=DATA_HELP),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    test: float = typer.Option(10, help="Test identities: a count (>= 1) or a fraction (< 1)."),
    dev: float = typer.Option(5, help="Dev identities: a count (>= 1) or a fraction (< 1)."),
    seed: int = typer.Option(0, help="Seed of the identity split and the sampler."),
    identities_per_batch: int = typer.Option(16, "-P", help="P: identities per batch."),
    images_per_identity: int = typer.Option(4, "-K", help="K: images per identity."),
) -> None:
    """Prepare a data source and show what training would get from it: identities, split, P x K batches."""
    import numpy as np

    from facetrip.data import DataError, PKSampler, split_identities

    setup_logging()
    try:
        faces = load_source(source, data_dir)
        split = split_identities(faces.identity_names, dev=dev, test=test, seed=seed)
        train = faces.restricted_to(split.train)
        sampler = PKSampler(train.labels, identities_per_batch, images_per_identity, seed=seed)
    except DataError as error:
        fail(str(error))

    counts = faces.images_per_identity()
    table = Table(title=f"{faces.source}", show_header=False)
    table.add_row("images", f"{len(faces)}")
    table.add_row("identities", f"{len(counts)} ({int((counts >= 2).sum())} with two or more images)")
    table.add_row("images per identity", f"min {counts.min()}, median {int(np.median(counts))}, max {counts.max()}")
    table.add_row("channels", f"{faces.channels}")
    table.add_row("split (identities)", f"train {len(split.train)}, dev {len(split.dev)}, test {len(split.test)} (seed {seed})")
    table.add_row("train images", f"{len(train)}")
    table.add_row("P x K batches per epoch", f"{sampler.batches_per_epoch} of {sampler.batch_size} images")
    console.print(table)


if __name__ == "__main__":
    app()
