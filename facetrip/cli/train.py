"""`facetrip train`: parses the options into a config, trains into a run directory, then evaluates it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from facetrip.cli.core import (
    DATA_DIR_HELP, DATA_HELP, PROGRESS_LINE_SECONDS, _number_or_word, _percent, app, console, error_console, fail,
    literal, maps_errors, setup_logging,
)


# Without a terminal (a log file, CI), an epoch line at most this often, plus the first and the last:
# as often as the other commands' progress lines.
LOG_LINE_SECONDS = PROGRESS_LINE_SECONDS


def rich_progress_callback(total_epochs: int, initial_epoch: int = 0, log_line_seconds: float = LOG_LINE_SECONDS):
    """A Keras callback showing epoch, step, loss, fraction of positive triplets and ETA.

    On a terminal: one live rich bar over all the epochs to train, and a line per epoch
    above it. Without one (a log): no bar, and an epoch line for the first and the last
    epoch and at most every ``log_line_seconds`` in between.

    Steps per epoch are read from the ``params`` Keras gives the callback.
    """
    import time

    import keras
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    class RichProgress(keras.callbacks.Callback):
        """One bar for the whole run, also across the per-epoch fit calls of offline training."""

        progress = None
        started = False
        last_line = float("-inf")

        def on_train_begin(self, logs=None):
            if self.started:
                return
            self.started = True
            steps_per_epoch = self.params.get("steps") or 0
            console.print(f"{steps_per_epoch} steps per epoch, epochs {initial_epoch + 1} to {total_epochs}", highlight=False)
            if not console.is_terminal:
                return
            self.progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  positive triplets {task.fields[fraction]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "train", total=(total_epochs - initial_epoch) * steps_per_epoch,
                epoch=initial_epoch + 1, epochs=total_epochs, loss="-", fraction="-",
            )

        def on_epoch_begin(self, epoch, logs=None):
            if self.progress is not None:
                self.progress.update(self.task, epoch=epoch + 1)

        def on_train_batch_end(self, batch, logs=None):
            if self.progress is None:
                return
            logs = logs or {}
            self.progress.update(
                self.task,
                advance=1,
                loss=f"{float(logs.get('loss', float('nan'))):.4f}",
                fraction=f"{float(logs.get('fraction_positive_triplets', float('nan'))):.1%}",
            )

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            now = time.monotonic()
            edge = epoch == initial_epoch or epoch + 1 == total_epochs
            if self.progress is None and not edge and now - self.last_line < log_line_seconds:
                return
            self.last_line = now
            console.print(
                f"epoch {epoch + 1:>3}/{total_epochs} loss {logs.get('loss', float('nan')):.4f} "
                f"pos {logs.get('fraction_positive_triplets', float('nan')):.1%} "
                f"d+ {logs.get('hardest_positive_dist', float('nan')):.3f} d- {logs.get('hardest_negative_dist', float('nan')):.3f} "
                f"lr {logs.get('learning_rate', float('nan')):.1e}",
                highlight=False,
            )

        def on_train_end(self, logs=None):
            if self.progress is None:
                return
            task = self.progress.tasks[0]
            if task.completed >= task.total:
                self.stop()

        def stop(self):
            if self.progress is not None and not getattr(self, "stopped", False):
                self.progress.stop()
                self.stopped = True

    return RichProgress()


def _parse_image_size(text: str) -> list:
    parts = text.lower().replace("x", ",").split(",")
    try:
        height, width = (int(part) for part in parts)
    except ValueError:
        fail(f"--image-size must look like 56x46 (height x width), not {text!r}.")
    return [height, width]


@app.command()
@maps_errors("facetrip.config:ConfigError", "facetrip.data:DataError", "facetrip.runs:RunError",
             "facetrip.training:TrainingError")
def train(
    config_file: Optional[Path] = typer.Option(None, "--config", help="TOML config (see configs/default.toml)."),
    strategy: Optional[str] = typer.Option(None, help="batch_all | batch_hard | semi_hard | offline."),
    margin: Optional[str] = typer.Option(None, help="Margin: a number >= 0, or 'soft'."),
    metric: Optional[str] = typer.Option(None, help="euclidean | squared | cosine."),
    identities_per_batch: Optional[int] = typer.Option(None, "-P", help="P: identities per batch."),
    images_per_identity: Optional[int] = typer.Option(None, "-K", help="K: images per identity."),
    epochs: Optional[int] = typer.Option(None, help="Number of epochs."),
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch", help="P x K batches per epoch (0: about one pass over the training photos)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Initial learning rate (cosine decay)."),
    image_size: Optional[str] = typer.Option(None, help="Model input, HEIGHTxWIDTH, e.g. 56x46."),
    embedding_dim: Optional[int] = typer.Option(None, help="Embedding size."),
    freeze: Optional[str] = typer.Option(None, "--freeze", help="face_resnet: what stays fixed: none | stem | stage1 .. stage5 | all (only the head trains)."),
    weight_interpolation: Optional[str] = typer.Option(None, "--weight-interpolation", help="face_resnet: save (1 - a) * pretrained + a * fine-tuned weights (WiSE-FT): 1 = fine-tuned, lower forgets less; 'auto' (default) chooses a on the dev people."),
    data_source: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    aligned: Optional[str] = typer.Option(None, "--aligned", help="The photos are aligned already: none (find each face) | dlib (dlib chips) | arcface (112x112 ArcFace crops)."),
    chip_format: Optional[str] = typer.Option(None, "--chip-format", help="How a source prepared on first use stores its chips: png (lossless) | jpeg (a quarter of the disk)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the model, sampler and augmentation."),
    precision: Optional[str] = typer.Option(None, help="float32 | bf16 (mixed bfloat16)."),
    triplets: Optional[Path] = typer.Option(None, "--triplets", help="With --strategy offline: a `facetrip mine` file for the first epoch."),
    replay: Optional[str] = typer.Option(None, "--replay", help="Against forgetting: also train on this source's people (others' in-the-wild photos; same forms as --data), a share of every batch's identities."),
    replay_share: Optional[float] = typer.Option(None, "--replay-share", help="With --replay: the share of each P x K batch's identities drawn from it, in [0, 1) (default 0.25)."),
    memory: Optional[int] = typer.Option(None, "--memory", help="Cross-batch memory: also mine each batch against the last N training embeddings (0 = off; online strategies; with --distribute, the same memory of global batches on every replica)."),
    distribute: Optional[str] = typer.Option(None, "--distribute", help="none | mirrored (every local GPU, or --replicas CPU devices) | multi-worker (the cluster in TF_CONFIG)."),
    replicas: Optional[int] = typer.Option(None, "--replicas", help="With --distribute mirrored: the number of replicas (0 = every local GPU; without GPUs the CPU is split into this many devices)."),
    mining_scope: Optional[str] = typer.Option(None, "--mining-scope", help="With several replicas: global (mine over the whole P x K batch, as one device would) | replica (each replica's rows only)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Where to write the run (default runs/<timestamp>)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Train into a --run-dir that holds a run or other files: the run's files are replaced, files facetrip did not write are kept."),
    evaluate_after: bool = typer.Option(True, "--evaluate/--no-evaluate", help="Evaluate on the test identities when training ends (facetrip evaluate)."),
) -> None:
    """Train an embedding model with online (or offline) triplet mining; writes a run directory, then evaluates it."""
    from rich.markup import escape

    from facetrip.runs import new_run_dir, run_lock
    from facetrip.data.sources import check_source_folder
    from facetrip.training import check_new_run_dir, is_facetrip_run, load_resume_config

    setup_logging()
    overrides = {
        "loss.strategy": strategy,
        "loss.margin": _number_or_word(margin, "loss.margin", "--margin") if margin is not None else None,
        "loss.metric": metric,
        "sampler.identities_per_batch": identities_per_batch,
        "sampler.images_per_identity": images_per_identity,
        "train.epochs": epochs,
        "train.steps_per_epoch": steps_per_epoch,
        "train.learning_rate": lr,
        "data.image_size": _parse_image_size(image_size) if image_size is not None else None,
        "model.embedding_dim": embedding_dim,
        "model.freeze": freeze,
        "train.weight_interpolation": (_number_or_word(weight_interpolation, "train.weight_interpolation",
                                                       "--weight-interpolation")
                                       if weight_interpolation is not None else None),
        "data.source": data_source,
        "data.data_dir": data_dir,
        "data.aligned": aligned,
        "data.chip_format": chip_format,
        "train.seed": seed,
        "train.precision": precision,
        "loss.offline_triplets": str(triplets) if triplets is not None else None,
        "loss.memory_size": memory,
        "train.replay": replay,
        "train.replay_share": replay_share,
        "train.distribute": distribute,
        "train.replicas": replicas,
        "train.mining_scope": mining_scope,
    }
    target = resume if resume is not None else run_dir
    try:
        if _follows_the_chief(config_file, overrides, resume):
            # a multi-worker worker other than the chief: it trains with the others and only reads the run directory
            if run_dir is None and resume is None:
                fail("--distribute multi-worker needs --run-dir, the same on every worker.")
            config = load_resume_config(resume)[0] if resume is not None else _config_of(config_file, overrides)
            _train_into(config, target, resume is not None, writes=False)
            return
        if resume is not None:
            if any(value is not None for value in overrides.values()) or config_file is not None or run_dir is not None:
                fail("--resume continues a run with its own config: drop the other options.")
            if overwrite:
                fail("--resume continues a run and --overwrite starts one again: give one of them.")
            if not resume.is_dir() or not ((resume / "config.toml").exists() or is_facetrip_run(resume)):
                fail(f"{resume} is not a facetrip run directory (no config.toml).")  # before a lock file is written
        else:
            config = _config_of(config_file, overrides)
            if config.train.distribute == "multi-worker" and run_dir is None:
                fail("--distribute multi-worker needs --run-dir, the same on every worker.")
            check_source_folder(config.data.source)  # a mistyped folder leaves no run directory behind
            if config.train.replay:
                check_source_folder(config.train.replay)
            if run_dir is not None:
                check_new_run_dir(run_dir, overwrite)  # refuse before writing anything into it
                run_dir.mkdir(parents=True, exist_ok=True)
            target = run_dir if run_dir is not None else new_run_dir()
        # Held from the config to the evaluation: a second process gets a one-line error, not a mixed run.
        with run_lock(target):
            if resume is not None:
                config, notes = load_resume_config(target)
                for note in notes:
                    error_console.print(f"[yellow]Warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
            _train_into(config, target, resume is not None, overwrite)
            if evaluate_after:
                from facetrip.cli.evaluation import _evaluate_after_training  # here: keeps the commands' order

                _evaluate_after_training(target, config.data.data_dir or None)
    except OSError as error:  # a run directory that cannot be created or written (permissions, a full disk)
        fail(f"Cannot write the run directory {target if target is not None else 'runs/'}: {error.strerror or error}.")


def _config_of(config_file: Optional[Path], overrides: dict):
    """The config of ``--config`` (or the defaults) with the command line's ``overrides`` set."""
    from facetrip.config import Config

    config = Config.from_toml(config_file) if config_file is not None else Config()
    for key, value in overrides.items():
        if value is not None:
            config.set(key, value)
    return config


