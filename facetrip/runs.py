"""The run directory: what a training run saves, how (atomically), and how it is loaded.

::

    runs/<timestamp>/
      model.keras        the embedding model (raw [0, 1] images in, unit embeddings out)
      metadata.json      facetrip version, image size, channels, metric, margin, threshold, ...
      config.toml        the config the run used
      split.json         which identities went to train / dev / test
      metrics.csv        one row per epoch
      metrics.json       `facetrip evaluate`: model and baselines on the test identities
      roc.png            `facetrip evaluate`: their ROC curves
      logs/              TensorBoard
      backup/            the checkpoints a resume continues from (facetrip.training), while training
      .facetrip.lock     held (fcntl.flock) by the process training into the run

Every file is written to a fresh, uniquely named temporary file in the same folder,
flushed to disk and renamed into place, so a kill never leaves a half-written model or
metadata file, and two writers never share a temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Callable, Iterator

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
CONFIG_FILE = "config.toml"
SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.csv"
EVALUATION_FILE = "metrics.json"
ROC_PLOT_FILE = "roc.png"
LOGS_DIR = "logs"
BACKUP_DIR = "backup"
LOCK_FILE = ".facetrip.lock"
DEFAULT_RUNS_ROOT = "runs"
# Run directories whose metadata says another major format cannot be loaded.
METADATA_FORMAT = 1


class RunError(ValueError):
    """A run directory that is missing, incomplete or from an incompatible version."""


def new_run_dir(root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    """A fresh, uniquely named run directory ``root/<YYYYmmdd-HHMMSS>[-N]``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ["", *(f"-{number}" for number in range(2, 1000))]:
        candidate = root / f"{stamp}{suffix}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RunError(f"Could not find a free run directory name in {root}.")


