"""What a run directory holds, by name, and finding runs: the file names, the metadata format, RunError.

::

    runs/<timestamp>/
      model.keras        the embedding model (raw [0, 1] images in, unit embeddings out)
      metadata.json      facetrip version, image size, channels, metric, margin, threshold, ...
      config.toml        the config the run used
      split.json         which identities went to train / dev / test
      replay.json        with train.replay: the replay source and the people of it trained on
      fine_tuned_weights.npz  pretrained backbones saved at a share below 1: the fine-tuned end of the line
      metrics.csv        one row per epoch
      metrics.json       `facetrip evaluate`: model and baselines on the test identities
      roc.png            `facetrip evaluate`: their ROC curves
      logs/              TensorBoard
      backup/            the checkpoints a resume continues from (facetrip.training), while training
      .facetrip.lock     held (fcntl.flock) by the process training into the run
"""

from __future__ import annotations

import time
from pathlib import Path


MODEL_FILE = "model.keras"

METADATA_FILE = "metadata.json"

CONFIG_FILE = "config.toml"

SPLIT_FILE = "split.json"

REPLAY_FILE = "replay.json"

METRICS_FILE = "metrics.csv"

EVALUATION_FILE = "metrics.json"

ROC_PLOT_FILE = "roc.png"

LOGS_DIR = "logs"

BACKUP_DIR = "backup"

LOCK_FILE = ".facetrip.lock"

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


def latest_run(root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    """The most recently modified run under ``root`` that has a model and metadata."""
    root = Path(root)
    finished = [path for path in root.glob("*") if (path / MODEL_FILE).is_file() and (path / METADATA_FILE).is_file()]
    if not finished:
        raise RunError(f"No finished run in {root}/: train one with `facetrip train` or pass --run RUN_DIR.")
    return max(finished, key=lambda path: (path / METADATA_FILE).stat().st_mtime)
