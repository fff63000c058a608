"""The training workflow: data, model, loss and Keras callbacks, checkpoints, export.

Online strategies (batch_all, batch_hard, semi_hard) run through ``model.fit`` on P x K
batches with :class:`~facetrip.losses.TripletLoss`, so the train step is Keras' own
(stateless per step, ready for a ``tf.distribute`` strategy).

Checkpoints (:func:`write_checkpoint`) hold the trainer's weights and optimizer state, the
config and the split, in ``backup/``. Every file of one is written whole under a fresh
temporary name, flushed and renamed into place, and a checkpoint counts once
``backup/training_metadata.json`` names it; the previous one is kept as a fallback. So
``--resume`` after a crash or ``kill -9`` at any moment continues from the last committed
checkpoint, exactly as an uninterrupted run would have (the data order and augmentation
are functions of the seed and the epoch), and names the checkpoint it continues from.
The exported ``model.keras`` and metadata are replaced atomically at the same moments. A
checkpoint is taken at the end of an epoch once ``train.checkpoint_seconds`` have passed
since the previous one, and after the last epoch: on a small data set an epoch takes
about a second and saving after every one doubled the training time. Epochs after the
last checkpoint are repeated on resume; their rows in metrics.csv are replaced.

A lock (:func:`facetrip.runs.run_lock`) keeps a second process from training into the
same run directory.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Sequence

from facetrip import __version__
from facetrip.config import Config, ConfigError
from facetrip.runs import (
    BACKUP_DIR,
    CONFIG_FILE,
    EVALUATION_FILE,
    LOCK_FILE,
    LOGS_DIR,
    METADATA_FILE,
    METADATA_FORMAT,
    METRICS_FILE,
    MODEL_FILE,
    ROC_PLOT_FILE,
    SPLIT_FILE,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_directory,
    run_lock,
    save_model_atomically,
    write_atomically,
)

logger = logging.getLogger(__name__)

ONLINE_STRATEGIES = ("batch_all", "batch_hard", "semi_hard")
OFFLINE = "offline"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingError(ValueError):
    """A configuration or run directory that cannot be trained: one line saying why."""


CURVES_FILE = "training_curves.png"
# The commit record of the checkpoints (the name Keras' BackupAndRestore gave its state file).
CHECKPOINT_POINTER = "training_metadata.json"
CHECKPOINT_FORMAT = 1
_CHECKPOINT_FILE = re.compile(r"^epoch-(\d{4,})\.(weights\.h5|json)$")
# write_atomically's temporaries of checkpoint files: ".<final name>.<12 hex digits><suffix>"
_CHECKPOINT_TEMPORARY = re.compile(r"^\.(epoch-\d{4,}\.(weights\.h5|json)|training_metadata\.json)\.[0-9a-f]{12}\.")
# What Keras' BackupAndRestore wrote in facetrip 0.1: still resumed, removed at the next checkpoint.
LEGACY_WEIGHTS, LEGACY_PREVIOUS_WEIGHTS, LEGACY_PREVIOUS_POINTER = (
    "latest.weights.h5", "latest.weights.h5.bkp", "training_metadata.json.bkp")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One whole checkpoint in a run's ``backup/`` folder: what ``--resume`` continues from.

    Attributes:
        epoch: the epochs completed when it was taken.
        weights: the trainer's ``.weights.h5`` (model, class centres and optimizer state).
        config_toml: the config it was trained with (None in a checkpoint of facetrip 0.1).
        split: the identity split it was trained on, as a dict (None likewise).
    """

    epoch: int
    weights: Path
    config_toml: str | None = None
    split: dict | None = None

    @property
    def name(self) -> str:
        return f"{self.weights.parent.name}/{self.weights.name}"


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """Where ``--resume`` continues: a checkpoint (None: from the start), and notes on damaged ones skipped."""

    checkpoint: Checkpoint | None
    notes: tuple[str, ...] = ()

    @property
    def epoch(self) -> int:
        return self.checkpoint.epoch if self.checkpoint is not None else 0


def checkpoint_stem(epoch: int) -> str:
    """The file name, less its extension, of the checkpoint taken after ``epoch`` epochs."""
    return f"epoch-{epoch:04d}"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's contents, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checkpoint(trainer, backup_dir: Path, epoch: int, config_toml: str, split: dict,
                     previous_epoch: int | None = None) -> Checkpoint:
    """Save the training state after ``epoch`` epochs as a checkpoint, commit it and drop older ones.

    Order matters for a kill at any moment: the weights, then the checkpoint's record (with
    the weights' size and SHA-256), each written whole under a temporary name and renamed;
    then the commit, ``training_metadata.json`` naming the new checkpoint; only then are
    checkpoints other than this one and ``previous_epoch`` removed. Until the commit the
    previous checkpoint is the one a resume uses, and a damaged newest one falls back to it.

    Args:
        trainer: the model ``fit`` trains (its weights include the optimizer state).
        backup_dir: the run's ``backup/`` folder.
        epoch: epochs completed.
        config_toml: the run's config, kept so that a damaged config.toml can be restored.
        split: the run's identity split (``IdentitySplit.to_dict()``), likewise for split.json.
        previous_epoch: the epoch of the checkpoint committed before this one, kept as the fallback.

    Returns:
        The new checkpoint.
    """
    backup_dir.mkdir(exist_ok=True)
    stem = checkpoint_stem(epoch)
    weights = backup_dir / f"{stem}.weights.h5"
    write_atomically(weights, trainer.save_weights, suffix=".weights.h5")  # Keras insists on that suffix
    atomic_write_json(backup_dir / f"{stem}.json", {
        "format": CHECKPOINT_FORMAT, "epoch": epoch, "weights": weights.name, "bytes": weights.stat().st_size,
        "sha256": file_sha256(weights), "config": config_toml, "split": split,
    })
    atomic_write_json(backup_dir / CHECKPOINT_POINTER, {"epoch": epoch, "batch": 0, "checkpoint": stem})
    keep = {epoch} | ({previous_epoch} if previous_epoch is not None else set())
    _remove_checkpoint_files(backup_dir, keep_epochs=keep)
    return Checkpoint(epoch, weights, config_toml, split)


