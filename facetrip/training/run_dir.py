"""A new run's directory: what may be trained into, and what ``--overwrite`` removes.

A lock (:func:`facetrip.runs.run_lock`) keeps a second process from training into the
same run directory; files facetrip did not write are never removed.
"""

from __future__ import annotations

from pathlib import Path

from facetrip.config import RUN_SECTIONS, Config, ConfigError
from facetrip.runs import (
    BACKUP_DIR,
    CONFIG_FILE,
    EVALUATION_FILE,
    LOCK_FILE,
    METADATA_FILE,
    METRICS_FILE,
    MODEL_FILE,
    ROC_PLOT_FILE,
    REPLAY_FILE,
    SPLIT_FILE,
    atomic_write_text,
    run_lock,
)
from facetrip.training.checkpoints import CHECKPOINT_POINTER, checkpoint_files, remove_checkpoints
from facetrip.training.errors import TrainingError
from facetrip.training.history import CURVES_FILE
from facetrip.runs.metadata import METADATA_SIZE_LIMIT
from facetrip.untrusted_files import UntrustedFileError, read_untrusted_json, read_untrusted_toml


def is_facetrip_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a facetrip run: a config.toml, metadata or commit record as facetrip writes them.

    A config.toml counts only when it names every section a run's config has always had
    (:data:`~facetrip.config.RUN_SECTIONS`: runs written before a later section such as
    ``[identify]`` lack it), as facetrip writes it (a user's short config, or an empty file,
    does not); metadata.json and the commit record
    only when they are JSON objects with facetrip's key. ``--overwrite`` removes the files of a
    run only when this holds.
    """
    try:
        written = read_untrusted_toml(run_dir / CONFIG_FILE)
        if set(written) >= set(RUN_SECTIONS):
            Config.from_dict(written)
            return True
    except (UntrustedFileError, ConfigError):
        pass
    for path, key in ((run_dir / METADATA_FILE, "facetrip_version"), (run_dir / BACKUP_DIR / CHECKPOINT_POINTER, "checkpoint")):
        try:
            record = read_untrusted_json(path, METADATA_SIZE_LIMIT, "run record")
        except ValueError:
            continue
        if isinstance(record, dict) and key in record:
            return True
    return False


def _files_training_writes(run_dir: Path) -> list[Path]:
    """The files training and its evaluation write in a run directory, whose old versions they replace."""
    fixed = [CONFIG_FILE, SPLIT_FILE, REPLAY_FILE, METADATA_FILE, MODEL_FILE, METRICS_FILE, CURVES_FILE, EVALUATION_FILE, ROC_PLOT_FILE]
    return [run_dir / name for name in fixed] + checkpoint_files(run_dir / BACKUP_DIR)


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

    Only facetrip's own files: its outputs and checkpoints, the evaluations of other data
    sources and the report pages facetrip wrote; TensorBoard's logs/ and anything else stay.
    """
    if not is_facetrip_run(run_dir):
        return
    from facetrip.evaluation.report_page import is_report_page

    pages = [path for path in [*run_dir.glob("report.html"), *run_dir.glob("report-*.html")] if is_report_page(path)]
    for path in [*_files_training_writes(run_dir), *run_dir.glob("metrics-*.json"), *run_dir.glob("roc-*.png"), *pages]:
        if path.is_file() and path.name != CONFIG_FILE:
            path.unlink()
    remove_checkpoints(run_dir / BACKUP_DIR)


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
