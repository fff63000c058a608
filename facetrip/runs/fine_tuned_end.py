"""The fine-tuned end of a run's weight line, kept beside ``model.keras`` when that holds a share below 1.

A pretrained backbone's run saves ``w(a) = (1 - a) * w_pretrained + a * w_fine_tuned``
(``train.weight_interpolation``). With ``a < 1`` the fine-tuned weights cannot be read back
from ``model.keras`` (at ``a = 0`` not at all), so the run also keeps them, in the exported
model's ``get_weights()`` order, as ``fine_tuned_weights.npz``; ``metadata.json`` records
the file's size and SHA-256 under ``fine_tuned_weights``. Any other share is then a
weighted mean of two weight lists, without training again (``scripts/interpolate_run.py``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from facetrip.runs.files import file_sha256, write_atomically

FINE_TUNED_WEIGHTS_FILE = "fine_tuned_weights.npz"

METADATA_KEY = "fine_tuned_weights"


def save_fine_tuned_weights(weights: Sequence[np.ndarray], run_dir: str | Path) -> dict:
    """Write the fine-tuned weights into ``run_dir`` (whole or not at all).

    Args:
        weights: the exported model's fine-tuned weights, in ``get_weights()`` order.
        run_dir: the run directory.

    Returns:
        The metadata record: ``{"file", "arrays", "bytes", "sha256"}``.
    """
    path = Path(run_dir) / FINE_TUNED_WEIGHTS_FILE

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:  # a file object: np.savez would append ".npz" to a path
            np.savez(handle, *[np.asarray(array) for array in weights])

    write_atomically(path, write, suffix=".partial.npz")
    return {"file": FINE_TUNED_WEIGHTS_FILE, "arrays": len(weights), "bytes": path.stat().st_size,
            "sha256": file_sha256(path)}


def load_fine_tuned_weights(run_dir: str | Path, record: object, like: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The fine-tuned weights a run kept, checked against its metadata record and the model's weights.

    Args:
        run_dir: the run directory.
        record: ``metadata["fine_tuned_weights"]``.
        like: the run's model weights (``get_weights()``): the kept arrays must match their count, shapes and dtypes.

    Returns:
        The weights, in ``get_weights()`` order.

    Raises:
        ValueError: in one line, why the file cannot be used (missing, damaged, not this run's).
    """
    path = Path(run_dir) / FINE_TUNED_WEIGHTS_FILE
    if not (isinstance(record, dict) and record.get("file") == FINE_TUNED_WEIGHTS_FILE
            and isinstance(record.get("bytes"), int) and isinstance(record.get("sha256"), str)):
        raise ValueError(f"{run_dir}/metadata.json: '{METADATA_KEY}' is not a record facetrip writes")
    if not path.is_file():
        raise ValueError(f"{path} is missing")
    if path.stat().st_size != record["bytes"] or file_sha256(path) != record["sha256"]:
        raise ValueError(f"{path} is truncated or damaged (it does not match metadata.json)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = [archive[f"arr_{index}"] for index in range(len(archive.files))]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # matches a forged record
        raise ValueError(f"{path} is not a weights archive facetrip writes ({type(error).__name__})") from None
    if [(array.shape, array.dtype) for array in arrays] != [(np.shape(w), np.asarray(w).dtype) for w in like]:
        raise ValueError(f"{path} does not hold this run's weights (their shapes differ from model.keras's)")
    return arrays
