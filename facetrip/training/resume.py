"""What a resumed run continues with: its config and its identity split, repaired from the checkpoint when damaged."""

from __future__ import annotations

from pathlib import Path

from facetrip.config import Config, ConfigError
from facetrip.runs import CONFIG_FILE, atomic_write_json, atomic_write_text
from facetrip.training.checkpoints import Checkpoint, find_resume_point, finished_epochs
from facetrip.training.errors import TrainingError


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
    from facetrip.untrusted_files import TOML_SIZE_LIMIT, UntrustedFileError, parse_toml_text, read_untrusted_text

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
        saved_config = Config.from_dict(parse_toml_text(saved, checkpoint.name)) if saved is not None else None
    except (UntrustedFileError, ConfigError) as error:
        raise TrainingError(f"Cannot resume {run_dir}: the config saved in {checkpoint.name} is damaged ({error}).") from None
    try:
        text = read_untrusted_text(path, TOML_SIZE_LIMIT, "config")
        if not text.strip():
            raise ConfigError(f"{path} is empty")
        config = Config.from_toml(path)
    except UntrustedFileError as error:
        problem = f"{path} is missing" if error.reason == "missing" else str(error)
    except ConfigError as error:
        problem = str(error).rstrip(".")
    else:
        if saved_config is not None and config != saved_config:
            raise TrainingError(
                f"{path} differs from the config checkpoint {checkpoint.name} was trained with (edited, or cut short): "
                f"put the original back, or delete {path} to continue with the checkpoint's copy."
            )
        return config, []
    if saved is None:
        raise TrainingError(f"Cannot resume {run_dir}: {problem}, and no checkpoint holds a copy of the config.")
    atomic_write_text(path, saved)
    return saved_config, [
        f"{problem}: continuing with the config saved in {checkpoint.name} (written back to {path})."
    ]


def resume_split(split_path: Path, checkpoint: Checkpoint | None):
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
