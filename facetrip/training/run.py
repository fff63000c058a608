"""One training run, as its plan: check the config, load and split the data, build the model, fit, calibrate.

Online strategies (batch_all, batch_hard, semi_hard) run through ``model.fit`` on P x K
batches with :class:`~facetrip.losses.TripletLoss`, so the train step is Keras' own
(stateless per step); ``offline`` runs the loop of :mod:`facetrip.training.offline`. With
``train.distribute`` the model is built under a ``tf.distribute`` strategy and trained by
the loop of :mod:`facetrip.training.distribute`, mining over the global batch.
Checkpoints (:mod:`facetrip.training.checkpoints`) let ``--resume`` continue a killed run
exactly; the exported ``model.keras`` and metadata are replaced atomically at the same
moments. Epochs after the last checkpoint are repeated on
resume; their rows in metrics.csv are replaced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facetrip import __version__
from facetrip.config import AUTO_INTERPOLATION as AUTO, Config
from facetrip.runs import (
    BACKUP_DIR,
    LOGS_DIR,
    METADATA_FILE,
    METADATA_FORMAT,
    METRICS_FILE,
    MODEL_FILE,
    SPLIT_FILE,
    atomic_write_json,
    run_lock,
    save_model_atomically,
)
from facetrip.training.checkpoints import (
    CheckpointSchedule,
    ResumePoint,
    find_resume_point,
    finished_epochs,
    holds_classifier,
    remove_checkpoints,
    restore_checkpoint,
)
from facetrip.training.errors import TrainingError
from facetrip.training.history import plot_metrics, trim_metrics
from facetrip.training.optimizer import build_optimizer
from facetrip.training.resume import resume_split
from facetrip.runs.metadata import METADATA_SIZE_LIMIT
from facetrip.untrusted_files import read_untrusted_json


logger = logging.getLogger(__name__)

ONLINE_STRATEGIES = ("batch_all", "batch_hard", "semi_hard")
OFFLINE = "offline"


def training_augmentation(config: Config):
    """The :class:`~facetrip.data.Augmentation` of ``config.augment``, or None when it is disabled."""
    from facetrip.data import Augmentation

    if not config.augment.enabled:
        return None
    return Augmentation(config.augment.flip, config.augment.max_shift, config.augment.brightness,
                        config.augment.contrast, config.augment.rotation, config.augment.erasing, config.augment.scale)


def train(config: Config, run_dir: str | Path, callbacks: Sequence[Any] = (), resume: bool = False) -> dict[str, Any]:
    """Train an embedding model into ``run_dir`` and return its metadata.

    Args:
        config: the configuration (already saved in ``run_dir`` by :func:`prepare_run_dir`).
        run_dir: the run directory (created when missing).
        callbacks: extra Keras callbacks (the CLI's progress display).
        resume: continue from the last whole checkpoint in ``run_dir`` (:func:`find_resume_point`).

    Returns:
        The metadata written to ``metadata.json``.

    Raises:
        TrainingDiverged: the loss became NaN / Inf.
        TrainingError, DataError: the config or data cannot be trained on.
        RunError: another process is training into ``run_dir``.
    """
    from facetrip.training.distribute import is_chief

    if is_chief(config.train.distribute):
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrainingError(f"Cannot create the run directory {run_dir}: {error.strerror}.") from None
    # A multi-worker worker other than the chief only reads the run directory: the chief holds the lock.
    with run_lock(run_dir) if is_chief(config.train.distribute) else contextlib.nullcontext():
        return _train(config, Path(run_dir), callbacks, resume)


def _train(config: Config, run_dir: Path, callbacks: Sequence[Any], resume: bool) -> dict[str, Any]:
    """:func:`train`, with the run directory locked: the plan of a run."""
    import keras

    from facetrip.training.distribute import create_strategy, is_chief

    choices = check_trainable(config)
    # First: splitting the CPU into logical devices must come before TensorFlow sets up its devices.
    strategy = create_strategy(config.train.distribute, config.train.replicas)
    chief = is_chief(config.train.distribute)
    resume_point = _resume_point(run_dir) if resume else ResumePoint(None)  # before the data: errors come fast
    data = load_training_data(config, run_dir, resume_point if resume else None, chief)
    from facetrip.training.cross_batch_memory import check_memory_fits

    check_memory_fits(config.loss.memory_size, len(data.train_faces))

    keras.utils.set_random_seed(config.train.seed)
    # Every worker saves at the same moments (saving joins collectives under multi-worker); all but the chief
    # into a scratch folder, removed at the end.
    write_dir = run_dir if chief else Path(tempfile.mkdtemp(prefix="facetrip-worker-"))
    try:
        return _train_under_strategy(config, run_dir, write_dir, callbacks, resume, choices, strategy, resume_point,
                                     data)
    finally:
        if not chief:
            shutil.rmtree(write_dir, ignore_errors=True)


def _train_under_strategy(config: Config, run_dir: Path, write_dir: Path, callbacks: Sequence[Any], resume: bool,
                          choices: "TrainingChoices", strategy, resume_point: ResumePoint,
                          data: "TrainingData") -> dict[str, Any]:
    """Build (under ``strategy``'s scope), fit, export into ``write_dir``; the chief then calibrates into ``run_dir``."""
    from facetrip.evaluation.stranger_check import check_threshold_on_strangers
    from facetrip.evaluation.threshold import calibrate_threshold
    from facetrip.models.tta import with_test_time_augmentation
    from facetrip.training.distribute import finish_workers

    chief = write_dir == run_dir
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model(config, choices.backbone)
        interpolation = choices.weight_interpolation(config)  # a share, or "auto"
        with_tta = config.model.flip_tta or config.model.tta_shift > 0
        exported_model = (with_test_time_augmentation(model, config.model.flip_tta, config.model.tta_shift)
                          if with_tta else model)
        # Taken before any checkpoint is restored: the network as built is the pretrained end, on resume too.
        # In the exported model's order, the order of the model the run directory holds.
        pretrained_weights = (exported_model.get_weights() if interpolation != 1.0 and config.train.epochs > 0
                              else None)
        trainer = build_trainer(model, config, choices, data, resume_point)
        replicas = strategy.num_replicas_in_sync if strategy is not None else 1
        # While training, model.keras holds the fine-tuned weights: share 1 until one is chosen.
        metadata = RunMetadata(write_dir, config, choices, data, 1.0 if interpolation == AUTO else interpolation,
                               replicas)

        all_callbacks = training_callbacks(trainer, exported_model, metadata, config, write_dir, data, resume_point,
                                           resume, callbacks if chief else ())
        fit_epochs(trainer, exported_model, config, choices, data, resume_point.epoch, write_dir, all_callbacks,
                   strategy)
    if strategy is not None:  # a worker leaves only after the last collective ("Socket closed" otherwise)
        finish_workers(strategy)
    if not chief:
        return metadata.contents(epochs_completed=config.train.epochs)
    if strategy is not None:  # choose, interpolate and calibrate on one device, with the model the run directory holds
        from facetrip.runs import load_embedding_model

        exported_model = load_embedding_model(run_dir)
    extra = {}
    if pretrained_weights is not None:
        share, extra = _interpolate_weights(exported_model, pretrained_weights, interpolation, data, config, choices,
                                            run_dir)
        metadata.interpolation = share
        save_model_atomically(exported_model, run_dir / MODEL_FILE)
    weights_trained = config.train.epochs > 0 and metadata.interpolation > 0
    calibration = calibrate_threshold(exported_model, data.faces, data.split, config, choices.metric, weights_trained)
    strangers = check_threshold_on_strangers(exported_model, calibration["threshold"], config, choices.metric)
    if strangers is not None:
        extra["stranger_check"] = strangers
    written = metadata.write(epochs_completed=config.train.epochs, **extra, **calibration)
    plot_metrics(run_dir)
    remove_checkpoints(run_dir / BACKUP_DIR)  # last: a kill before this resumes at the calibration
    return written


@dataclasses.dataclass(frozen=True)
class TrainingChoices:
    """The names a config resolves to: the mining strategy (or ``offline``), the metric and the backbone."""

    strategy: str
    metric: str
    backbone: str

    @property
    def offline(self) -> bool:
        return self.strategy == OFFLINE

    def weight_interpolation(self, config: Config) -> float | str:
        """WiSE-FT: the saved weights lie this share of the way from the pretrained ones to the fine-tuned ones.

        Returns:
            the configured share, or "auto" (chosen on the dev identities after training);
            1.0 for a backbone trained from scratch.
        """
        from facetrip.models import PRETRAINED_BACKBONES

        return config.train.weight_interpolation if self.backbone in PRETRAINED_BACKBONES else 1.0


def _interpolate_weights(exported_model, pretrained_weights, setting: float | str, data: "TrainingData",
                         config: Config, choices: TrainingChoices, run_dir: Path) -> tuple[float, dict[str, Any]]:
    """Set ``exported_model`` (holding the fine-tuned weights) to the share ``setting`` names, or to the chosen one.

    Below share 1 the fine-tuned weights are also kept in ``run_dir`` (facetrip.runs.fine_tuned_end),
    so that another share needs no training.

    Returns:
        ``(share, metadata keys)``: ``weight_interpolation_choice`` when the share was chosen,
        ``fine_tuned_weights`` when the share is below 1.
    """
    from facetrip.models.weight_interpolation import interpolate_weights
    from facetrip.runs.fine_tuned_end import FINE_TUNED_WEIGHTS_FILE, METADATA_KEY, save_fine_tuned_weights
    from facetrip.training.weight_choice import choose_weight_interpolation

    fine_tuned_weights = exported_model.get_weights()
    extra: dict[str, Any] = {}
    if setting == AUTO:
        choice = choose_weight_interpolation(exported_model, pretrained_weights, fine_tuned_weights, data.faces,
                                             data.split, config, choices.metric)
        logger.info("Weight interpolation: %s.", choice.reason)
        share, extra = choice.share, {"weight_interpolation_choice": choice.to_dict()}
    else:
        share = float(setting)
        logger.info("Saving the weights %.0f%% of the way from the pretrained to the fine-tuned network "
                    "(train.weight_interpolation = %g).", 100 * share, share)
    if share < 1.0:
        extra[METADATA_KEY] = save_fine_tuned_weights(fine_tuned_weights, run_dir)
    else:  # a resumed run that chose 1 this time keeps no stale copy
        (run_dir / FINE_TUNED_WEIGHTS_FILE).unlink(missing_ok=True)
    exported_model.set_weights(interpolate_weights(pretrained_weights, fine_tuned_weights, share))
    return share, extra


def check_trainable(config: Config) -> TrainingChoices:
    """Resolve and check what ``config`` asks for, before any data is loaded, so errors come fast.

    Returns:
        The resolved strategy, metric and backbone.

    Raises:
        TrainingError: in one line, what cannot be trained and what to choose instead.
    """
    from facetrip.losses import resolve_metric, resolve_strategy
    from facetrip.models import resolve_backbone

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
    if 0 < config.train.classifier_sample < config.sampler.identities_per_batch:
        raise TrainingError(f"train.classifier_sample must be 0 or at least the identities of a batch "
                            f"({config.sampler.identities_per_batch}), not {config.train.classifier_sample}.")
    from facetrip.training.distribute import check_distribution

    check_distribution(config.train.distribute, config.train.replicas, config.train.mining_scope)
    if offline and config.train.distribute != "none":
        raise TrainingError("--distribute trains the online strategies (batch_all, batch_hard, semi_hard), not offline.")
    from facetrip.training.cross_batch_memory import check_memory_config

    check_memory_config(config.loss.memory_size, offline)
    from facetrip.training.replay import check_replay_config

    check_replay_config(config.train.replay, config.train.replay_share, offline, config.data.source)
    return TrainingChoices(strategy, metric, backbone)


def _resume_point(run_dir: Path) -> ResumePoint:
    """The checkpoint a resumed run continues from, with its notes logged; refuses a finished run."""
    if finished_epochs(run_dir) is not None:
        raise TrainingError(f"{run_dir} already completed its {finished_epochs(run_dir)} epochs: nothing to resume.")
    resume_point = find_resume_point(run_dir)
    for note in resume_point.notes:
        logger.warning("%s", note)
    return resume_point


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """What a run trains and calibrates on.

    Attributes:
        faces: every photo of the source, as the model reads it (face chips when the run uses them).
        chip_report: how the photos' faces were found (None without face chips).
        split: the identity split (train / dev / test).
        train_faces: the training identities' photos (with blended identities, if any), then
            the replay people's (with ``train.replay``).
        sampler: the P x K sampler over ``train_faces`` (mixing in the replay people's).
        replay: the run's :class:`~facetrip.training.replay.Replay`, or None.
    """

    faces: Any
    chip_report: Any
    split: Any
    train_faces: Any
    sampler: Any
    replay: Any = None


def load_training_data(config: Config, run_dir: Path, resume_point: ResumePoint | None,
                       writes: bool = True) -> TrainingData:
    """Load the source, reduce its photos to face chips, split its identities (or keep a resumed run's split).

    Args:
        config: the run's configuration.
        run_dir: the run directory (``split.json`` is written there).
        resume_point: where a resumed run continues (its split is kept); None for a new run.
        writes: write ``split.json`` (False: a multi-worker worker other than the chief, which
            computes the same split from the same seed).

    Returns:
        The run's :class:`TrainingData`.
    """
    from facetrip.data import PKSampler, split_identities
    from facetrip.data.records import load_model_faces, logged_progress
    from facetrip.data.synthetic import blended_identities
    from facetrip.training.replay import load_replay, replay_training_photos, write_replay_record

    faces, chip_report = load_model_faces(config.data.source, data_dir=config.data.data_dir or None,
                                          face_chips=config.data.face_chips, aligned=config.data.aligned,
                                          chip_format=config.data.chip_format,
                                          progress=logged_progress(f"Preparing {config.data.source}"))
    if chip_report is not None:
        logger.info("%s", chip_report.summary())
    split_path = run_dir / SPLIT_FILE
    split, split_note = resume_split(split_path, resume_point.checkpoint) if resume_point is not None else (None, None)
    if split_note:
        logger.warning("%s", split_note)
    if split is None:
        split = split_identities(faces.identity_names, dev=config.split.dev, test=config.split.test, seed=config.split.seed)
        if writes:
            atomic_write_json(split_path, split.to_dict())
    train_faces = faces.restricted_to(split.train)
    if config.augment.enabled and config.augment.blended_identities:
        if len(train_faces) > BLENDING_MOST_PHOTOS:  # blending holds the training photos in memory
            raise TrainingError(f"augment.blended_identities needs the training photos in memory: it works on up to "
                                f"{BLENDING_MOST_PHOTOS:,} of them, not {len(train_faces):,}; set it to 0.")
        train_faces = blended_identities(train_faces, config.augment.blended_identities, seed=config.train.seed)
    elif config.augment.blended_identities:
        logger.warning("augment.blended_identities = %d is ignored: augmentation is off (augment.enabled = false).",
                       config.augment.blended_identities)
    replay = load_replay(config, faces)
    if replay is not None:
        if writes:
            write_replay_record(run_dir, replay)
        train_faces, sampler = replay_training_photos(train_faces, replay, config)
    else:
        sampler = PKSampler(
            train_faces.labels, config.sampler.identities_per_batch, config.sampler.images_per_identity,
            seed=config.train.seed, steps_per_epoch=config.train.steps_per_epoch,
        )
    return TrainingData(faces, chip_report, split, train_faces, sampler, replay)


def build_model(config: Config, backbone: str):
    """The embedding network of ``config.model``, built under the run's precision policy (which is restored after).

    Raises:
        TrainingError: an unknown head or freeze level, a wrong input size, unreadable weights.
    """
    import keras

    from facetrip.models import build_embedding_model

    previous_policy = keras.mixed_precision.global_policy()
    try:
        if config.train.precision == "bf16":
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        return build_embedding_model(
            input_shape=(*config.data.image_size, config.data.channels),
            embedding_dim=config.model.embedding_dim,
            backbone=backbone,
            width=config.model.width,
            dropout=config.model.dropout,
            head=config.model.head,
            freeze=config.model.freeze,
        )
    except (ValueError, OSError) as error:
        raise TrainingError(str(error)) from None
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def build_trainer(model, config: Config, choices: TrainingChoices, data: TrainingData, resume_point: ResumePoint):
    """The compiled :class:`~facetrip.training.embedding_trainer.EmbeddingTrainer`, restored from the checkpoint if any.

    A pretrained network starting afresh gets its classification centres from its own
    embeddings of the training identities (of at most :data:`CENTRE_SAMPLE_PHOTOS` photos).
    """
    from facetrip.embedding import embed_faces
    from facetrip.losses import TripletLoss, triplet_metrics
    from facetrip.models import PRETRAINED_BACKBONES
    from facetrip.training.embedding_trainer import EmbeddingTrainer

    margin, metric = config.loss.margin, choices.metric
    # None: the classifier exists when its term is on; a checkpoint that holds one is resumed with it.
    with_classifier = True if resume_point.checkpoint is not None and holds_classifier(resume_point.checkpoint.weights) \
        else None
    classifier_sample = config.train.classifier_sample
    if config.train.distribute != "none" and classifier_sample > 0:  # the sampled classifier runs on one device
        identities = len(np.unique(data.train_faces.labels))
        if classifier_sample < identities:
            logger.info("With --distribute the classifier trains all %d identities' centres every step "
                        "(train.classifier_sample applies on one device).", identities)
        classifier_sample = 0
    trainer = EmbeddingTrainer(
        model, data.train_faces.labels, TripletLoss(strategy=choices.strategy, margin=margin, metric=metric),
        statistics=triplet_metrics(margin=margin, metric=metric), warmup_epochs=config.train.warmup_epochs,
        classification_weight=config.train.classification_weight, mining_scope=config.train.mining_scope,
        with_classifier=with_classifier, classifier_sample=classifier_sample, seed=config.train.seed,
        memory_size=config.loss.memory_size, memory_warmup_steps=config.loss.memory_warmup_steps,
        classification_head=config.train.classification_head, scale=config.train.classification_scale,
        classification_margin=config.train.classification_margin,
    )
    trainer.compile(optimizer=build_optimizer(config, data.sampler.batches_per_epoch))
    trainer.optimizer.build(trainer.trainable_variables)  # here, under the strategy's scope, not inside a step
    if resume_point.checkpoint is not None:
        restore_checkpoint(trainer, resume_point.checkpoint)
    if (choices.backbone in PRETRAINED_BACKBONES and resume_point.epoch == 0 and config.train.epochs > 0
            and trainer.has_classifier):
        sample = centre_sample(len(data.train_faces), CENTRE_SAMPLE_PHOTOS, config.train.seed)  # (S,)
        sampled = data.train_faces.take(sample)
        embeddings = embed_faces(model, sampled, tuple(config.data.image_size), config.data.channels)  # (S, D)
        trainer.initialise_centres(embeddings, sampled.labels)
    return trainer


# augment.blended_identities reads every training photo into memory: refused above this many.
BLENDING_MOST_PHOTOS = 50_000

# The classification centres start from the embeddings of at most this many training photos:
# all of them for sets up to this size; above it a seeded sample, so the time before the first
# step stays bounded (on 2 CPU cores about 8 s) however large the set. Identities without a
# sampled photo keep a random centre, as a classifier trained from scratch starts.
CENTRE_SAMPLE_PHOTOS = 2048


def centre_sample(photos: int, most: int, seed: int) -> np.ndarray:
    """(S,) sorted positions of the training photos whose embeddings start the classification centres.

    Args:
        photos: the number of training photos.
        most: the most positions to take.
        seed: the run's seed.

    Returns:
        ``arange(photos)`` when ``photos <= most``, else ``most`` positions drawn without
        replacement, uniformly, by ``seed``.
    """
    if photos <= most:
        return np.arange(photos)
    return np.sort(np.random.default_rng(seed).choice(photos, size=most, replace=False))


class RunMetadata:
    """Writes the run's ``metadata.json``: what the model reads and how it was trained, plus ``extra`` keys.

    The threshold and calibration of an earlier write are kept until a new calibration
    replaces them, so an export at a checkpoint never drops them.
    """

    KEPT_KEYS = ("threshold", "threshold_source", "calibration", "calibration_different_distances", "dev")

    def __init__(self, run_dir: Path, config: Config, choices: TrainingChoices, data: TrainingData,
                 interpolation: float, replicas: int = 1):
        self.path = run_dir / METADATA_FILE
        self.config = config
        self.choices = choices
        self.data = data
        self.interpolation = interpolation
        self.replicas = replicas

    def write(self, **extra) -> dict[str, Any]:
        """Write metadata.json atomically with ``extra`` keys (``epochs_completed``, the calibration) and return it."""
        metadata = self.contents(**extra)
        try:
            kept = read_untrusted_json(self.path, METADATA_SIZE_LIMIT, "run metadata")
        except ValueError:  # none yet, or damaged: nothing worth keeping (UntrustedFileError is one)
            kept = {}
        if isinstance(kept, dict):
            metadata = {**{key: kept[key] for key in self.KEPT_KEYS if key in kept}, **metadata}
        atomic_write_json(self.path, metadata)
        return metadata

    def contents(self, **extra) -> dict[str, Any]:
        """The metadata of the run with ``extra`` keys, as :meth:`write` writes it (less the kept calibration)."""
        import keras

        from facetrip.data.model_input import model_input_metadata

        config = self.config
        metadata = {
            "format": METADATA_FORMAT,
            "facetrip_version": __version__,
            "keras_version": keras.__version__,
            "source": self.data.faces.source,
            "image_size": list(config.data.image_size),
            "channels": config.data.channels,
            "embedding_dim": config.model.embedding_dim,
            "backbone": self.choices.backbone,
            "freeze": config.model.freeze,
            **model_input_metadata(config.data.face_chips, self.data.chip_report),
            "aligned": config.data.aligned,
            "flip_tta": config.model.flip_tta,
            "tta_shift": config.model.tta_shift,
            "strategy": self.choices.strategy,
            "metric": self.choices.metric,
            "margin": config.loss.margin,
            "memory": {"size": config.loss.memory_size, "warmup_steps": config.loss.memory_warmup_steps},
            "replay": self.data.replay.record() if self.data.replay is not None else None,
            "epochs": config.train.epochs,
            "weight_interpolation": self.interpolation,
            "split": self.data.split.to_dict(),
            "distribute": {"strategy": config.train.distribute, "replicas": self.replicas,
                           "mining_scope": config.train.mining_scope},
            **extra,
        }
        return metadata


def training_callbacks(trainer, exported_model, metadata: RunMetadata, config: Config, run_dir: Path,
                       data: TrainingData, resume_point: ResumePoint, resume: bool, extra: Sequence[Any]) -> list:
    """The Keras callbacks of a run, in the order they must run at the end of an epoch.

    Logs and the export first, the backup that marks the epoch as done last, so a kill in
    between repeats the epoch rather than losing its row. On resume, the rows of the epochs
    about to be repeated (or cut short) are removed from metrics.csv first.
    """
    import keras

    from facetrip.training.callbacks import (
        BackupAtCheckpoints,
        ExportAtCheckpoints,
        LogLearningRate,
        SetTrainingPhase,
        StopOnNonFiniteLoss,
    )

    # The checkpoint is restored once, before, so offline training (one fit per epoch) keeps to the schedule too.
    schedule = CheckpointSchedule(config.train.checkpoint_seconds, last_epoch=config.train.epochs - 1)
    if resume:
        trim_metrics(run_dir / METRICS_FILE, resume_point.epoch)
    return [
        SetTrainingPhase(trainer),
        StopOnNonFiniteLoss(),
        LogLearningRate(),
        keras.callbacks.CSVLogger(str(run_dir / METRICS_FILE), append=True),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / LOGS_DIR), write_graph=False, profile_batch=0),
        ExportAtCheckpoints(run_dir, exported_model, metadata.write, schedule),
        BackupAtCheckpoints(schedule, run_dir / BACKUP_DIR, config.to_toml(), data.split.to_dict(),
                            previous_epoch=resume_point.checkpoint.epoch if resume_point.checkpoint else None),
        *extra,
    ]


