"""Reading a run's metadata.json, every field facetrip reads checked before anything uses it.

A run directory may come from anyone: a field of the wrong type or range is refused in
one line naming it, never acted on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from facetrip.runs.layout import METADATA_FILE, METADATA_FORMAT, RunError
from facetrip.untrusted_files import UntrustedFileError, parse_json_text, read_untrusted_text


# The face network's metadata.json is about 16 kB, most of it the saved calibration distances.
METADATA_SIZE_LIMIT = 16 << 20

# As training's config allows (facetrip.config, data.image_size); face chips are 150 x 150.
METADATA_LARGEST_IMAGE_SIDE = 4096

# The largest distance between two unit embeddings under each metric (facetrip.losses.distances.METRICS):
# a saved threshold above it would call every pair the same person.
LARGEST_DISTANCE = {"euclidean": 2.0, "squared": 4.0, "cosine": 2.0}

# Float32 distances of opposite unit vectors can exceed the exact bound by rounding.
_DISTANCE_ROUNDING = 1e-3

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
        metadata = parse_json_text(read_untrusted_text(path, METADATA_SIZE_LIMIT, "run metadata"), path)
    except UntrustedFileError as error:
        if error.reason == "missing":
            raise RunError(f"{run_dir} is not a finished facetrip run: it has no {METADATA_FILE}.") from None
        raise RunError(f"{error}.") from None
    if not isinstance(metadata, dict):
        raise RunError(f"{path} does not hold a JSON object but {_json_kind(metadata)}: it is not facetrip run metadata.")
    if isinstance(metadata.get("format"), bool):  # JSON true equals 1 in Python
        _refuse_field(path, "format", f"the whole number {METADATA_FORMAT}", metadata["format"])
    if metadata.get("format") != METADATA_FORMAT:
        version = metadata.get("facetrip_version", "?")
        shown_version = version if isinstance(version, str) and version.isprintable() and len(version) <= 40 else shown_value(version)
        raise RunError(
            f"{run_dir} was written by facetrip {shown_version} in a format this "
            f"version cannot read (format {shown_value(metadata.get('format'))}, expected {METADATA_FORMAT})."
        )
    check_metadata_fields(metadata, path)
    return metadata


def readable_size(size: int) -> str:
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


def shown_value(value: Any, width: int = 60) -> str:
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
    raise RunError(f"{path} is not valid facetrip run metadata: '{field}' must be {expected}, not {shown_value(value)}.") from None


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
    if present("aligned") and metadata["aligned"] not in ("none", "dlib", "arcface"):
        refuse("aligned", "none, dlib or arcface", metadata["aligned"])
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
    # The key of facetrip.evaluation.calibration.SAVED_DISTANCES_KEY (that module imports SciPy).
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
