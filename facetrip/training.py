"""The training workflow: data, model, loss and Keras callbacks, checkpoints, export.

Online strategies (batch_all, batch_hard, semi_hard) run through ``model.fit`` on P x K
batches with :class:`~facetrip.losses.TripletLoss`, so the train step is Keras' own
(stateless per step, ready for a ``tf.distribute`` strategy). Checkpoints are Keras'
``BackupAndRestore`` (double-buffered), so ``--resume`` after a crash or ``kill -9``
continues from the last checkpointed epoch; the exported ``model.keras`` and metadata are
replaced atomically at the same moments. A checkpoint is taken at the end of an epoch
once ``train.checkpoint_seconds`` have passed since the previous one, and after the last
epoch: on a small data set an epoch takes about a second and saving after every one
doubled the training time. Epochs after the last checkpoint are repeated on resume (and
logged again in metrics.csv).
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Sequence

from facetrip import __version__
from facetrip.config import Config
from facetrip.runs import (
    BACKUP_DIR,
    CONFIG_FILE,
    LOGS_DIR,
    METADATA_FILE,
    METADATA_FORMAT,
    METRICS_FILE,
    MODEL_FILE,
    SPLIT_FILE,
    atomic_write_json,
    atomic_write_text,
    save_model_atomically,
)

logger = logging.getLogger(__name__)

ONLINE_STRATEGIES = ("batch_all", "batch_hard", "semi_hard")
OFFLINE = "offline"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingError(ValueError):
    """A configuration or run directory that cannot be trained: one line saying why."""


def completed_epochs(run_dir: Path) -> int:
    """Epochs a run has completed, from its Keras backup (0 for a fresh run)."""
    import json

    metadata = Path(run_dir) / BACKUP_DIR / "training_metadata.json"
    if metadata.is_file():
        return int(json.loads(metadata.read_text()).get("epoch", 0))
    finished = Path(run_dir) / METADATA_FILE
    if finished.is_file():
        return int(json.loads(finished.read_text()).get("epochs_completed", 0))
    return 0


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

    class BackupAtCheckpoints(keras.callbacks.BackupAndRestore):
        """Keras' BackupAndRestore, saving only at the epochs the schedule marks as checkpoints."""

        def __init__(self, schedule, **kwargs):
            super().__init__(**kwargs)
            self.schedule = schedule

        def on_epoch_end(self, epoch, logs=None):
            if self.schedule.due(epoch):
                super().on_epoch_end(epoch, logs)

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