def _remove_checkpoint_files(backup_dir: Path, keep_epochs: set[int] = frozenset(), pointer: bool = False) -> None:
    """Remove facetrip's checkpoint files from ``backup_dir``, except those of ``keep_epochs``; never other files.

    Args:
        backup_dir: the run's ``backup/`` folder.
        keep_epochs: epochs whose checkpoint stays.
        pointer: remove the commit record too (training has finished).
    """
    if not backup_dir.is_dir():
        return
    for path in backup_dir.iterdir():
        match = _CHECKPOINT_FILE.match(path.name)
        ours = (
            (match is not None and int(match.group(1)) not in keep_epochs)
            or _CHECKPOINT_TEMPORARY.match(path.name) is not None
            or path.name in (LEGACY_WEIGHTS, LEGACY_PREVIOUS_WEIGHTS, LEGACY_PREVIOUS_POINTER)
            or (pointer and path.name == CHECKPOINT_POINTER)
        )
        if ours and path.is_file():
            path.unlink(missing_ok=True)
    fsync_directory(backup_dir)


def remove_checkpoints(backup_dir: Path) -> None:
    """Remove all of facetrip's checkpoint files, and ``backup_dir`` itself when nothing else is left in it.

    Unlike Keras' BackupAndRestore, which deletes the whole folder, files facetrip did not
    write survive.

    Args:
        backup_dir: the run's ``backup/`` folder.
    """
    _remove_checkpoint_files(backup_dir, pointer=True)
    try:
        backup_dir.rmdir()
    except OSError:  # missing, or holds someone else's files
        pass