def _new_temporary_file(directory: Path, prefix: str, suffix: str) -> Path:
    """Create an empty file with a fresh random name in ``directory`` and return its path.

    The file is created with mode 0o666 like any new file, so the kernel applies the
    process' umask (and any default ACL) itself: the renamed result gets the permissions a
    plain ``open(path, "w")`` would give it. ``tempfile.mkstemp`` would make it 0o600.

    Args:
        directory: the folder of the final file (a rename only is atomic within one file system).
        prefix: start of the name; a leading dot keeps temporaries out of listings.
        suffix: end of the name (Keras insists on ``.keras`` or ``.weights.h5``).

    Returns:
        The path of the new, empty file, which no other writer can have been given.
    """
    for _ in range(100):
        candidate = directory / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(descriptor)
        return candidate
    raise FileExistsError(f"Could not create a temporary file in {directory}.")


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to disk, so that renaming it publishes whole contents."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_directory(directory: str | Path) -> None:
    """Flush a folder's entries (renames, removals) to disk; a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(descriptor)


def write_atomically(path: str | Path, write: Callable[[Path], Any], suffix: str = ".tmp") -> None:
    """Have ``write`` fill a fresh temporary file beside ``path``, then flush it and rename it into place.

    A kill at any moment leaves ``path`` either as it was or whole with the new contents;
    at worst a uniquely named temporary file ``.NAME.<random><suffix>`` is left beside it.

    Args:
        path: the file to replace.
        write: called with the temporary path; writes the complete new contents there.
        suffix: end of the temporary name.
    """
    path = Path(path)
    temporary = _new_temporary_file(path.parent, f".{path.name}.", suffix)
    try:
        write(temporary)
        fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`write_atomically`), with the permissions the umask gives.

    Args:
        path: the file to replace.
        data: its complete new contents.
    """
    write_atomically(path, lambda temporary: temporary.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    Args:
        path: the file to replace.
        text: its complete new contents.
    """
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON with sorted keys to ``path`` atomically.

    Args:
        path: the file to replace.
        data: anything ``json.dumps`` takes.
    """
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_model_atomically(model, path: str | Path) -> None:
    """Save the model, without optimizer state, to a fresh temporary ``.keras`` file, then rename it into place.

    Args:
        model: the Keras model (its inputs and outputs are saved as a plain, uncompiled model).
        path: the ``.keras`` file to replace.
    """
    import keras

    inference_model = keras.Model(model.inputs, model.outputs, name=model.name)  # shares the layers, not compiled
    write_atomically(path, inference_model.save, suffix=f".partial{Path(path).suffix}")


# Run directories locked by this process: resolved path -> [lock file descriptor, nesting depth].
_held_run_locks: dict[str, list[int]] = {}


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run directory's lock, so that no second process trains into it at the same time.

    The lock is ``fcntl.flock`` on ``LOCK_FILE`` in the run directory. The kernel releases
    it when the holding process exits, however it ends, so a lock file left behind by a
    killed process never blocks the next one; the file itself is kept (deleting it would
    let two processes lock two different files of the same name). Re-entrant within one
    process, so that the CLI can hold it across training and evaluation while
    :func:`facetrip.training.train` takes it too.

    Args:
        run_dir: an existing run directory.

    Raises:
        RunError: another process holds the lock, or the lock file cannot be opened.
    """
    import fcntl

    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _held_run_locks:
        _held_run_locks[key][1] += 1
        try:
            yield
        finally:
            _held_run_locks[key][1] -= 1
        return
    path = run_dir / LOCK_FILE
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as error:
        raise RunError(f"Cannot lock {run_dir}: {error.strerror} ({path}).") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip()
        os.close(descriptor)
        raise RunError(
            f"{run_dir} is in use by another facetrip process{f' (pid {holder})' if holder.isdigit() else ''}: "
            f"wait for it to finish, or train into another --run-dir."
        ) from None
    # Who holds it, for the message above; written after locking, so only the holder writes.
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    _held_run_locks[key] = [descriptor, 1]
    try:
        yield
    finally:
        del _held_run_locks[key]
        os.close(descriptor)  # releases the lock


def read_metadata(run_dir: str | Path) -> dict[str, Any]:
    """The run's metadata, with every field that facetrip reads checked before anything uses it.

    A run directory may come from anyone: a field of the wrong type, out of range or not
    finite (an image size of 100,000 pixels, a NaN threshold) is refused here, so that no
    command allocates gigabytes, fails with a traceback, or gives the same verdict for
    every pair (:func:`check_metadata_fields` lists the rules).

    Args:
        run_dir: the run directory.

    Returns:
        The metadata as saved.

    Raises:
        RunError: one line: no such directory, no ``metadata.json``, one that cannot be
            read, is larger than :data:`METADATA_SIZE_LIMIT`, is not a JSON object, is of a
            format this version cannot read, or has a field facetrip cannot use (the
            message names the field and the file).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"Run directory {run_dir} does not exist.")
    path = run_dir / METADATA_FILE
    try:
        with path.open("rb") as handle:
            content = handle.read(METADATA_SIZE_LIMIT + 1)  # never more, whatever the file holds
    except FileNotFoundError:
        raise RunError(f"{run_dir} is not a finished facetrip run: it has no {METADATA_FILE}.") from None
    except OSError as error:
        raise RunError(f"{path} cannot be read: {error.strerror or error}.") from None
    if len(content) > METADATA_SIZE_LIMIT:
        raise RunError(f"{path} is larger than {_readable_size(METADATA_SIZE_LIMIT)}: not the metadata facetrip writes.")
    try:
        metadata = json.loads(content.decode("utf-8"))
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep, a number too long to parse
        raise RunError(f"{path} is corrupt (not JSON).") from None
    if not isinstance(metadata, dict):
        raise RunError(f"{path} does not hold a JSON object but {_json_kind(metadata)}: it is not facetrip run metadata.")
    if isinstance(metadata.get("format"), bool):  # JSON true equals 1 in Python
        _refuse_field(path, "format", f"the whole number {METADATA_FORMAT}", metadata["format"])
    if metadata.get("format") != METADATA_FORMAT:
        version = metadata.get("facetrip_version", "?")
        shown_version = version if isinstance(version, str) and version.isprintable() and len(version) <= 40 else _shown(version)
        raise RunError(
            f"{run_dir} was written by facetrip {shown_version} in a format this "
            f"version cannot read (format {_shown(metadata.get('format'))}, expected {METADATA_FORMAT})."
        )
    check_metadata_fields(metadata, path)
    return metadata


