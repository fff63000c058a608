"""The Keras callbacks of a training run: phases, NaN stop, learning-rate logging, export and checkpoints.

This module imports Keras at its top; :mod:`facetrip.training.run` imports it only when a
run starts, so ``facetrip --help`` stays fast.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras

from facetrip.runs import MODEL_FILE, save_model_atomically
from facetrip.training.checkpoints import write_checkpoint
from facetrip.training.errors import TrainingDiverged


class SetTrainingPhase(keras.callbacks.Callback):
    """Set the trainer's loss weights of each epoch (classification warm-up, then triplets) before it starts.

    Args:
        trainer: the :class:`~facetrip.training.embedding_trainer.EmbeddingTrainer` being fitted.
    """

    def __init__(self, trainer):
        super().__init__()
        self.trainer = trainer

    def on_epoch_begin(self, epoch, logs=None):
        self.trainer.set_epoch(epoch)


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
