"""The run directory: what a training run saves, how (atomically), and how it is loaded.

::

    runs/<timestamp>/
      model.keras        the embedding model (raw [0, 1] images in, unit embeddings out)
      metadata.json      facetrip version, image size, channels, metric, margin, threshold, ...
      config.toml        the config the run used
      split.json         which identities went to train / dev / test
      metrics.csv        one row per epoch
      metrics.json       `facetrip evaluate`: model and baselines on the test identities
      roc.png            `facetrip evaluate`: their ROC curves
      logs/              TensorBoard
      backup/            Keras BackupAndRestore state while training (resume)

Every file is written to a temporary name in the same folder and renamed into place, so
a kill during export never leaves a half-written model or metadata file.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
CONFIG_FILE = "config.toml"
SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.csv"
EVALUATION_FILE = "metrics.json"
ROC_PLOT_FILE = "roc.png"
LOGS_DIR = "logs"
BACKUP_DIR = "backup"
DEFAULT_RUNS_ROOT = "runs"
# Run directories whose metadata says another major format cannot be loaded.
METADATA_FORMAT = 1


class RunError(ValueError):
    """A run directory that is missing, incomplete or from an incompatible version."""


def new_run_dir(root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    """A fresh, uniquely named run directory ``root/<YYYYmmdd-HHMMSS>[-N]``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ["", *(f"-{number}" for number in range(2, 1000))]:
        candidate = root / f"{stamp}{suffix}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RunError(f"Could not find a free run directory name in {root}.")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; runs are meant to be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_model_atomically(model, path: str | Path) -> None:
    """Save the model, without optimizer state, to a temporary ``.keras`` file, then rename it into place."""
    import keras

    path = Path(path)
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
    inference_model = keras.Model(model.inputs, model.outputs, name=model.name)  # shares the layers, not compiled
    try:
        inference_model.save(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_metadata(run_dir: str | Path) -> dict[str, Any]:
    """The run's metadata; raises :class:`RunError` with a one-line reason."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"Run directory {run_dir} does not exist.")
    path = run_dir / METADATA_FILE
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{run_dir} is not a finished facetrip run: it has no {METADATA_FILE}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{path} is corrupt (not JSON).") from None
    if metadata.get("format") != METADATA_FORMAT:
        raise RunError(
            f"{run_dir} was written by facetrip {metadata.get('facetrip_version', '?')} in a format this "
            f"version cannot read (format {metadata.get('format')!r}, expected {METADATA_FORMAT})."
        )
    return metadata


def load_embedding_model(run_dir: str | Path):
    """The run's model, loaded with Keras' safe mode (a crafted file cannot run code)."""
    import keras

    import facetrip.losses  # noqa: F401  registers TripletLoss for deserialisation
    import facetrip.models.face_resnet  # noqa: F401  registers the face ResNet's layers
    import facetrip.models.tta  # noqa: F401  registers HorizontalFlip and Shift (the test-time augmentation layers)

    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise RunError(f"{run_dir} has no {MODEL_FILE}: train a model first (facetrip train).")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for corrupt or foreign files
        raise RunError(f"Cannot load {path}: {type(error).__name__}: {str(error).splitlines()[0][:200]}") from None


def latest_run(root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    """The most recently modified run under ``root`` that has a model and metadata."""
    root = Path(root)
    finished = [path for path in root.glob("*") if (path / MODEL_FILE).is_file() and (path / METADATA_FILE).is_file()]
    if not finished:
        raise RunError(f"No finished run in {root}/: train one with `facetrip train` or pass --run RUN_DIR.")
    return max(finished, key=lambda path: (path / METADATA_FILE).stat().st_mtime)