def load_embedding_model(run_dir: str | Path):
    """The run's model: its file checked before Keras opens it, then loaded in Keras' safe mode.

    ``model.keras`` may come from anyone, so before Keras reads it
    :func:`check_model_archive` makes sure that it unpacks to a bounded amount of data,
    that its weights link to no other file, and that its config names only Keras' own
    classes and those facetrip registers (no Lambda layer: no code from the file runs).

    Args:
        run_dir: the run directory.

    Returns:
        The Keras model (raw [0, 1] images in, unit embeddings out), not compiled.

    Raises:
        RunError: one line: no ``model.keras``, one refused by :func:`check_model_archive`,
            or one Keras cannot load.
    """
    import keras

    import facetrip.losses  # noqa: F401  registers TripletLoss for deserialisation
    import facetrip.models.face_resnet  # noqa: F401  registers the face ResNet's layers
    import facetrip.models.tta  # noqa: F401  registers HorizontalFlip and Shift (the test-time augmentation layers)

    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise RunError(f"{run_dir} has no {MODEL_FILE}: train a model first (facetrip train).")
    check_model_archive(path)  # after the imports above: facetrip's classes must be registered
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for corrupt or foreign files
        first_line = (str(error).splitlines() or [""])[0]
        raise RunError(f"Cannot load {path}: {type(error).__name__}: {first_line[:200]}") from None


