"""Resume checkpoints in a run's ``backup/`` folder: written whole, committed, found again after a crash.

A checkpoint (:func:`write_checkpoint`) holds the trainer's weights and optimizer state,
the config and the split. Every file of one is written whole under a fresh temporary
name, flushed and renamed into place, and a checkpoint counts once
``backup/training_metadata.json`` names it; the previous one is kept as a fallback. So
``--resume`` after a crash or ``kill -9`` at any moment continues from the last committed
checkpoint (:func:`find_resume_point`), exactly as an uninterrupted run would have (the
data order and augmentation are functions of the seed and the epoch), and names the
checkpoint it continues from. A checkpoint is taken at the end of an epoch once
``train.checkpoint_seconds`` have passed since the previous one, and after the last epoch
(:class:`CheckpointSchedule`): on a small data set an epoch takes about a second and
saving after every one doubled the training time.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from facetrip.runs import BACKUP_DIR, METADATA_FILE, atomic_write_json, fsync_directory, write_atomically
from facetrip.runs.files import file_sha256
from facetrip.runs.metadata import METADATA_SIZE_LIMIT
from facetrip.training.errors import TrainingError
from facetrip.untrusted_files import TOML_SIZE_LIMIT, UntrustedFileError, read_untrusted_json

# A checkpoint record holds the run's config and identity split: some 20 MB for 10^6 identities.
_RECORD_SIZE_LIMIT = 64 << 20
# The commit record names a checkpoint and an epoch in some 100 bytes.
_POINTER_SIZE_LIMIT = 64 << 10


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


def checkpoint_files(backup_dir: Path) -> list[Path]:
    """Every file of ``backup_dir`` that facetrip's checkpoints write (by name; they may not exist).

    Args:
        backup_dir: the run's ``backup/`` folder.

    Returns:
        The commit record, the legacy state files and the ``epoch-NNNN`` checkpoint files present.
    """
    fixed = [backup_dir / name for name in (CHECKPOINT_POINTER, LEGACY_WEIGHTS, LEGACY_PREVIOUS_WEIGHTS,
                                            LEGACY_PREVIOUS_POINTER)]
    if not backup_dir.is_dir():
        return fixed
    return fixed + [path for path in backup_dir.iterdir() if _CHECKPOINT_FILE.match(path.name)]


def _read_json(path: Path, max_bytes: int = _RECORD_SIZE_LIMIT):
    """A small JSON record of the run's backup folder (or its metadata), read as an untrusted file.

    Raises:
        FileNotFoundError: there is no such file.
        UntrustedFileError: any other reason it cannot be read (a ``ValueError``).
    """
    try:
        return read_untrusted_json(path, max_bytes, "training record")
    except UntrustedFileError as error:
        if error.reason == "missing":
            raise FileNotFoundError(2, "No such file", str(path)) from None
        raise


def _read_checkpoint(record_path: Path) -> tuple[Checkpoint | None, str]:
    """The checkpoint ``record_path`` describes if it is whole, else None and why not."""
    try:
        record = _read_json(record_path)
        epoch, weights = int(record["epoch"]), record_path.parent / str(record["weights"])
        expected_bytes, expected_sha256 = int(record["bytes"]), str(record["sha256"])
        if not _CHECKPOINT_FILE.match(weights.name) or str(record["weights"]) != weights.name:
            raise ValueError("not the name of a checkpoint's weights in the backup folder")
    except FileNotFoundError:
        return None, f"{record_path} is missing"
    except (OSError, ValueError, KeyError, TypeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, f"{record_path} is empty or truncated"
    if record.get("format") != CHECKPOINT_FORMAT:
        return None, f"{record_path} has an unknown format {record.get('format')!r}"
    config = record.get("config")
    if not (config is None or isinstance(config, str) and len(config) <= TOML_SIZE_LIMIT) \
            or not _is_split_record(record.get("split")):
        return None, f"{record_path} is damaged (its config or split is not what facetrip writes)"
    if not weights.is_file():
        return None, f"{weights} is missing"
    if weights.stat().st_size != expected_bytes or file_sha256(weights) != expected_sha256:
        return None, f"{weights} is truncated or damaged (it does not match {record_path.name})"
    return Checkpoint(epoch, weights, record.get("config"), record.get("split")), ""


def _is_split_record(split) -> bool:
    """Whether a checkpoint's copy of the split is absent or an identity split as facetrip writes it."""
    if split is None:
        return True
    from facetrip.data.splits import SPLITS

    return (isinstance(split, dict) and all(isinstance(split.get(part), list)
                                            and all(isinstance(name, str) for name in split[part]) for part in SPLITS)
            and isinstance(split.get("seed"), int) and not isinstance(split.get("seed"), bool))


def _read_legacy_checkpoint(pointer_path: Path, weights: Path) -> tuple[Checkpoint | None, str]:
    """A checkpoint of Keras' BackupAndRestore (facetrip 0.1), if its files can be read."""
    try:
        epoch = int(_read_json(pointer_path, _POINTER_SIZE_LIMIT)["epoch"])
    except FileNotFoundError:
        return None, f"{pointer_path} is missing"
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{pointer_path} is empty or truncated"
    if not weights.is_file():
        return None, f"{weights} is missing"
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
            pointer = _read_json(pointer_path, _POINTER_SIZE_LIMIT)
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


def holds_classifier(weights_path: str | Path) -> bool:
    """Whether a trainer's checkpoint holds classification centres: two variables of the trainer's own, not one.

    A run whose classification term is off has none; checkpoints written before a trainer
    left its classifier out in that case hold one, and are resumed with it.
    """
    import h5py

    try:
        with h5py.File(weights_path, "r") as stored:
            return len(stored["vars"]) == 2
    except (OSError, KeyError, TypeError):  # not a weights file: restoring it says so
        return False


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


def finished_epochs(run_dir: Path) -> int | None:
    """The epochs of a run that finished (its metadata has the calibrated threshold), else None."""
    try:
        metadata = _read_json(Path(run_dir) / METADATA_FILE, METADATA_SIZE_LIMIT)
        return int(metadata["epochs_completed"]) if "threshold_source" in metadata else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