def _follows_the_chief(config_file: Optional[Path], overrides: dict, resume: Optional[Path]) -> bool:
    """Whether this process is a multi-worker worker other than the chief (TF_CONFIG names its task)."""
    import os

    from facetrip.config import Config
    from facetrip.training.distribute import is_chief

    if not os.environ.get("TF_CONFIG"):
        return False
    if resume is not None:
        try:
            distribute = Config.from_toml(resume / "config.toml").train.distribute
        except Exception:  # the chief reports an unreadable config; this worker then trains nothing
            return False
    else:
        distribute = _config_of(config_file, overrides).train.distribute
    return not is_chief(distribute)


@maps_errors("facetrip.training:TrainingDiverged", code=1)
def _train_into(config, run_dir: Path, resume: bool, overwrite: bool = False, writes: bool = True) -> None:
    """Train into ``run_dir`` (prepared here unless resuming), with progress and a summary.

    A loss that diverged ends the command with exit 1; :func:`train` turns the other errors into one line.

    With ``writes=False`` (a multi-worker worker other than the chief) nothing is written:
    the chief prepares the run directory.
    """
    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    import tensorflow_datasets as tfds

    from facetrip.training import find_resume_point, prepare_run_dir, train as run_training

    tfds.disable_progress_bar()
    logging.getLogger("absl").setLevel(logging.ERROR)
    if not resume and writes:
        prepare_run_dir(config, run_dir, overwrite=overwrite)
    checkpoint = find_resume_point(run_dir).checkpoint if resume else None
    start = checkpoint.epoch if checkpoint is not None else 0
    resuming = (f" (resuming after epoch {start}, from checkpoint {checkpoint.name})" if checkpoint is not None
                else " (resuming from the start: no checkpoint was saved yet)")
    console.print(
        f"[bold]facetrip train[/] {literal(config.loss.strategy)} (margin {literal(config.loss.margin)}, "
        f"{literal(config.loss.metric)}) on {literal(config.data.source)}, P={config.sampler.identities_per_batch} "
        f"K={config.sampler.images_per_identity} -> {literal(run_dir)}" + (literal(resuming) if resume else ""),
        highlight=False, soft_wrap=True,
    )
    progress = rich_progress_callback(config.train.epochs, start)
    try:
        console.print(f"Loading {literal(config.data.source)} and building the model ...", style="dim", highlight=False,
                      soft_wrap=True)
        metadata = run_training(config, run_dir, callbacks=[progress], resume=resume)
    finally:
        progress.stop()
    if not writes:
        console.print(f"[bold green]Done:[/] worker of {literal(run_dir)} (the chief writes it)", highlight=False)
        return
    from facetrip.evaluation.calibration import percent

    summary = metadata.get(metadata.get("threshold_source", ""), {})
    calibration = metadata.get("calibration") or {}
    threshold = metadata.get("threshold")
    people = str(metadata.get("threshold_source", "")).replace("_", " ")
    threshold_text = f"{threshold:.4f}" if isinstance(threshold, float) else str(threshold)
    console.print(
        f"[bold green]Done:[/] {literal(run_dir)}  threshold {threshold_text}"
        + (f" ({people} FAR {_percent(calibration['far'])}, target {percent(calibration['target_far'])})"
           if calibration else "")
        + (f"  {people} EER {summary['eer']:.1%}  AUC {summary['auc']:.4f}" if summary else "")
        + (f"  weight interpolation {metadata['weight_interpolation']:g} (auto)"
           if "weight_interpolation_choice" in metadata else ""),
        highlight=False,
    )
    if calibration.get("fallback"):
        console.print(f"[yellow]Threshold:[/] {literal(calibration['fallback'])}.", highlight=False, soft_wrap=True)
