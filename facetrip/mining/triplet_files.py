"""Triplets files: a :class:`MiningResult` written to and read back from one ``.npz`` archive.

Entries: ``format`` (``"facetrip-triplets"``), ``version`` (1), ``triplets`` (M, 3) int64,
``count_names`` / ``count_values`` (the four counts), ``margin``, ``metric``, ``categories``;
optionally ``file_names`` (N,) and ``source``. Nothing is pickled.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from facetrip.distances import resolve_metric
from facetrip.mining.result import (
    COUNT_KEYS,
    MiningResult,
    resolve_categories,
    validated_counts,
    validated_margin,
    validated_triplets,
)
from facetrip.untrusted_files import UntrustedFileError, load_npz_checked, read_untrusted_bytes

# The largest triplets file read: 10^8 triplets of three int32 indices and their distances.
TRIPLETS_FILE_SIZE_LIMIT = 4 << 30
# A triplets file's zip directory: some twenty arrays in a few kB.
_TRIPLETS_MEMBERS, _TRIPLETS_DIRECTORY_BYTES = 64, 64 << 10

FILE_FORMAT = "facetrip-triplets"
FILE_VERSION = 1


def save_triplets(path, result: MiningResult, file_names: Optional[Sequence[str]] = None,
                  source: Optional[str] = None) -> Path:
    """Write ``result`` to an ``.npz`` file (atomically), optionally with the image names.

    Args:
        path: target file; ``.npz`` is the usual suffix.
        result: a :class:`MiningResult`.
        file_names: optional (N,) names of the embedded images, so that indices can be
            read back as files (default ``result.file_names``).
        source: optional name of the data source (default ``result.source``).

    Returns:
        The path written.
    """
    from facetrip.runs import atomic_write_bytes

    path = Path(path)
    triplets = validated_triplets(np.asarray(result.triplets), "result.triplets")
    counts = validated_counts({key: result.counts[key] for key in COUNT_KEYS}, "result.counts")
    file_names = result.file_names if file_names is None else file_names
    source = result.source if source is None else source
    arrays = {
        "format": np.array(FILE_FORMAT),
        "version": np.array(FILE_VERSION),
        "triplets": triplets,
        "count_names": np.array(COUNT_KEYS),
        "count_values": np.array([counts[key] for key in COUNT_KEYS], np.int64),
        "margin": np.array(float(result.margin)),
        "metric": np.array(resolve_metric(result.metric)),
        "categories": np.array(resolve_categories(result.categories)),
    }
    if file_names is not None:
        arrays["file_names"] = np.asarray([str(name) for name in file_names])
        if len(triplets) and triplets.max() >= len(arrays["file_names"]):
            raise ValueError(f"file_names has {len(arrays['file_names'])} entries but the triplets index "
                             f"up to {triplets.max()}: pass the names of all embedded images.")
    if source is not None:
        arrays["source"] = np.array(str(source))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_triplets(path) -> MiningResult:
    """Read a file written by :func:`save_triplets`.

    Args:
        path: the ``.npz`` file.

    Returns:
        The :class:`MiningResult` (with ``file_names`` and ``source`` when saved).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a readable, consistent facetrip triplets file.
    """
    path = Path(path)
    try:  # every array's header checked before the array is allocated; no pickles
        arrays = load_npz_checked(read_untrusted_bytes(path, TRIPLETS_FILE_SIZE_LIMIT, "triplets file"), None, path,
                                  max_array_bytes=TRIPLETS_FILE_SIZE_LIMIT)
    except UntrustedFileError as error:
        if error.reason == "missing":
            raise FileNotFoundError(f"No triplets file at {path}.") from None
        raise ValueError(f"{path} is not a readable triplets file (.npz written by save_triplets): {error}") from None
    try:
        return _result_from_arrays(arrays)
    except (KeyError, TypeError, ValueError) as error:
        detail = f"missing entry {error}" if isinstance(error, KeyError) else str(error)
        raise ValueError(f"{path} is not a valid facetrip triplets file: {detail}".replace("\n", " ")) from error


def is_triplets_file(path) -> bool:
    """Whether ``path`` is a triplets file facetrip wrote (so that `mine --overwrite` may replace it).

    Reads only the archive's directory and its ``format`` and ``version`` entries, each a
    few bytes, from a regular file (a FIFO is refused without waiting): a user's large
    archive is never read whole to find that it is not one.

    Args:
        path: the file.

    Returns:
        True when its ``format`` and ``version`` are those :func:`save_triplets` writes; False
        for anything else, a file that cannot be read included.
    """
    import os
    import zipfile

    from facetrip.runs.model_file import zip_directory_extent
    from facetrip.untrusted_files import open_regular_file

    def entry(archive: zipfile.ZipFile, name: str):
        info = archive.getinfo(f"{name}.npy")
        if info.file_size > 4096:  # a scalar's .npy is about 130 bytes
            raise ValueError(f"{name} is no scalar")
        with archive.open(info) as member:
            return np.lib.format.read_array(io.BytesIO(member.read(4097)), allow_pickle=False)

    try:
        extent = zip_directory_extent(path)  # zipfile would read any archive's whole directory into memory
        if extent is None or not 0 <= extent[0] <= _TRIPLETS_MEMBERS or extent[1] > _TRIPLETS_DIRECTORY_BYTES:
            return False
        descriptor, _ = open_regular_file(path)
    except OSError:  # FileOpenError among them: a FIFO, a folder, an unreadable file
        return False
    try:
        with os.fdopen(descriptor, "rb") as handle, zipfile.ZipFile(handle) as archive:
            file_format, version = entry(archive, "format"), entry(archive, "version")
    except Exception:  # zip, npy header and format errors all mean "not a triplets file"
        return False
    return (file_format.shape == () and file_format.dtype.kind == "U" and str(file_format) == FILE_FORMAT
            and version.shape == () and version.dtype.kind in "iu" and int(version) == FILE_VERSION)


def _result_from_arrays(arrays: dict) -> MiningResult:
    if str(arrays["format"]) != FILE_FORMAT:
        raise ValueError(f"format is {str(arrays['format'])!r}, not {FILE_FORMAT!r}")
    if int(arrays["version"]) != FILE_VERSION:
        raise ValueError(f"file version {int(arrays['version'])}, this facetrip reads version {FILE_VERSION}")
    names = [str(name) for name in arrays["count_names"]]
    values = arrays["count_values"]
    if sorted(names) != sorted(COUNT_KEYS) or values.shape != (len(names),) or values.dtype.kind not in "iu":
        raise ValueError(f"counts must name {', '.join(COUNT_KEYS)} once each")
    counts = validated_counts(dict(zip(names, values.tolist())), "counts")
    triplets = validated_triplets(arrays["triplets"], "triplets")
    if len(set(map(tuple, triplets.tolist()))) != len(triplets):
        raise ValueError("triplets holds duplicates")
    categories = resolve_categories([str(name) for name in np.atleast_1d(arrays["categories"])])
    file_names = arrays.get("file_names")
    if file_names is not None and len(triplets) and triplets.max() >= len(file_names):
        raise ValueError(f"triplets index up to {triplets.max()} but only {len(file_names)} file names are stored")
    source = str(arrays["source"]) if "source" in arrays else None
    return MiningResult(counts={key: counts[key] for key in COUNT_KEYS}, triplets=triplets,
                        margin=validated_margin(arrays["margin"]), metric=resolve_metric(str(arrays["metric"])),
                        categories=categories, file_names=file_names, source=source)
