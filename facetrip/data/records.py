"""A prepared set as the photos a command reads: record positions on the host, bytes read from disk when used.

    source -> prepare once (facetrip.data.prepared) -> FaceImages whose ``encoded`` and
    ``file_names`` are :class:`RecordColumn` s: (N,) int64 record positions, read by random access

:func:`load_model_faces` is how ``train``, ``evaluate``, ``embed``, ``mine`` and ``index``
get a source's photos as their model reads them. What they hold on the host is the
labels and the record positions, 16 bytes a photo; a batch reads its records from the
shards (:func:`read_encoded_images`) inside tf.data, where they are decoded and augmented
in parallel.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np

from facetrip.data.prepared import DETECTORS, PreparedSet

logger = logging.getLogger(__name__)

# Records are read and parsed this many at a time when a whole column is read.
_READ_CHUNK = 512

# data.aligned: photos of any kind (faces are found), dlib chips already, ArcFace crops.
ALIGNED_CHOICES = ("none", "dlib", "arcface")

# Without a terminal, a preparation logs a line at most this often.
PROGRESS_LINE_SECONDS = 30.0


class RecordColumn:
    """One feature (``image`` or ``file_name``) of some records of a prepared set, in a given order.

    Indexing with an int reads that record; with a 1-D int array, a slice or a boolean mask it
    gives another column over those positions (nothing is read); with an n-D int array it
    reads the records into an array of that shape. Iterating reads the
    records in chunks.

    Args:
        prepared: the set.
        feature: ``"image"`` or ``"file_name"``.
        positions: (N,) int64 record positions.
    """

    def __init__(self, prepared: PreparedSet, feature: str, positions: np.ndarray):
        self.prepared = prepared
        self.feature = feature
        self.positions = np.asarray(positions, np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.prepared.records([self.positions[index]])[0][self.feature]
        selected = self.positions[index]
        if selected.ndim == 1:
            return RecordColumn(self.prepared, self.feature, selected)
        flat = np.asarray(RecordColumn(self.prepared, self.feature, selected.reshape(-1)))
        return flat.reshape(selected.shape)

    def __iter__(self):
        for start in range(0, len(self.positions), _READ_CHUNK):
            for record in self.prepared.records(self.positions[start : start + _READ_CHUNK]):
                yield record[self.feature]

    def __array__(self, dtype=None, copy=None):
        return column_array(list(self), self.feature == "image", dtype)

    def tolist(self) -> list:
        return list(self)


def column_array(values: list, encoded: bool, dtype=None) -> np.ndarray:
    """(N,) a column's values as an array: an object array of bytes for encoded images, else text (or ``dtype``)."""
    if encoded:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array
    return np.asarray(values, dtype=dtype or str)


def read_encoded_images(prepared: PreparedSet, positions) -> list[bytes]:
    """The encoded images (PNG chips, or photos) of the records at ``positions``, in order."""
    return [record["image"] for record in prepared.records(positions)]


def encoded_image_reader(column: RecordColumn):
    """A TensorFlow function from (B,) int64 indices into ``column`` to their (B,) encoded images.

    The records are read by random access in a ``tf.py_function`` (the reader releases the
    GIL while it reads) and parsed in the graph.
    """
    import tensorflow as tf

    positions = column.positions
    prepared = column.prepared

    def raw_records(indices):
        return np.asarray(prepared.raw_records(positions[indices.numpy()]), dtype=object)

    def read(indices):
        serialized = tf.py_function(raw_records, [indices], tf.string)  # (B,) serialized records
        serialized.set_shape(indices.shape)
        parsed = tf.io.parse_example(serialized, {"image": tf.io.FixedLenFeature([], tf.string)})
        return parsed["image"]  # (B,) encoded images

    return read


