"""A run's training history: the rows of metrics.csv (trimmed on resume) and training_curves.png."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from facetrip.runs import METRICS_FILE, atomic_write_bytes, atomic_write_text
from facetrip.untrusted_files import UntrustedFileError, read_untrusted_text

# Keras writes a line of some 300 bytes per epoch: a larger metrics.csv is not one of a run.
_METRICS_SIZE_LIMIT = 64 << 20


CURVES_FILE = "training_curves.png"


def metric_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The columns of a metrics.csv and its complete rows: the last one of each epoch, by epoch.

    A row is complete when its line ends in a newline and has a value for every column
    and a whole-number epoch. A kill while Keras' CSVLogger writes a row leaves it cut
    short; an earlier version repeated the epochs after the last checkpoint on resume.

    Args:
        path: the metrics.csv.

    Returns:
        (columns, rows as dicts); both empty when the file is missing or has no whole header.
    """
    try:
        lines = read_untrusted_text(path, _METRICS_SIZE_LIMIT, "training log").splitlines(keepends=True)
    except UntrustedFileError as error:
        if error.reason in ("missing", "not text"):
            return [], []
        raise
    if not lines or not lines[0].endswith("\n"):
        return [], []
    try:
        columns = next(csv.reader([lines[0]]))
    except csv.Error:  # a field over csv's limit, a NUL: not a header Keras writes
        return [], []
    if "epoch" not in columns:
        return [], []
    by_epoch: dict[int, dict[str, str]] = {}
    for line in lines[1:]:
        try:
            values = next(csv.reader([line]), [])
        except csv.Error:  # a damaged row is dropped like a half-written one
            continue
        if not line.endswith("\n") or len(values) != len(columns):
            continue
        row = dict(zip(columns, values))
        try:
            by_epoch[int(row["epoch"])] = row
        except ValueError:
            continue
    return columns, [by_epoch[epoch] for epoch in sorted(by_epoch)]


def trim_metrics(path: Path, epochs: int) -> None:
    """Keep only the complete rows of metrics.csv for epochs before ``epochs`` (a resume logs the rest again).

    Args:
        path: the metrics.csv.
        epochs: the epoch a resume continues from (0-based epochs below it are kept).
    """
    if not path.exists():
        return
    columns, rows = metric_rows(path)
    kept = [row for row in rows if int(row["epoch"]) < epochs]
    if not kept:
        path.unlink()  # CSVLogger writes the header again
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # the excel dialect, as CSVLogger writes
    writer.writerow(columns)
    writer.writerows([row[column] for column in columns] for row in kept)
    atomic_write_text(path, buffer.getvalue())


def plot_metrics(run_dir: Path) -> None:
    """metrics.csv as training_curves.png (loss, fraction of positive triplets, distances, learning rate)."""
    image = training_curves_png(run_dir)
    if image is not None:
        atomic_write_bytes(run_dir / CURVES_FILE, image)


def training_curves_png(run_dir: Path) -> bytes | None:
    """A run's metrics.csv drawn as four panels: loss, fraction of positive triplets, distances, learning rate.

    Args:
        run_dir: the run directory.

    Returns:
        PNG bytes, or None when the run has no complete row of metrics.csv.
    """
    columns, rows = metric_rows(Path(run_dir) / METRICS_FILE)  # a row cut short by a kill is left out
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(row["epoch"]) + 1 for row in rows]
    panels = [
        ("loss", ["loss", "triplet_loss", "classification_loss"]),
        ("fraction of positive triplets", ["fraction_positive_triplets"]),
        ("hardest distances", ["hardest_positive_dist", "hardest_negative_dist"]),
        ("learning rate", ["learning_rate"]),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for axis, (title, keys) in zip(axes, panels):
        for key in keys:
            if key in columns:
                axis.plot(epochs, [_number(row[key]) for row in rows], label=key)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        if len(keys) > 1 and axis.lines:
            axis.legend(fontsize=7)
    figure.tight_layout()
    image = io.BytesIO()  # rendered in memory: no temporary file that another writer could share
    figure.savefig(image, format="png", dpi=100)
    plt.close(figure)
    return image.getvalue()


def _number(value: str) -> float:
    """A metrics.csv value as a float; NaN for a missing one (CSVLogger writes ``NA``)."""
    try:
        return float(value)
    except ValueError:
        return math.nan