def prepare_run_dir(config: Config, run_dir: Path) -> None:
    """Write the config a new run uses; refuse a directory that already holds a run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / CONFIG_FILE).exists():
        raise TrainingError(f"{run_dir} already holds a run: resume it with --resume {run_dir}, or pick another --run-dir.")
    atomic_write_text(run_dir / CONFIG_FILE, config.to_toml())


def train(config: Config, run_dir: str | Path, callbacks: Sequence[Any] = (), resume: bool = False) -> dict[str, Any]:
    """Train an embedding model into ``run_dir`` and return its metadata.

    Args:
        config: the configuration (already saved in ``run_dir`` by :func:`prepare_run_dir`).
        run_dir: the run directory.
        callbacks: extra Keras callbacks (the CLI's progress display).
        resume: continue from the last completed epoch in ``run_dir``.

    Returns:
        The metadata written to ``metadata.json``.

    Raises:
        TrainingDiverged: the loss became NaN / Inf.
        TrainingError, DataError: the config or data cannot be trained on.
    """
    import keras

    from facetrip.data import IdentitySplit, PKSampler, load_faces, pk_dataset, split_identities
    from facetrip.data.synthetic import blended_identities
    from facetrip.losses import TripletLoss, resolve_metric, resolve_strategy, triplet_metrics
    from facetrip.model_input import model_input_metadata, prepare_faces
    from facetrip.models import PRETRAINED_BACKBONES, build_embedding_model, resolve_backbone
    from facetrip.models.tta import with_test_time_augmentation

    from facetrip.trainer import EmbeddingTrainer, phase_callback

    run_dir = Path(run_dir)
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

    faces = load_faces(config.data.source, data_dir=config.data.data_dir or None)
    if config.data.face_chips:
        logger.info("Aligning the faces of %d photos (cached after the first time) ...", len(faces))
    faces, chip_report = prepare_faces(faces, config.data.face_chips)
    if chip_report is not None:
        logger.info("%s", chip_report.summary())
    split_path = run_dir / SPLIT_FILE
    if resume and split_path.is_file():
        split = IdentitySplit.load(split_path)
    else:
        split = split_identities(faces.identity_names, dev=config.split.dev, test=config.split.test, seed=config.split.seed)
        split.save(split_path)
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
    start_epoch = completed_epochs(run_dir) if resume else 0
    if config.train.epochs < 0:
        raise TrainingError(f"train.epochs must be 0 or more, not {config.train.epochs}.")
    if resume and start_epoch >= config.train.epochs:
        raise TrainingError(f"{run_dir} already completed its {config.train.epochs} epochs: nothing to resume.")

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
    with_tta = config.model.flip_tta or config.model.tta_shift > 0
    exported_model = with_test_time_augmentation(model, config.model.flip_tta, config.model.tta_shift) if with_tta else model
    trainer = EmbeddingTrainer(
        model, train_faces.labels, TripletLoss(strategy=strategy, margin=config.loss.margin, metric=metric),
        statistics=triplet_metrics(margin=config.loss.margin, metric=metric), warmup_epochs=config.train.warmup_epochs,
        classification_weight=config.train.classification_weight,
    )

    trainer.compile(optimizer=build_optimizer(config, sampler.batches_per_epoch))
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
            "split": split.to_dict(),
            **extra,
        }
        previous = run_dir / METADATA_FILE
        if previous.is_file():
            import json

            kept = json.loads(previous.read_text())
            kept_keys = ("threshold", "threshold_source", "calibration", "calibration_different_distances", "dev")
            metadata = {**{key: kept[key] for key in kept_keys if key in kept}, **metadata}
        atomic_write_json(previous, metadata)
        return metadata

    stop_on_nan, log_learning_rate, export_at_checkpoints, backup_at_checkpoints = _callbacks_module()
    # Offline training calls fit once per epoch and each call restores the backup: checkpoint every epoch.
    schedule = CheckpointSchedule(0.0 if offline else config.train.checkpoint_seconds, last_epoch=config.train.epochs - 1)
    # Order matters at the end of an epoch: logs and the export first, the backup that marks
    # the epoch as done last, so a kill in between repeats the epoch rather than losing its row.
    all_callbacks = [
        phase_callback(trainer),
        stop_on_nan(),
        log_learning_rate(),
        keras.callbacks.CSVLogger(str(run_dir / METRICS_FILE), append=True),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / LOGS_DIR), write_graph=False, profile_batch=0),
        export_at_checkpoints(run_dir, exported_model, write_metadata, schedule),
        # Offline training calls fit once per epoch: keep the backup between the calls.
        backup_at_checkpoints(schedule, backup_dir=str(run_dir / BACKUP_DIR), double_checkpoint=True,
                              delete_checkpoint=not offline),
        *callbacks,
    ]
    if config.train.epochs == 0:  # the network as it is, for comparisons: exported, calibrated, evaluated
        save_model_atomically(exported_model, run_dir / MODEL_FILE)
    elif offline:
        _fit_offline(trainer, train_faces, sampler, config, metric, start_epoch, image_size, augmentation, all_callbacks)
        shutil.rmtree(run_dir / BACKUP_DIR, ignore_errors=True)
    else:
        dataset = pk_dataset(
            train_faces, sampler, image_size, config.data.channels, epochs=range(start_epoch, config.train.epochs),
            augmentation=augmentation,
        )
        trainer.fit(dataset, epochs=config.train.epochs, steps_per_epoch=sampler.batches_per_epoch, callbacks=all_callbacks,
                    verbose=0, shuffle=False)

    calibration = calibrate_threshold(exported_model, faces, split, config, metric)
    metadata = write_metadata(epochs_completed=config.train.epochs, **calibration)
    plot_metrics(run_dir)
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
    from facetrip.calibration import SAVED_DISTANCES_KEY, calibrate_to_far, saved_distances
    from facetrip.evaluation import pair_distances, verification_summary

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

    with path.open() as handle:
        rows = list(csv.DictReader(handle))
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
            if key in rows[0]:
                axis.plot(epochs, [float(row[key]) for row in rows], label=key)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        if len(keys) > 1:
            axis.legend(fontsize=7)
    figure.tight_layout()
    temporary = run_dir / ".training_curves.partial.png"
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    temporary.replace(run_dir / "training_curves.png")