def _read_checkpoint(record_path: Path) -> tuple[Checkpoint | None, str]:
    """The checkpoint ``record_path`` describes if it is whole, else None and why not."""
    try:
        record = json.loads(record_path.read_text())
        epoch, weights = int(record["epoch"]), record_path.parent / str(record["weights"])
        expected_bytes, expected_sha256 = int(record["bytes"]), str(record["sha256"])
        if not _CHECKPOINT_FILE.match(weights.name):
            raise ValueError("not the name of a checkpoint's weights")
    except FileNotFoundError:
        return None, f"{record_path} is missing"
    except (OSError, ValueError, KeyError, TypeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, f"{record_path} is empty or truncated"
    if record.get("format") != CHECKPOINT_FORMAT:
        return None, f"{record_path} has an unknown format {record.get('format')!r}"
    if not weights.is_file():
        return None, f"{weights} is missing"
    if weights.stat().st_size != expected_bytes or file_sha256(weights) != expected_sha256:
        return None, f"{weights} is truncated or damaged (it does not match {record_path.name})"
    return Checkpoint(epoch, weights, record.get("config"), record.get("split")), ""


def _read_legacy_checkpoint(pointer_path: Path, weights: Path) -> tuple[Checkpoint | None, str]:
    """A checkpoint of Keras' BackupAndRestore (facetrip 0.1), if its files can be read."""
    try:
        epoch = int(json.loads(pointer_path.read_text())["epoch"])
    except FileNotFoundError:
        return None, f"{pointer_path} is missing"
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{pointer_path} is empty or truncated"
    try:
        import h5py

        with h5py.File(weights, "r"):
            pass
    except (OSError, ValueError):
        return None, f"{weights} is missing, truncated or damaged"
    return Checkpoint(epoch, weights), ""


def find_resume_point(run_dir: str | Path) -> ResumePoint:
    """The checkpoint ``--resume`` continues ``run_dir`` from.

    That is the committed one (named by ``backup/training_metadata.json``) when it is
    whole; otherwise the newest whole checkpoint older than it (or the newest whole one,
    when the commit record itself is damaged), with a note saying what was skipped.

    Args:
        run_dir: the run directory.

    Returns:
        The resume point; without a checkpoint when none was taken yet.

    Raises:
        TrainingError: there are checkpoint files but none is whole.
    """
    backup_dir = Path(run_dir) / BACKUP_DIR
    pointer_path = backup_dir / CHECKPOINT_POINTER
    problems: list[str] = []
    newest_allowed = None  # skip checkpoints newer than a readable commit record: a kill interrupted them
    legacy = (backup_dir / LEGACY_WEIGHTS).exists() or (backup_dir / LEGACY_PREVIOUS_WEIGHTS).exists()
    if pointer_path.exists():
        try:
            pointer = json.loads(pointer_path.read_text())
            committed_epoch = int(pointer["epoch"])
            if "checkpoint" in pointer and not _CHECKPOINT_FILE.match(f"{pointer['checkpoint']}.json"):
                raise ValueError("not the name of a checkpoint")
        except (OSError, ValueError, KeyError, TypeError):
            problems.append(f"{pointer_path} is empty or truncated")
        else:
            legacy = "checkpoint" not in pointer
            if legacy:
                checkpoint, problem = _read_legacy_checkpoint(pointer_path, backup_dir / LEGACY_WEIGHTS)
            else:
                checkpoint, problem = _read_checkpoint(backup_dir / f"{pointer['checkpoint']}.json")
            if checkpoint is not None:
                return ResumePoint(checkpoint)
            problems.append(problem)
            newest_allowed = committed_epoch - 1
    if legacy:
        candidates = [lambda: _read_legacy_checkpoint(backup_dir / LEGACY_PREVIOUS_POINTER,
                                                      backup_dir / LEGACY_PREVIOUS_WEIGHTS)]
    else:
        records = []
        for path in backup_dir.glob("epoch-*.json") if backup_dir.is_dir() else ():
            match = _CHECKPOINT_FILE.match(path.name)
            if match and (newest_allowed is None or int(match.group(1)) <= newest_allowed):
                records.append((int(match.group(1)), path))
        candidates = [lambda path=path: _read_checkpoint(path) for _, path in sorted(records, reverse=True)]
    if candidates and not pointer_path.exists():  # killed before the first commit, or the record was deleted
        problems.append(f"{pointer_path} is missing")
    for read in candidates:
        checkpoint, problem = read()
        if checkpoint is not None:
            return ResumePoint(checkpoint, (
                f"{'; '.join(problems)}: continuing from the last whole checkpoint, {checkpoint.name} "
                f"(epoch {checkpoint.epoch})",
            ))
        problems.append(problem)
    if problems:
        raise TrainingError(
            f"Cannot resume {run_dir}: {problems[0]}, and no earlier whole checkpoint is left. Delete facetrip's "
            f"checkpoint files in {backup_dir} to train the run again from epoch 1."
        )
    return ResumePoint(None)


def restore_checkpoint(trainer, checkpoint: Checkpoint) -> None:
    """Load a checkpoint's weights and optimizer state into ``trainer`` (compiled, not yet fitted).

    Raises:
        TrainingError: the checkpoint does not fit this model (a config that changed).
    """
    if trainer.optimizer is not None and not trainer.optimizer.built:
        trainer.optimizer.build(trainer.trainable_variables)  # its variables must exist to be loaded
    try:
        trainer.load_weights(checkpoint.weights)
    except Exception as error:  # Keras raises many types for a file of another model
        raise TrainingError(
            f"Cannot load {checkpoint.weights} into this run's model: {type(error).__name__}: "
            f"{str(error).splitlines()[0][:200] if str(error) else ''}"
        ) from None


def finished_epochs(run_dir: Path) -> int | None:
    """The epochs of a run that finished (its metadata has the calibrated threshold), else None."""
    try:
        metadata = json.loads((Path(run_dir) / METADATA_FILE).read_text())
        return int(metadata["epochs_completed"]) if "threshold_source" in metadata else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def completed_epochs(run_dir: Path) -> int:
    """Epochs a run has completed: those of a finished run, else of the checkpoint a resume continues from.

    Raises:
        TrainingError: there are checkpoint files but none is whole.
    """
    finished = finished_epochs(run_dir)
    return finished if finished is not None else find_resume_point(run_dir).epoch


def load_resume_config(run_dir: str | Path) -> tuple[Config, list[str]]:
    """The config to resume ``run_dir`` with, and notes on what was repaired.

    That is its config.toml. When that is missing, empty or not valid TOML, the copy in
    the checkpoint is used and written back to config.toml. A config.toml that reads well
    but differs from the checkpoint's is refused: it was edited (or cut at a line end), and
    the checkpoint's weights belong to the config they were trained with.

    Args:
        run_dir: the run directory.

    Returns:
        (config, notes for the user).

    Raises:
        TrainingError: not a run, or its config cannot be recovered.
    """
    from facetrip.config import tomllib

    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise TrainingError(f"{run_dir} is not a facetrip run directory (no {CONFIG_FILE}).")
    finished = finished_epochs(run_dir)
    if finished is not None:
        raise TrainingError(f"{run_dir} already completed its {finished} epochs: nothing to resume.")
    checkpoint = find_resume_point(run_dir).checkpoint
    saved = checkpoint.config_toml if checkpoint is not None else None
    if not path.exists() and checkpoint is None:
        raise TrainingError(f"{run_dir} is not a facetrip run directory (no {CONFIG_FILE}).")
    try:
        text = path.read_text()
        if not text.strip():
            raise ConfigError(f"{path} is empty")
        config = Config.from_toml(path)
    except FileNotFoundError:
        problem = f"{path} is missing"
    except (OSError, UnicodeDecodeError):
        problem = f"{path} cannot be read"
    except ConfigError as error:
        problem = str(error).rstrip(".")
    else:
        if saved is not None and config != Config.from_dict(tomllib.loads(saved)):
            raise TrainingError(
                f"{path} differs from the config checkpoint {checkpoint.name} was trained with (edited, or cut short): "
                f"put the original back, or delete {path} to continue with the checkpoint's copy."
            )
        return config, []
    if saved is None:
        raise TrainingError(f"Cannot resume {run_dir}: {problem}, and no checkpoint holds a copy of the config.")
    atomic_write_text(path, saved)
    return Config.from_dict(tomllib.loads(saved)), [
        f"{problem}: continuing with the config saved in {checkpoint.name} (written back to {path})."
    ]


def _resume_split(split_path: Path, checkpoint: Checkpoint | None):
    """The identity split a resumed run trains on, and a note when split.json had to be repaired.

    With a checkpoint, its copy of the split is the one the weights were trained on:
    split.json is written back from it when missing, damaged or different. Without a
    checkpoint nothing was trained yet, so a missing or damaged split.json is drawn again.

    Returns:
        ``(IdentitySplit, None)``, ``(IdentitySplit, note)`` or ``(None, note or None)``: draw the split again.

    Raises:
        TrainingError: a checkpoint of facetrip 0.1 (no copy of the split) and a damaged split.json.
    """
    from facetrip.data import DataError, IdentitySplit

    try:
        on_disk, problem = IdentitySplit.load(split_path), None
    except FileNotFoundError:
        on_disk, problem = None, f"{split_path} is missing"
    except (OSError, ValueError, KeyError, TypeError, DataError):  # JSONDecodeError is a ValueError
        on_disk, problem = None, f"{split_path} is empty, truncated or damaged"
    if checkpoint is not None and checkpoint.split is not None:
        saved = IdentitySplit.from_dict(checkpoint.split)
        if on_disk == saved:
            return saved, None
        atomic_write_json(split_path, saved.to_dict())
        problem = problem or f"{split_path} differs from the split of {checkpoint.name}"
        return saved, f"{problem}: continuing with the split saved with {checkpoint.name} (written back to {split_path})."
    if on_disk is not None or problem.endswith("missing"):
        return on_disk, None
    if checkpoint is not None:
        raise TrainingError(f"Cannot resume: {problem}, and {checkpoint.name} holds no copy of the split.")
    return None, f"{problem}: no checkpoint was taken yet, so the identities are split again from the config's seed."


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
        lines = path.read_text().splitlines(keepends=True)
    except (OSError, UnicodeDecodeError):
        return [], []
    if not lines or not lines[0].endswith("\n"):
        return [], []
    columns = next(csv.reader([lines[0]]))
    if "epoch" not in columns:
        return [], []
    by_epoch: dict[int, dict[str, str]] = {}
    for line in lines[1:]:
        values = next(csv.reader([line]), [])
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


def is_facetrip_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a facetrip run: a readable config.toml, metadata or commit record of facetrip's."""
    try:
        Config.from_toml(run_dir / CONFIG_FILE)
        return True
    except ConfigError:
        pass
    for path, key in ((run_dir / METADATA_FILE, "facetrip_version"), (run_dir / BACKUP_DIR / CHECKPOINT_POINTER, "checkpoint")):
        try:
            if key in json.loads(path.read_text()):
                return True
        except (OSError, ValueError, TypeError):
            continue
    return False


def _files_training_writes(run_dir: Path) -> list[Path]:
    """The files training and its evaluation write in a run directory, whose old versions they replace."""
    fixed = [CONFIG_FILE, SPLIT_FILE, METADATA_FILE, MODEL_FILE, METRICS_FILE, CURVES_FILE, EVALUATION_FILE, ROC_PLOT_FILE]
    backup_dir = run_dir / BACKUP_DIR
    in_backup = [backup_dir / name for name in (CHECKPOINT_POINTER, LEGACY_WEIGHTS, LEGACY_PREVIOUS_WEIGHTS,
                                                LEGACY_PREVIOUS_POINTER)]
    if backup_dir.is_dir():
        in_backup += [path for path in backup_dir.iterdir() if _CHECKPOINT_FILE.match(path.name)]
    return [run_dir / name for name in fixed] + in_backup


def check_new_run_dir(run_dir: Path, overwrite: bool = False) -> None:
    """Refuse a run directory a new run could lose files in; reads only.

    A missing or empty folder is fine. A folder holding a run is refused unless
    ``overwrite``. Any other non-empty folder is refused unless ``overwrite``, and even then
    when it holds a file of a name training writes (facetrip did not write it, and would
    replace it).

    Args:
        run_dir: the intended run directory.
        overwrite: the user asked to train into it anyway.

    Raises:
        TrainingError: with the reason, in one line.
    """
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise TrainingError(f"{run_dir} is a file, not a folder: pick another --run-dir.")
    if not any(entry.name != LOCK_FILE for entry in run_dir.iterdir()):
        return
    if is_facetrip_run(run_dir):
        if not overwrite:
            raise TrainingError(f"{run_dir} already holds a run: resume it with --resume {run_dir}, train it again from "
                                f"the start with --overwrite, or pick another --run-dir.")
        return
    if not overwrite:
        raise TrainingError(f"{run_dir} is not empty and holds no facetrip run: pick another --run-dir, or give "
                            f"--overwrite to train into it anyway (files facetrip did not write are kept).")
    colliding = [path for path in _files_training_writes(run_dir) if path.exists()]
    if colliding:
        raise TrainingError(f"{colliding[0]} was not written by facetrip, and training into {run_dir} would replace it: "
                            f"move it away or pick another --run-dir.")


def _remove_previous_run(run_dir: Path) -> None:
    """Remove the files of the run in ``run_dir`` that a new run would not replace at once (--overwrite).

    Only facetrip's own files: its outputs and checkpoints, and the evaluations of other
    data sources; TensorBoard's logs/ and anything else stay.
    """
    if not is_facetrip_run(run_dir):
        return
    for path in [*_files_training_writes(run_dir), *run_dir.glob("metrics-*.json"), *run_dir.glob("roc-*.png")]:
        if path.is_file() and path.name != CONFIG_FILE:
            path.unlink()
    remove_checkpoints(run_dir / BACKUP_DIR)


def _callbacks_module():
    import keras

    class StopOnNonFiniteLoss(keras.callbacks.Callback):
        """Abort (raise) at the first NaN / Inf loss, before any checkpoint can store it."""

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                raise TrainingDiverged(
                    f"The loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}: training stopped and the "
                    f"last good checkpoint was kept. Lower the learning rate (--lr) and resume or retrain."
                )

    class LogLearningRate(keras.callbacks.Callback):
        """Put the current learning rate into the epoch logs (for TensorBoard and metrics.csv)."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    class ExportAtCheckpoints(keras.callbacks.Callback):
        """Replace model.keras atomically at each checkpoint, so a crash leaves a usable model."""

        def __init__(self, run_dir: Path, exported_model, write_metadata, schedule):
            super().__init__()
            self.run_dir = run_dir
            self.exported_model = exported_model
            self.write_metadata = write_metadata
            self.schedule = schedule

        def on_epoch_end(self, epoch, logs=None):
            if self.schedule.due(epoch):
                save_model_atomically(self.exported_model, self.run_dir / MODEL_FILE)
                self.write_metadata(epochs_completed=epoch + 1)

    class BackupAtCheckpoints(keras.callbacks.Callback):
        """Take a checkpoint (:func:`write_checkpoint`) at the epochs the schedule marks.

        Keras' BackupAndRestore writes its state files in place, so a kill during a write
        leaves a file a resume cannot read, and at the end it deletes the whole backup
        folder, whatever it held; :func:`train` restores and removes checkpoints itself.

        Args:
            schedule: the shared :class:`CheckpointSchedule`.
            backup_dir: the run's ``backup/`` folder.
            config_toml: the run's config, saved with every checkpoint.
            split: the run's identity split as a dict, likewise.
            previous_epoch: the epoch of the checkpoint training continues from (None: a new run).
        """

        def __init__(self, schedule, backup_dir: Path, config_toml: str, split: dict, previous_epoch: int | None = None):
            super().__init__()
            self.schedule = schedule
            self.backup_dir = backup_dir
            self.config_toml = config_toml
            self.split = split
            self.previous_epoch = previous_epoch

        def on_epoch_end(self, epoch, logs=None):
            if self.schedule.due(epoch):
                write_checkpoint(self.model, self.backup_dir, epoch + 1, self.config_toml, self.split, self.previous_epoch)
                self.previous_epoch = epoch + 1

    return StopOnNonFiniteLoss, LogLearningRate, ExportAtCheckpoints, BackupAtCheckpoints


class CheckpointSchedule:
    """Which epochs end with a checkpoint: the last one, and any ending ``seconds`` after the previous checkpoint.

    The answer for an epoch is decided once (by the first callback that asks) and then
    shared, so the export and the backup always agree.
    """

    def __init__(self, seconds: float, last_epoch: int, clock=None):
        import time

        self.seconds = float(seconds)
        self.last_epoch = int(last_epoch)
        self.clock = clock or time.monotonic
        self.previous = self.clock()
        self.decided: dict[int, bool] = {}

    def due(self, epoch: int) -> bool:
        if epoch not in self.decided:
            now = self.clock()
            self.decided[epoch] = epoch >= self.last_epoch or now - self.previous >= self.seconds
            if self.decided[epoch]:
                self.previous = now
        return self.decided[epoch]


def training_augmentation(config: Config):
    """The :class:`~facetrip.data.Augmentation` of ``config.augment``, or None when it is disabled."""
    from facetrip.data import Augmentation

    if not config.augment.enabled:
        return None
    return Augmentation(config.augment.flip, config.augment.max_shift, config.augment.brightness,
                        config.augment.contrast, config.augment.rotation, config.augment.erasing, config.augment.scale)


def prepare_run_dir(config: Config, run_dir: Path, overwrite: bool = False) -> None:
    """Make ``run_dir`` a new run and write the config it uses, refusing anything that could lose files.

    See :func:`check_new_run_dir` for what is refused. With ``overwrite`` the files of a
    run already there are removed first (only facetrip's own files).

    Args:
        config: the run's configuration.
        run_dir: the run directory (created if missing).
        overwrite: train into a folder that holds a run or other files.

    Raises:
        TrainingError: the folder is refused or cannot be created; RunError: another process trains into it.
    """
    run_dir = Path(run_dir)
    check_new_run_dir(run_dir, overwrite)  # before anything is written, the lock file included
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrainingError(f"Cannot create the run directory {run_dir}: {error.strerror}.") from None
    with run_lock(run_dir):
        check_new_run_dir(run_dir, overwrite)  # again, now that no other process can be writing
        if overwrite:
            _remove_previous_run(run_dir)
        atomic_write_text(run_dir / CONFIG_FILE, config.to_toml())


def train(config: Config, run_dir: str | Path, callbacks: Sequence[Any] = (), resume: bool = False) -> dict[str, Any]:
    """Train an embedding model into ``run_dir`` and return its metadata.

    Args:
        config: the configuration (already saved in ``run_dir`` by :func:`prepare_run_dir`).
        run_dir: the run directory.
        callbacks: extra Keras callbacks (the CLI's progress display).
        resume: continue from the last whole checkpoint in ``run_dir`` (:func:`find_resume_point`).

    Returns:
        The metadata written to ``metadata.json``.

    Raises:
        TrainingDiverged: the loss became NaN / Inf.
        TrainingError, DataError: the config or data cannot be trained on.
        RunError: another process is training into ``run_dir``.
    """
    with run_lock(run_dir):
        return _train(config, Path(run_dir), callbacks, resume)


def _train(config: Config, run_dir: Path, callbacks: Sequence[Any], resume: bool) -> dict[str, Any]:
    """:func:`train`, with the run directory locked."""
    import keras

    from facetrip.data import PKSampler, load_faces, pk_dataset, split_identities
    from facetrip.data.synthetic import blended_identities
    from facetrip.losses import TripletLoss, resolve_metric, resolve_strategy, triplet_metrics
    from facetrip.model_input import model_input_metadata, prepare_faces
    from facetrip.models import PRETRAINED_BACKBONES, build_embedding_model, resolve_backbone
    from facetrip.models.tta import with_test_time_augmentation

    from facetrip.trainer import EmbeddingTrainer, phase_callback

    offline = config.loss.strategy.lower() == OFFLINE
    try:
        strategy = OFFLINE if offline else resolve_strategy(config.loss.strategy)
    except ValueError:
        raise TrainingError(
            f"Unknown strategy {config.loss.strategy!r}: choose one of {', '.join((*ONLINE_STRATEGIES, OFFLINE))}."
        ) from None
    try:
        metric = resolve_metric(config.loss.metric)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    if config.train.precision not in ("float32", "bf16"):
        raise TrainingError(f"precision must be float32 or bf16, not {config.train.precision!r}.")
    if config.model.tta_shift < 0:
        raise TrainingError(f"model.tta_shift must be 0 or more pixels, not {config.model.tta_shift}.")
    if not 0.0 < config.train.target_far < 1.0:
        raise TrainingError(f"train.target_far must lie strictly between 0 and 1, not {config.train.target_far}.")
    if config.augment.blended_identities < 0:
        raise TrainingError(f"augment.blended_identities must be 0 or more, not {config.augment.blended_identities}.")

    try:
        backbone = resolve_backbone(config.model.backbone)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    if backbone == "face_resnet":
        from facetrip.models.face_resnet import face_resnet_weights_path

        try:
            face_resnet_weights_path()  # a one-line error naming what to install, before any data is loaded
        except ValueError as error:
            raise TrainingError(str(error)) from None

    if config.train.epochs < 0:
        raise TrainingError(f"train.epochs must be 0 or more, not {config.train.epochs}.")
    if resume and finished_epochs(run_dir) is not None:
        raise TrainingError(f"{run_dir} already completed its {finished_epochs(run_dir)} epochs: nothing to resume.")
    resume_point = find_resume_point(run_dir) if resume else ResumePoint(None)  # before the data: errors come fast
    for note in resume_point.notes:
        logger.warning("%s", note)
    start_epoch = resume_point.epoch

    faces = load_faces(config.data.source, data_dir=config.data.data_dir or None)
    if config.data.face_chips:
        logger.info("Aligning the faces of %d photos (cached after the first time) ...", len(faces))
    faces, chip_report = prepare_faces(faces, config.data.face_chips)
    if chip_report is not None:
        logger.info("%s", chip_report.summary())
    split_path = run_dir / SPLIT_FILE
    split, split_note = _resume_split(split_path, resume_point.checkpoint) if resume else (None, None)
    if split_note:
        logger.warning("%s", split_note)
    if split is None:
        split = split_identities(faces.identity_names, dev=config.split.dev, test=config.split.test, seed=config.split.seed)
        atomic_write_json(split_path, split.to_dict())
    train_faces = faces.restricted_to(split.train)
    if config.augment.enabled and config.augment.blended_identities:
        train_faces = blended_identities(train_faces, config.augment.blended_identities, seed=config.train.seed)
    elif config.augment.blended_identities:
        logger.warning("augment.blended_identities = %d is ignored: augmentation is off (augment.enabled = false).",
                       config.augment.blended_identities)
    sampler = PKSampler(
        train_faces.labels, config.sampler.identities_per_batch, config.sampler.images_per_identity, seed=config.train.seed
    )
    image_size = tuple(config.data.image_size)

    augmentation = training_augmentation(config)

    previous_policy = keras.mixed_precision.global_policy()
    keras.utils.set_random_seed(config.train.seed)
    try:
        if config.train.precision == "bf16":
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        model = build_embedding_model(
            input_shape=(*image_size, config.data.channels),
            embedding_dim=config.model.embedding_dim,
            backbone=backbone,
            width=config.model.width,
            dropout=config.model.dropout,
            head=config.model.head,
            freeze=config.model.freeze,
        )
    except (ValueError, OSError) as error:  # an unknown head or freeze level, a wrong input size, unreadable weights
        raise TrainingError(str(error)) from None
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    # WiSE-FT: the saved weights lie this share of the way from the pretrained ones to the fine-tuned ones.
    interpolation = config.train.weight_interpolation if backbone in PRETRAINED_BACKBONES else 1.0
    # Taken before any checkpoint is restored: the network as built is the pretrained end, on resume too.
    pretrained_weights = model.get_weights() if interpolation < 1.0 and config.train.epochs > 0 else None
    with_tta = config.model.flip_tta or config.model.tta_shift > 0
    exported_model = with_test_time_augmentation(model, config.model.flip_tta, config.model.tta_shift) if with_tta else model
    trainer = EmbeddingTrainer(
        model, train_faces.labels, TripletLoss(strategy=strategy, margin=config.loss.margin, metric=metric),
        statistics=triplet_metrics(margin=config.loss.margin, metric=metric), warmup_epochs=config.train.warmup_epochs,
        classification_weight=config.train.classification_weight,
    )

    trainer.compile(optimizer=build_optimizer(config, sampler.batches_per_epoch))
    if resume_point.checkpoint is not None:
        restore_checkpoint(trainer, resume_point.checkpoint)
    if backbone in PRETRAINED_BACKBONES and start_epoch == 0 and config.train.epochs > 0:
        trainer.initialise_centres(embed_faces(model, train_faces, image_size, config.data.channels), train_faces.labels)

    def write_metadata(**extra):
        metadata = {
            "format": METADATA_FORMAT,
            "facetrip_version": __version__,
            "keras_version": keras.__version__,
            "source": faces.source,
            "image_size": list(image_size),
            "channels": config.data.channels,
            "embedding_dim": config.model.embedding_dim,
            "backbone": backbone,
            "freeze": config.model.freeze,
            **model_input_metadata(config.data.face_chips, chip_report),
            "flip_tta": config.model.flip_tta,
            "tta_shift": config.model.tta_shift,
            "strategy": strategy,
            "metric": metric,
            "margin": config.loss.margin,
            "epochs": config.train.epochs,
            "weight_interpolation": interpolation,
            "split": split.to_dict(),
            **extra,
        }
        previous = run_dir / METADATA_FILE
        try:
            kept = json.loads(previous.read_text())
        except (OSError, ValueError):  # none yet, or damaged: nothing worth keeping
            kept = {}
        if isinstance(kept, dict):
            kept_keys = ("threshold", "threshold_source", "calibration", "calibration_different_distances", "dev")
            metadata = {**{key: kept[key] for key in kept_keys if key in kept}, **metadata}
        atomic_write_json(previous, metadata)
        return metadata

    stop_on_nan, log_learning_rate, export_at_checkpoints, backup_at_checkpoints = _callbacks_module()
    # The checkpoint is restored once, above, so offline training (one fit per epoch) keeps to the schedule too.
    schedule = CheckpointSchedule(config.train.checkpoint_seconds, last_epoch=config.train.epochs - 1)
    # Order matters at the end of an epoch: logs and the export first, the backup that marks
    # the epoch as done last, so a kill in between repeats the epoch rather than losing its row.
    if resume:
        trim_metrics(run_dir / METRICS_FILE, start_epoch)  # rows of the epochs about to be repeated, or cut short
    all_callbacks = [
        phase_callback(trainer),
        stop_on_nan(),
        log_learning_rate(),
        keras.callbacks.CSVLogger(str(run_dir / METRICS_FILE), append=True),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / LOGS_DIR), write_graph=False, profile_batch=0),
        export_at_checkpoints(run_dir, exported_model, write_metadata, schedule),
        backup_at_checkpoints(schedule, run_dir / BACKUP_DIR, config.to_toml(), split.to_dict(),
                              previous_epoch=resume_point.checkpoint.epoch if resume_point.checkpoint else None),
        *callbacks,
    ]
    if config.train.epochs == 0:  # the network as it is, for comparisons: exported, calibrated, evaluated
        save_model_atomically(exported_model, run_dir / MODEL_FILE)
    elif start_epoch >= config.train.epochs:  # killed after the last checkpoint, before the end: only the end is left
        save_model_atomically(exported_model, run_dir / MODEL_FILE)
    elif offline:
        _fit_offline(trainer, train_faces, sampler, config, metric, start_epoch, image_size, augmentation, all_callbacks)
    else:
        dataset = pk_dataset(
            train_faces, sampler, image_size, config.data.channels, epochs=range(start_epoch, config.train.epochs),
            augmentation=augmentation,
        )
        trainer.fit(dataset, initial_epoch=start_epoch, epochs=config.train.epochs,
                    steps_per_epoch=sampler.batches_per_epoch, callbacks=all_callbacks, verbose=0, shuffle=False)

    if pretrained_weights is not None:
        from facetrip.models.weight_interpolation import interpolate_model

        logger.info("Saving the weights %.0f%% of the way from the pretrained to the fine-tuned network "
                    "(train.weight_interpolation = %g).", 100 * interpolation, interpolation)
        interpolate_model(model, pretrained_weights, interpolation)
        save_model_atomically(exported_model, run_dir / MODEL_FILE)
    calibration = calibrate_threshold(exported_model, faces, split, config, metric)
    metadata = write_metadata(epochs_completed=config.train.epochs, **calibration)
    plot_metrics(run_dir)
    remove_checkpoints(run_dir / BACKUP_DIR)  # last: a kill before this resumes at the calibration
    return metadata


OPTIMIZERS = ("lamb", "adamw")


def build_optimizer(config: Config, steps_per_epoch: int):
    """The optimizer of ``train.optimizer`` on :func:`learning_rate_schedule`, with decoupled weight decay.

    ``lamb`` (You et al., 2020) scales each layer's Adam step by ||w|| / ||step||, so every
    layer changes by about the learning rate *relative to its own size*. The pretrained
    face ResNet needs that: its convolution kernels are small (mean |w| 4e-4 to 1e-2,
    with batch-norm scales of 3 to 14 folded into the layer after them), and AdamW's
    absolute steps of 1e-4 changed them by up to a quarter per step and collapsed every
    embedding onto one point within two epochs on ORL. ``adamw`` suits from-scratch training.
    """
    import keras

    schedule = learning_rate_schedule(config, steps_per_epoch)
    name = config.train.optimizer.lower()
    if name == "lamb":
        return keras.optimizers.Lamb(learning_rate=schedule, weight_decay=config.train.weight_decay or None)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.train.weight_decay)
    raise TrainingError(f"Unknown optimizer {config.train.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}.")


def learning_rate_schedule(config: Config, steps_per_epoch: int):
    """Linear warm-up over ``train.lr_warmup_epochs`` to ``train.learning_rate``, then cosine decay to 1% of it.

    The warm-up protects pretrained weights from the first, largest updates of a freshly
    initialised head and classifier; from-scratch training uses none.
    """
    import keras

    total_steps = max(1, config.train.epochs * steps_per_epoch)
    warmup_steps = min(config.train.lr_warmup_epochs * steps_per_epoch, total_steps - 1)
    if warmup_steps <= 0:
        return keras.optimizers.schedules.CosineDecay(config.train.learning_rate, decay_steps=total_steps, alpha=0.01)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=total_steps - warmup_steps, alpha=0.01,
        warmup_target=config.train.learning_rate, warmup_steps=warmup_steps,
    )


def offline_triplets_per_batch(sampler) -> int:
    """Triplets per offline batch: about as many images (3 per triplet) as an online P x K batch.

    An even number of triplets (an even batch of images): introduced when TF 2.21's oneDNN
    CPU kernels crashed the process training the width-8 default model on batches of 63
    images (64 // 3 = 21 triplets). The crash was in the strided 1x1 shortcut convolution,
    which the model now computes as subsampling plus a 1x1 convolution, so odd batches
    train too; the count stays even so that offline results remain comparable.
    """
    return max(1, sampler.batch_size // 6 * 2)


def _fit_offline(trainer, faces, sampler, config: Config, metric: str, start_epoch: int, image_size, augmentation, callbacks):
    """Offline mining: at the start of each epoch embed the training split, mine, train on the triplets.

    Each epoch has as many steps as an online epoch; each step a batch of B triplets stacked
    as [anchors; positives; negatives] (3B images) for the naive triplet loss.
    """
    from facetrip.data.pipeline import indexed_batches

    import numpy as np

    per_batch = offline_triplets_per_batch(sampler)
    steps = sampler.batches_per_epoch
    given = triplets_from_file(config.loss.offline_triplets, faces) if config.loss.offline_triplets else None
    for epoch in range(start_epoch, config.train.epochs):
        seed = config.train.seed * 100_003 + epoch
        if epoch == 0 and given is not None and len(given):
            triplets = given[np.random.default_rng(seed).integers(0, len(given), steps * per_batch)]
        else:
            embeddings = embed_faces(trainer.embedder, faces, image_size, config.data.channels)
            triplets = select_offline_triplets(embeddings, faces.labels, config.loss.margin, metric, steps * per_batch, seed)
        stacked = triplets.reshape(steps, per_batch, 3).transpose(0, 2, 1).reshape(steps, 3 * per_batch)  # [a; p; n]
        dataset = indexed_batches(faces, lambda stacked=stacked, epoch=epoch: [(epoch, stacked)], steps, 3 * per_batch,
                                  image_size, config.data.channels, augmentation, seed=config.train.seed)
        trainer.fit(dataset, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps, callbacks=callbacks,
                    verbose=0, shuffle=False)


def triplets_from_file(path: str, faces):
    """Triplets saved by ``facetrip mine`` as indices into ``faces``, matched by image file name."""
    import numpy as np

    from facetrip.mining import load_triplets

    try:
        saved = load_triplets(path)
    except (FileNotFoundError, ValueError) as error:
        raise TrainingError(str(error)) from None
    if saved.file_names is None:
        raise TrainingError(f"{path} holds no image names, so its triplets cannot be matched to the training images.")
    position = {name: index for index, name in enumerate(faces.file_names)}
    names = saved.file_names[saved.triplets]  # (M, 3)
    missing = {name for name in names.ravel() if name not in position}
    if missing:
        raise TrainingError(
            f"{len(missing)} images of {path} are not training images of this run (e.g. {sorted(missing)[0]}): "
            f"mine the train split of a run with the same data and split."
        )
    return np.vectorize(position.__getitem__, otypes=[np.int64])(names).reshape(-1, 3)


def select_offline_triplets(embeddings, labels, margin, metric: str, count: int, seed: int):
    """``count`` (anchor, positive, negative) index triplets for one offline epoch.

    Hard and semi-hard triplets mined from the current embeddings (with the soft margin,
    hard ones only), drawn with replacement when fewer than ``count`` exist; random
    valid triplets when none does.

    Returns:
        (count, 3) int64 array.
    """
    import numpy as np

    from facetrip.mining import mine_triplets

    soft = isinstance(margin, str)
    mined = mine_triplets(embeddings, labels, 0.0 if soft else margin, metric=metric,
                          categories=("hard",) if soft else ("hard", "semi_hard"), max_triplets=count, seed=seed).triplets
    rng = np.random.default_rng(seed)
    if len(mined) >= count:
        return mined[:count]
    if len(mined):
        return np.concatenate([mined, mined[rng.integers(0, len(mined), count - len(mined))]])
    return random_valid_triplets(labels, count, rng)


def random_valid_triplets(labels, count: int, rng):
    """``count`` uniformly drawn valid triplets (anchors among images that have a positive)."""
    import numpy as np

    labels = np.asarray(labels).reshape(-1)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    anchors = rng.choice(np.flatnonzero(counts[inverse] >= 2), count)  # (count,)
    triplets = []
    for anchor in anchors:
        same = np.flatnonzero(labels == labels[anchor])
        positive = rng.choice(same[same != anchor])
        negative = rng.choice(np.flatnonzero(labels != labels[anchor]))
        triplets.append((anchor, positive, negative))
    return np.asarray(triplets, np.int64).reshape(count, 3)


def embed_faces(model, faces, image_size, channels, batch_size: int = 128):
    """(N, D) embeddings of every image of ``faces``, in order."""
    import numpy as np

    from facetrip.data import image_dataset

    dataset = image_dataset(faces, tuple(image_size), channels, batch_size=batch_size).map(lambda images, labels: images)
    return np.asarray(model.predict(dataset, verbose=0), np.float32)


def calibrate_threshold(model, faces, split, config: Config, metric: str) -> dict[str, Any]:
    """The verification threshold for ``config.train.target_far`` on identities the model never trained on.

    Those are the dev identities, or with ``train.epochs = 0`` the dev and training
    identities; the training identities when there are no dev identities.

    All pairs of those identities' images are embedded and the threshold is
    :func:`facetrip.calibration.calibrate_to_far` of their distances: the largest with
    ``#{different pairs, d <= t} / N <= target_far``, or a normal tail fit when there are
    too few different pairs for the target (``calibration["fallback"]`` says so).

    Returns:
        ``threshold``, ``threshold_source`` (``dev``; ``train`` without dev identities;
        ``dev_and_train`` for a run without training), ``calibration`` (the
        calibration's dict), ``calibration_different_distances`` (a sorted sample of the
        different-pair distances, :func:`facetrip.calibration.saved_distances`, for
        ``verify --far``) and ``<source>``: the ROC summary of those pairs
        (:func:`facetrip.evaluation.verification_summary`). Only ``threshold`` (None) and
        ``threshold_source`` when the identities give no same or no different pairs.
    """
    from facetrip.evaluation import pair_distances, verification_summary
    from facetrip.evaluation.calibration import SAVED_DISTANCES_KEY, calibrate_to_far, saved_distances

    if config.train.epochs == 0:
        # The network never saw the training identities either: all of them calibrate, and
        # many more pairs of identities make the false-accept estimate far less noisy.
        source, identities = "dev_and_train", (*split.dev, *split.train)
    elif len(split.dev) >= 2:
        source, identities = "dev", split.dev
    else:
        source, identities = "train", split.train
    subset = faces.restricted_to(identities)
    embeddings = embed_faces(model, subset, config.data.image_size, config.data.channels)
    distances, same = pair_distances(embeddings, subset.labels, metric)
    try:
        summary = verification_summary(distances, same)
    except ValueError:
        logger.warning("Could not calibrate a threshold: the %s identities give no same/different pairs.", source)
        return {"threshold": None, "threshold_source": source}
    calibration = calibrate_to_far(distances, same, config.train.target_far, pairs_name=source.replace("_", " "))
    return {
        "threshold": calibration["threshold"],
        "threshold_source": source,
        "calibration": calibration,
        SAVED_DISTANCES_KEY: saved_distances(distances[~same]),
        source: summary,
    }


def plot_metrics(run_dir: Path) -> None:
    """metrics.csv as training_curves.png (loss, fraction of positive triplets, distances, learning rate)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns, rows = metric_rows(path)  # a row cut short by a kill is left out
    if not rows:
        return
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
    atomic_write_bytes(run_dir / CURVES_FILE, image.getvalue())


def _number(value: str) -> float:
    """A metrics.csv value as a float; NaN for a missing one (CSVLogger writes ``NA``)."""
    try:
        return float(value)
    except ValueError:
        return math.nan