def latest_run(root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    """The most recently modified run under ``root`` that has a model and metadata."""
    root = Path(root)
    finished = [path for path in root.glob("*") if (path / MODEL_FILE).is_file() and (path / METADATA_FILE).is_file()]
    if not finished:
        raise RunError(f"No finished run in {root}/: train one with `facetrip train` or pass --run RUN_DIR.")
    return max(finished, key=lambda path: (path / METADATA_FILE).stat().st_mtime)


# ----------------------------------------------------------------------------- checking what a run directory holds
# A run directory may come from anyone: everything below checks metadata.json and
# model.keras before facetrip or Keras acts on them.

# The face network's metadata.json is about 16 kB, most of it the saved calibration distances.
METADATA_SIZE_LIMIT = 16 << 20
# As training's config allows (facetrip.config, data.image_size); face chips are 150 x 150.
METADATA_LARGEST_IMAGE_SIDE = 4096
# The largest distance between two unit embeddings under each metric (facetrip.losses.distances.METRICS):
# a saved threshold above it would call every pair the same person.
LARGEST_DISTANCE = {"euclidean": 2.0, "squared": 4.0, "cosine": 2.0}
# Float32 distances of opposite unit vectors can exceed the exact bound by rounding.
_DISTANCE_ROUNDING = 1e-3

# The members Keras writes into a .keras file and the most each may unpack to. facetrip's
# largest model, the pretrained face network, has a 94 kB config.json and a 23 MB
# model.weights.h5: the limits leave more than twenty times that room.
MODEL_MEMBER_LIMITS = {"metadata.json": 1 << 20, "config.json": 8 << 20, "model.weights.h5": 512 << 20}
MODEL_REQUIRED_MEMBERS = ("config.json", "model.weights.h5")
# All members together, unpacked.
MODEL_UNPACKED_LIMIT = 512 << 20
# The .keras file itself (Keras stores its members uncompressed), with room for the zip's own headers.
MODEL_FILE_LIMIT = MODEL_UNPACKED_LIMIT + (1 << 20)
# Deflated JSON shrinks about 10 times and weights barely; a member that shrinks more than
# this is a decompression bomb. Members below the floor are too small to matter.
MODEL_COMPRESSION_RATIO_LIMIT = 100
_COMPRESSION_RATIO_FLOOR = 1 << 20
# The zip's central directory of three members takes about 200 bytes. Python's zipfile reads
# it whole and makes an object per member, so both are bounded before it opens the file;
# a few members too many are still read, to name the unexpected one.
_ZIP_DIRECTORY_LIMIT = 64 << 10
_ZIP_MEMBER_COUNT_LIMIT = 16
# What the HDF5 weights may declare, read as arrays (the face network's are 22.5 MB), and
# how many groups, datasets and links they may hold (it has about 370).
WEIGHTS_DATA_LIMIT = 512 << 20
_WEIGHTS_OBJECT_LIMIT = 100_000
# Keras layers that load or run code from outside the model's own config and weights.
_CODE_RUNNING_CLASSES = {"Lambda": "a Lambda layer (Python code)", "__lambda__": "a Python lambda",
                         "TFSMLayer": "a TFSMLayer (a TensorFlow SavedModel loaded from a path)"}


def _readable_size(size: int) -> str:
    """``size`` bytes in words: ``512 MiB``, ``93.6 kB``."""
    if size >= 1 << 20:
        return f"{size / (1 << 20):.4g} MiB"
    return f"{size / 1000:.4g} kB" if size >= 1000 else f"{size} bytes"


def _json_kind(value: Any) -> str:
    """What a JSON value is, in words: ``a list``, ``a string``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    kinds = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


def _shown(value: Any, width: int = 60) -> str:
    """A value from a file as it is written in JSON (NaN, Infinity, null), on one line, shortened to ``width``."""
    try:
        text = json.dumps(value, ensure_ascii=True)  # escapes newlines and control characters
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= width else text[: width - 3] + "..."


def _refuse_field(path: Path, field: str, expected: str, value: Any) -> None:
    """Raise the :class:`RunError` of a metadata field that facetrip cannot use.

    Args:
        path: the metadata file.
        field: the field's name (``calibration.far`` for a nested one).
        expected: what it must be, completing "must be ...".
        value: what it is.
    """
    raise RunError(f"{path} is not valid facetrip run metadata: '{field}' must be {expected}, not {_shown(value)}.") from None


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_metadata_fields(metadata: dict[str, Any], path: Path) -> None:
    """Check every field of a run's metadata that facetrip reads: type, range and finiteness.

    Required: ``source`` (a name), ``image_size`` (two whole numbers from 1 to
    :data:`METADATA_LARGEST_IMAGE_SIDE`), ``channels`` (1 or 3) and ``metric`` (a key of
    :data:`LARGEST_DISTANCE`). Optional, and checked when present: ``threshold`` (null, or
    a finite number no larger than the metric's largest distance between unit embeddings;
    it may lie below 0, where a normal fit of few pairs puts it, which accepts no pair),
    ``margin`` (``"soft"`` or a finite number >= 0), ``calibration`` and its rates,
    the saved calibration distances, ``split``, the face chip settings, the model's
    settings, and the ROC summary that ``threshold_source`` names.

    Args:
        metadata: the parsed ``metadata.json`` (a dict).
        path: the file, for the message.

    Raises:
        RunError: naming the first field that is missing or wrong, and the file.
    """

    def refuse(field: str, expected: str, value: Any) -> None:
        _refuse_field(path, field, expected, value)

    def text(field: str, value: Any, required: bool = False, nullable: bool = False) -> None:
        if not (isinstance(value, str) and (value or not required) or (nullable and value is None)):
            refuse(field, "a non-empty string" if required else "a string" + (" or null" if nullable else ""), value)

    def whole(field: str, value: Any, low: int, high: int = 2**31 - 1, nullable: bool = False) -> None:
        if not (_is_whole(value) and low <= value <= high or (nullable and value is None)):
            refuse(field, f"a whole number from {low} to {high}" + (" or null" if nullable else ""), value)

    def rate(field: str, value: Any, open_interval: bool = False) -> None:
        inside = _is_finite_number(value) and (0 < value < 1 if open_interval else 0 <= value <= 1)
        if not (inside or value is None):
            refuse(field, f"null or a number {'strictly ' if open_interval else ''}between 0 and 1", value)

    def flag(field: str, value: Any) -> None:
        if not isinstance(value, bool):
            refuse(field, "true or false", value)

    def dictionary(field: str, value: Any) -> None:
        if not (isinstance(value, dict) or value is None):
            refuse(field, "an object or null", value)

    present = metadata.__contains__
    for field in ("source", "image_size", "channels", "metric"):
        if not present(field):
            raise RunError(f"{path} is not valid facetrip run metadata: it has no '{field}'.")
    text("source", metadata["source"], required=True)
    image_size = metadata["image_size"]
    if not (isinstance(image_size, list) and len(image_size) == 2
            and all(_is_whole(side) and 1 <= side <= METADATA_LARGEST_IMAGE_SIDE for side in image_size)):
        refuse("image_size", f"[height, width], two whole numbers from 1 to {METADATA_LARGEST_IMAGE_SIDE}", image_size)
    if not (_is_whole(metadata["channels"]) and metadata["channels"] in (1, 3)):
        refuse("channels", "1 (grey) or 3 (RGB)", metadata["channels"])
    metric = metadata["metric"]
    if not (isinstance(metric, str) and metric in LARGEST_DISTANCE):
        refuse("metric", f"one of {', '.join(LARGEST_DISTANCE)}", metric)

    for field in ("facetrip_version", "keras_version", "backbone", "strategy"):
        if present(field):
            text(field, metadata[field])
    if present("freeze"):
        text("freeze", metadata["freeze"], nullable=True)
    if present("threshold_source"):
        text("threshold_source", metadata["threshold_source"], required=True)
    for field in ("face_chips", "flip_tta"):
        if present(field):
            flag(field, metadata[field])
    if present("embedding_dim"):
        whole("embedding_dim", metadata["embedding_dim"], 1)
    if present("tta_shift"):
        whole("tta_shift", metadata["tta_shift"], 0, METADATA_LARGEST_IMAGE_SIDE)
    for field in ("epochs", "epochs_completed"):
        if present(field):
            whole(field, metadata[field], 0)

    if present("weight_interpolation"):
        share = metadata["weight_interpolation"]
        if not (_is_finite_number(share) and 0 <= share <= 1):
            refuse("weight_interpolation", "a number from 0 to 1", share)

    if present("margin"):
        margin = metadata["margin"]
        if not (margin == "soft" or _is_finite_number(margin) and margin >= 0):
            refuse("margin", "'soft' or a finite number >= 0", margin)
    if present("threshold") and metadata["threshold"] is not None:
        threshold, largest = metadata["threshold"], LARGEST_DISTANCE[metric]
        if not (_is_finite_number(threshold) and threshold <= largest + _DISTANCE_ROUNDING):
            refuse("threshold", f"null or a finite number up to {largest:g} (the largest {metric} distance between "
                                f"unit embeddings)", threshold)

    if present("calibration"):
        calibration = metadata["calibration"]
        dictionary("calibration", calibration)
        calibration = calibration or {}
        for field in ("rule", "fallback"):
            if field in calibration:
                text(f"calibration.{field}", calibration[field], nullable=True)
        for field in ("far", "frr"):
            if field in calibration:
                rate(f"calibration.{field}", calibration[field])
        for field in ("target_far", "confidence"):
            if field in calibration:
                rate(f"calibration.{field}", calibration[field], open_interval=True)
        if calibration.get("threshold") is not None and not _is_finite_number(calibration["threshold"]):
            refuse("calibration.threshold", "null or a finite number", calibration["threshold"])
        interval = calibration.get("far_interval")
        if interval is not None and not (isinstance(interval, list) and len(interval) == 2
                                         and all(_is_finite_number(end) and 0 <= end <= 1 for end in interval)
                                         and interval[0] <= interval[1]):
            refuse("calibration.far_interval", "null or [low, high] with 0 <= low <= high <= 1", interval)
    # The key of facetrip.calibration.SAVED_DISTANCES_KEY (that module imports SciPy).
    distances = metadata.get("calibration_different_distances")
    if distances is not None and not (isinstance(distances, list)
                                      and all(_is_finite_number(value) and value >= 0 for value in distances)):
        refuse("calibration_different_distances", "null or a list of finite distances >= 0", distances)
    summary_field = metadata.get("threshold_source", "dev")
    if present(summary_field):
        dictionary(summary_field, metadata[summary_field])

    if present("split"):
        split = metadata["split"]
        if not isinstance(split, dict):
            refuse("split", "an object of train, dev and test identity lists", split)
        for part in ("train", "dev", "test"):
            if part in split and not (isinstance(split[part], list) and all(isinstance(name, str) for name in split[part])):
                refuse(f"split.{part}", "a list of identity names", split[part])
        if "seed" in split:
            whole("split.seed", split["seed"], 0, 2**32 - 1)
    if present("chip"):
        chip = metadata["chip"]
        dictionary("chip", chip)
        chip = chip or {}
        if "size" in chip:
            whole("chip.size", chip["size"], 1, METADATA_LARGEST_IMAGE_SIDE)
        if "padding" in chip and not (_is_finite_number(chip["padding"]) and chip["padding"] >= 0):
            refuse("chip.padding", "a finite number >= 0", chip["padding"])
        if "alignment" in chip:
            text("chip.alignment", chip["alignment"])
    if present("training_faces"):
        training_faces = metadata["training_faces"]
        dictionary("training_faces", training_faces)
        for field, count in (training_faces or {}).items():
            whole(f"training_faces.{field}", count, 0)


def _refuse_model(path: Path, reason: str) -> None:
    """Raise the :class:`RunError` of a model file refused before Keras opens it."""
    raise RunError(f"Cannot load {path}: {reason}.") from None  # the reason says it all


def _zip_directory_extent(path: Path) -> tuple[int, int] | None:
    """``(members, central directory bytes)`` from a zip file's end record, or None where it has none.

    Python's zipfile reads the whole central directory into memory and builds an object per
    member, so its size is checked from this fixed-size record first. ZIP64 archives
    (over 2 GiB, or over 65,535 members) are reported as ``(-1, -1)``.
    """
    end_signature, end_size, locator_size = b"PK\x05\x06", 22, 20
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        tail_size = min(size, end_size + 0xFFFF)  # the record, then a comment of up to 65,535 bytes
        handle.seek(size - tail_size)
        tail = handle.read(tail_size)
    start = tail.rfind(end_signature)
    if start < 0 or len(tail) - start < end_size:
        return None
    import struct

    _, _, _, _, members, directory_size, directory_offset, _ = struct.unpack("<4s4H2LH", tail[start : start + end_size])
    zip64 = members == 0xFFFF or directory_size == 0xFFFFFFFF or directory_offset == 0xFFFFFFFF
    if zip64 or (start >= locator_size and tail[start - locator_size : start - locator_size + 4] == b"PK\x06\x07"):
        return -1, -1
    return members, directory_size


def check_model_archive(path: Path) -> None:
    """Refuse a ``model.keras`` that could exhaust memory or disk, or run code, before Keras opens it.

    The file must be a zip archive of at most :data:`MODEL_FILE_LIMIT` bytes holding only
    the members Keras writes (:data:`MODEL_MEMBER_LIMITS`, each once, ``config.json`` and
    ``model.weights.h5`` present), each declaring at most its limit unpacked and all
    together at most :data:`MODEL_UNPACKED_LIMIT`, stored or deflated, none compressed more
    than :data:`MODEL_COMPRESSION_RATIO_LIMIT` to 1. The weights are checked by
    :func:`check_model_weights` and the config by :func:`check_model_config`.

    Args:
        path: the ``model.keras`` file.

    Raises:
        RunError: ``Cannot load PATH: why``.
    """
    import zipfile
    import zlib

    try:
        size = path.stat().st_size
        extent = _zip_directory_extent(path)
    except OSError as error:
        _refuse_model(path, f"it cannot be read ({error.strerror or error})")
    if size > MODEL_FILE_LIMIT:
        _refuse_model(path, f"it is {_readable_size(size)}, above the limit of {_readable_size(MODEL_FILE_LIMIT)}")
    if extent is None:
        _refuse_model(path, "it is not a zip archive (a .keras model file is one)")
    members, directory_size = extent
    if members < 0:
        _refuse_model(path, "it is a ZIP64 archive, which no model file of this size needs")
    if members > _ZIP_MEMBER_COUNT_LIMIT or directory_size > _ZIP_DIRECTORY_LIMIT:
        _refuse_model(path, f"its zip directory lists {members} members in {_readable_size(directory_size)} "
                            f"(a Keras model file has {len(MODEL_MEMBER_LIMITS)}: {', '.join(MODEL_MEMBER_LIMITS)})")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        _refuse_model(path, f"it is not a readable zip archive ({(str(error).splitlines() or [''])[0][:100]})")
    with archive:
        infos = archive.infolist()
        seen: set[str] = set()
        for info in infos:
            name = info.filename
            if name not in MODEL_MEMBER_LIMITS:
                _refuse_model(path, f"it holds {name!r}, which a Keras model file does not "
                                    f"(only {', '.join(MODEL_MEMBER_LIMITS)})")
            if name in seen:
                _refuse_model(path, f"it holds {name!r} twice")
            seen.add(name)
            if info.file_size > MODEL_MEMBER_LIMITS[name]:
                _refuse_model(path, f"{name!r} declares {_readable_size(info.file_size)} unpacked, above the limit of "
                                    f"{_readable_size(MODEL_MEMBER_LIMITS[name])}")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                _refuse_model(path, f"{name!r} uses zip compression method {info.compress_type}, not stored or deflated")
            if (info.file_size > _COMPRESSION_RATIO_FLOOR
                    and info.file_size > MODEL_COMPRESSION_RATIO_LIMIT * max(info.compress_size, 1)):
                _refuse_model(path, f"{name!r} is compressed {info.file_size / max(info.compress_size, 1):,.0f} to 1 "
                                    f"(a decompression bomb: model files compress less than "
                                    f"{MODEL_COMPRESSION_RATIO_LIMIT} to 1)")
        for name in MODEL_REQUIRED_MEMBERS:
            if name not in seen:
                _refuse_model(path, f"it has no {name!r} (a Keras model file holds {', '.join(MODEL_MEMBER_LIMITS)})")
        unpacked = sum(info.file_size for info in infos)
        if unpacked > MODEL_UNPACKED_LIMIT:
            _refuse_model(path, f"its members declare {_readable_size(unpacked)} unpacked, above the limit of "
                                f"{_readable_size(MODEL_UNPACKED_LIMIT)}")
        try:  # at most MODEL_UNPACKED_LIMIT bytes, as checked above
            weights_data = archive.read("model.weights.h5")
            config_text = archive.read("config.json")
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as error:  # a bad CRC, truncated data
            _refuse_model(path, f"its members cannot be unpacked ({(str(error).splitlines() or [''])[0][:100]})")
    check_model_weights(weights_data, path)
    check_model_config(config_text, path)


def check_model_weights(weights_data: bytes, path: Path) -> None:
    """Refuse HDF5 weights that declare more data than :data:`WEIGHTS_DATA_LIMIT` or reach outside the file.

    Reading a dataset allocates its declared shape, whatever the file stores (a chunked
    dataset with no chunks written is a few bytes on disk), so the declared sizes are added
    up before Keras reads any. External links, external storage and virtual datasets would
    make Keras read other files of this machine. Without h5py the zip member's size limit
    is the only bound.

    Args:
        weights_data: the model file's ``model.weights.h5``, its size already checked.
        path: the model file, for the message.

    Raises:
        RunError: ``Cannot load PATH: why``.
    """
    import io

    try:
        import h5py
    except ImportError:
        return
    name = "model.weights.h5"
    # In memory, as Keras reads it too: a zip member rereads from its start on every
    # backward seek, and HDF5 seeks back and forth.
    try:
        weights = h5py.File(io.BytesIO(weights_data), "r")
    except (OSError, ValueError) as error:
        _refuse_model(path, f"{name!r} is not an HDF5 file ({(str(error).splitlines() or [''])[0][:100]})")
    problems: list[str] = []
    counted = {"bytes": 0, "objects": 0}

    def visit(link_name: str, link) -> bool | None:
        counted["objects"] += 1
        if counted["objects"] > _WEIGHTS_OBJECT_LIMIT:
            problems.append(f"{name!r} holds more than {_WEIGHTS_OBJECT_LIMIT:,} groups, datasets and links")
        elif not isinstance(link, h5py.HardLink):
            target = getattr(link, "filename", None) or getattr(link, "path", "")
            problems.append(f"{name!r} links {link_name!r} to {target!r} (weights must all be inside the file)")
        else:
            item = weights[link_name]
            if isinstance(item, h5py.Dataset):
                if item.external or item.is_virtual:
                    problems.append(f"{name!r} stores {link_name!r} in other files (weights must all be inside it)")
                elif item.dtype.kind not in "biuf":
                    problems.append(f"{name!r} holds {link_name!r} of type {item.dtype}, not numbers")
                else:
                    counted["bytes"] += item.size * item.dtype.itemsize  # the declared shape, not what is stored
                    if counted["bytes"] > WEIGHTS_DATA_LIMIT:
                        problems.append(f"{name!r} declares more than {_readable_size(WEIGHTS_DATA_LIMIT)} of weights "
                                        f"(reading {link_name!r} alone would allocate "
                                        f"{_readable_size(item.size * item.dtype.itemsize)})")
        return True if problems else None  # a value other than None stops the visit

    with weights:
        try:
            weights.visititems_links(visit)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            problems.append(f"{name!r} cannot be read ({(str(error).splitlines() or [''])[0][:100]})")
    if problems:
        _refuse_model(path, problems[0])


def check_model_config(config_text: bytes, path: Path) -> None:
    """Refuse a model config that names a class facetrip does not provide, or a layer that runs code.

    Keras' safe mode refuses Python lambdas, but builds any class registered with Keras in
    this process, by any package. facetrip's models hold only Keras' own layers and the
    classes facetrip registers, so the config may name only those: every serialised
    object's ``registered_name`` must be facetrip's or Keras' own, its ``module`` Keras'
    (or facetrip's, for facetrip's classes), and no string may name an object registered
    by another package. Lambda and TFSMLayer layers are refused outright.

    Args:
        config_text: ``config.json`` of the model file.
        path: the model file, for the message.

    Raises:
        RunError: ``Cannot load PATH: why``.
    """
    import keras

    try:
        config = json.loads(config_text.decode("utf-8"))
    except (ValueError, RecursionError):
        _refuse_model(path, "its config.json is not JSON")
    registered = keras.saving.get_custom_objects()  # registered name -> class or function, all packages
    facetrip_names = {name for name, item in registered.items() if getattr(item, "__module__", "").startswith("facetrip.")}
    pending = [config]  # a stack, not recursion: the nesting depth comes from the file
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            if item in registered and item not in facetrip_names:
                _refuse_model(path, f"it names {item!r}, which facetrip does not provide")
        elif isinstance(item, dict):
            pending.extend(item.values())
            class_name = item.get("class_name")
            if not isinstance(class_name, str):
                continue
            if class_name in _CODE_RUNNING_CLASSES:
                _refuse_model(path, f"it holds {_CODE_RUNNING_CLASSES[class_name]}, which facetrip never saves and "
                                    f"does not run")
            registered_name, module = item.get("registered_name"), item.get("module")
            if registered_name in facetrip_names:
                continue
            keras_module = module is None or module in ("keras", "builtins") or (
                isinstance(module, str) and module.startswith("keras."))
            foreign_registration = isinstance(registered_name, str) and (
                ">" in registered_name or registered_name in registered)
            if foreign_registration or not keras_module:
                shown = registered_name if isinstance(registered_name, str) and registered_name else class_name
                _refuse_model(path, f"it names the class {shown!r} of module {_shown(module)}, which facetrip does "
                                    f"not provide")