def logged_progress(what: str, every_seconds: float = PROGRESS_LINE_SECONDS) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that logs ``what: done / total photos`` at most every ``every_seconds``.

    Nothing is logged before the first ``every_seconds`` have passed: a short preparation is
    silent. Once a line was logged, the last one is logged too.
    """
    import time

    started = time.monotonic()
    last = [started]
    logged = [False]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every_seconds or (done >= total and logged[0]):
            last[0] = now
            logged[0] = True
            logger.info("%s: %s / %s photos", what, f"{done:,}", f"{total:,}")

    return progress


def chip_report_of(prepared: PreparedSet, positions: np.ndarray):
    """What the detector found on the photos at ``positions`` (a :class:`~facetrip.data.face_chips.ChipReport`)."""
    from facetrip.data.face_chips import ChipReport
    from facetrip.data.face_detection import CNN_DETECTOR

    faces = prepared.faces_detected[positions]
    detectors = prepared.detectors[positions]

    def names(mask) -> RecordColumn:  # read only when listed: a report is mostly counted
        return RecordColumn(prepared, "file_name", positions[mask])

    return ChipReport(images=len(positions), no_face=names(faces == 0), several_faces=names(faces > 1),
                      from_cache=0, found_by_cnn=names(detectors == DETECTORS.index(CNN_DETECTOR)))


def load_model_faces(source: str, data_dir: str | None = None, face_chips: bool = True, aligned: str = "none",
                     workers: int = 0, beam_runner: str = "", beam_options: str = "",
                     progress: Callable[[int, int], None] | None = None, chip_format: str = "png"):
    """A source's photos as a model reads them, from its prepared set (prepared on first use).

    Args:
        source: a source name (``orl_faces``, ``folder:PATH``, ``rec:PATH``, ``tfds:NAME``).
        data_dir: where prepared sets (and tfds sets) live; tfds's default when None.
        face_chips: the model reads face chips (else whole images).
        aligned: ``none``, ``dlib`` or ``arcface`` (implied for ``rec:`` sources).
        workers: worker processes for a preparation (0: every core).
        beam_runner, beam_options: prepare on Apache Beam instead (:func:`~facetrip.data.prepared.prepare`).
        progress: called as ``progress(done, total)`` while preparing.
        chip_format: ``png`` or ``jpeg``, how a new preparation stores chips (with ``png``, the
            default, a set prepared as JPEG already is used as it is).

    Returns:
        ``(FaceImages, ChipReport or None)``: the usable photos (failed ones left out, with one
        warning), backed by the prepared set; the report when the photos are face chips.

    Raises:
        DataError: unknown, missing or empty source; a data dir that cannot be written.
    """
    from facetrip.data.chip_examples import CHIPS, record_mode
    from facetrip.data.photo_listing import list_photos
    from facetrip.data.prepared import prepare
    from facetrip.data.sources import FaceImages

    from facetrip.data.errors import DataError

    if aligned not in ALIGNED_CHOICES:
        raise DataError(f"data.aligned must be {', '.join(ALIGNED_CHOICES[:-1])} or {ALIGNED_CHOICES[-1]}, "
                        f"not {aligned!r}.")
    from facetrip.data.chip_examples import CHIP_FORMATS

    if chip_format not in CHIP_FORMATS:
        raise DataError(f"data.chip_format must be {' or '.join(CHIP_FORMATS)}, not {chip_format!r}.")
    listing = list_photos(source, data_dir)
    if aligned == "none" and listing.aligned != "none":
        aligned = listing.aligned
    mode = record_mode(face_chips, aligned)
    prepared = prepare(listing, mode, data_dir=data_dir, workers=workers, beam_runner=beam_runner,
                       beam_options=beam_options, progress=progress, chip_format=chip_format)
    del listing  # its names were only needed to prepare
    failed = np.flatnonzero(prepared.failed)
    if len(failed):
        shown = "; ".join(f"{name}: {error}" for name, error in prepared.failures(5))
        logger.warning("%d of %d photos of %s could not be used and are left out (%s%s); all are listed by "
                       "`facetrip prepare`.", len(failed), len(prepared), source, shown,
                       " ..." if len(failed) > 5 else "")
    positions = np.flatnonzero(~prepared.failed).astype(np.int64)  # (N,)
    faces = FaceImages(
        encoded=RecordColumn(prepared, "image", positions),
        labels=prepared.labels[positions].astype(np.int64),
        identity_names=list(prepared.identity_names),
        file_names=RecordColumn(prepared, "file_name", positions),
        channels=3 if face_chips else prepared.channels,
        source=prepared.source,
    )
    faces = dataclasses.replace(faces, model_input=mode)
    report = chip_report_of(prepared, positions) if mode == CHIPS else None
    return faces, report