def fit_epochs(trainer, exported_model, config: Config, choices: TrainingChoices, data: TrainingData,
               start_epoch: int, run_dir: Path, callbacks: list, strategy=None) -> None:
    """Fit from ``start_epoch`` to ``train.epochs``: online P x K batches, or the offline loop.

    With ``train.epochs = 0`` (the network as it is, for comparisons) or a run killed after
    its last checkpoint, only the export is left to do. Under a ``strategy`` the loop of
    :func:`~facetrip.training.distribute.fit_distributed` trains (the same callbacks).
    """
    from facetrip.data import pk_dataset

    image_size = tuple(config.data.image_size)
    augmentation = training_augmentation(config)
    if config.train.epochs == 0 or start_epoch >= config.train.epochs:
        save_model_atomically(exported_model, run_dir / MODEL_FILE)
    elif choices.offline:
        from facetrip.training.offline import fit_offline

        fit_offline(trainer, data.train_faces, data.sampler, config, choices.metric, start_epoch, image_size,
                    augmentation, callbacks)
    else:
        dataset = pk_dataset(
            data.train_faces, data.sampler, image_size, config.data.channels,
            epochs=range(start_epoch, config.train.epochs), augmentation=augmentation,
        )
        if strategy is not None:
            from facetrip.training.distribute import fit_distributed

            fit_distributed(strategy, trainer, dataset, start_epoch, config.train.epochs,
                            data.sampler.batches_per_epoch, callbacks)
            return
        trainer.fit(dataset, initial_epoch=start_epoch, epochs=config.train.epochs,
                    steps_per_epoch=data.sampler.batches_per_epoch, callbacks=callbacks, verbose=0, shuffle=False)
