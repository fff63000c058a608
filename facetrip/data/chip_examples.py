"""One photo of a source turned into the record a prepared face set stores: the per-photo work of preparation.

    photo bytes -> decode -> face chip (detect, 5 landmarks, 150 x 150 cut) | aligned crop mapped | photo as it is
                -> record {image, label, file_name, faces_detected, detector, error}

The same function runs in the worker processes of a local preparation and in the
workers of an Apache Beam pipeline, so both write the same records. A photo that fails
(unreadable, corrupt, too large, or any error of the detector) becomes a record with an
empty image and its error, counted and listed: it never stops a preparation.

How photos become records (``mode``):

- ``chips``: photos of any size; the face is found and cut as dlib's chip
  (:mod:`facetrip.data.face_chips`), stored as its PNG, byte for byte the chip every
  other command cuts from the same photo.
- ``dlib``: photos that are dlib face chips already (``data.aligned = dlib``): no
  detection. A 150 x 150 JPEG, PNG or BMP is stored byte for byte as it is (checked to
  decode); any other size or format is resized to 150 x 150 and stored as PNG.
- ``arcface``: 112 x 112 crops on insightface's ArcFace template (``data.aligned =
  arcface``): mapped onto the chip's geometry by a fixed similarity transform.
- ``photos``: the whole image, as a model without face chips reads it (JPEG, PNG and BMP
  bytes untouched, other formats as PNG).

Chips that are cut or resized are stored as PNG (lossless), or with ``chip_format = "jpeg"``
as JPEG of quality :data:`JPEG_QUALITY`: about a quarter of the bytes (7.3 KB a chip against
30.2 KB on LFW), with the same LFW accuracy (``docs/benchmarks.md``).

This module imports only numpy, PIL and dlib (not TensorFlow), so worker processes start fast.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CHIPS, DLIB_ALIGNED, ARCFACE_ALIGNED, WHOLE_PHOTOS = "chips", "dlib", "arcface", "photos"
MODES = (CHIPS, DLIB_ALIGNED, ARCFACE_ALIGNED, WHOLE_PHOTOS)

# The detector recorded for a photo that was aligned already (no detection ran).
ALIGNED_DETECTOR = "aligned"

# How chips that are cut or resized are stored.
CHIP_FORMATS = ("png", "jpeg")
JPEG_QUALITY = 95

# faces_detected of a photo that failed.
FAILED = -1

# An error message stored with a failed photo is cut to this many characters.
_MAX_ERROR_CHARACTERS = 300


def record_mode(face_chips: bool, aligned: str) -> str:
    """The mode of :func:`photo_record` for a run's ``data.face_chips`` and ``data.aligned``.

    Args:
        face_chips: whether the model reads face chips.
        aligned: ``none`` (photos of any kind: find the face), ``dlib`` or ``arcface``.

    Returns:
        One of :data:`MODES`.

    Raises:
        ValueError: an unknown ``aligned``.
    """
    if aligned not in ("none", DLIB_ALIGNED, ARCFACE_ALIGNED):
        raise ValueError(f"data.aligned must be none, dlib or arcface, not {aligned!r}")
    if not face_chips:
        return WHOLE_PHOTOS
    return CHIPS if aligned == "none" else aligned


def photo_record(file_name: str, identity: str, data: bytes, mode: str, use_chip_cache: bool = False,
                 chip_format: str = "png") -> dict[str, Any]:
    """The record of one photo: its chip (or image) with identity, file name and what the detector found.

    Args:
        file_name: where the photo came from (relative to its source).
        identity: the person's name.
        data: the photo's encoded bytes.
        mode: one of :data:`MODES`.
        use_chip_cache: read and write facetrip's per-photo chip cache (small sets; mode ``chips`` only).
        chip_format: ``png`` or ``jpeg``, how a chip that is cut or resized is stored.

    Returns:
        ``{"image": bytes, "label": identity, "file_name": str, "faces_detected": int,
        "detector": str, "error": str}``; a failed photo has ``image = b""``,
        ``faces_detected = -1`` and its error.
    """
    from facetrip.data.chip_cache import UntrustedCacheError

    record = {"label": identity, "file_name": file_name}
    try:
        image, faces_detected, detector = _encoded_image(file_name, bytes(data), mode, use_chip_cache, chip_format)
    except UntrustedCacheError:  # the cache's, not the photo's: never recorded as the photo's failure
        raise
    except Exception as error:  # noqa: BLE001 - any failure of one photo is recorded, never raised
        message = " ".join(str(error).split()) or type(error).__name__
        return {**record, "image": b"", "faces_detected": FAILED, "detector": "",
                "error": _stored_error(error, message)}
    return {**record, "image": image, "faces_detected": faces_detected, "detector": detector, "error": ""}


def _encoded_image(file_name: str, data: bytes, mode: str, use_chip_cache: bool,
                   chip_format: str = "png") -> tuple[bytes, int, str]:
    """``(encoded image, faces detected, detector)`` of a photo in ``mode``."""
    from facetrip.data import face_chips
    from facetrip.data.images import decodable_bytes, decode_bytes

    if mode == WHOLE_PHOTOS:
        return decodable_bytes(data, file_name), -1, ""
    if mode == CHIPS:
        if use_chip_cache:
            chip = face_chips.chip_from_encoded(data)
        else:
            chip = face_chips.chip_from_pixels(face_chips.rgb_from_image(decode_bytes(data, file_name)[0]))
        encoded = face_chips.encode_chip(chip) if chip_format == "png" else encode_pixels(chip.pixels, chip_format)
        return encoded, chip.faces_detected, chip.detector
    if mode == DLIB_ALIGNED:
        from facetrip.data.images import decode_passing_as_is

        image, passes_as_is = decode_passing_as_is(data, file_name)
        if passes_as_is and image.size == (face_chips.CHIP_SIZE, face_chips.CHIP_SIZE):
            return data, 1, ALIGNED_DETECTOR  # a chip already: no re-encoding, no loss
        rgb = face_chips.rgb_from_image(image)
    else:
        rgb = face_chips.rgb_from_image(decode_bytes(data, file_name)[0])  # (h, w, 3) uint8
    if mode == ARCFACE_ALIGNED:
        from facetrip.data.arcface_alignment import chip_from_arcface_crop

        pixels = chip_from_arcface_crop(rgb)
    elif mode == DLIB_ALIGNED:
        pixels = _resized_to_chip(rgb)
    else:
        raise ValueError(f"unknown preparation mode {mode!r}")
    return encode_pixels(np.ascontiguousarray(pixels, np.uint8), chip_format), 1, ALIGNED_DETECTOR


def _resized_to_chip(rgb: np.ndarray) -> np.ndarray:
    """(150, 150, 3) uint8: an aligned chip as it is, or resized to the chip's size (antialiased)."""
    from PIL import Image

    from facetrip.data.face_chips import CHIP_SIZE

    if rgb.shape[:2] == (CHIP_SIZE, CHIP_SIZE):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((CHIP_SIZE, CHIP_SIZE), Image.Resampling.LANCZOS))


def encode_pixels(pixels: np.ndarray, chip_format: str = "png") -> bytes:
    """PNG (lossless) or JPEG (quality :data:`JPEG_QUALITY`) bytes of (h, w, 3) uint8 pixels.

    Raises:
        ValueError: an unknown ``chip_format``.
    """
    import io

    from PIL import Image

    if chip_format not in CHIP_FORMATS:
        raise ValueError(f"chip format must be {' or '.join(CHIP_FORMATS)}, not {chip_format!r}")
    buffer = io.BytesIO()
    if chip_format == "png":
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=3)
    else:
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _stored_error(error: Exception, message: str) -> str:
    """The error text a record stores: valid UTF-8 (what a name that is not holds is escaped), cut short."""
    text = f"{type(error).__name__}: {message}"[:_MAX_ERROR_CHARACTERS]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ShardRecords:
    """The records of one shard, ``(key, record)`` in key order: one task of a pool or a Beam worker."""

    def __init__(self, reader, mode: str, use_chip_cache: bool, chip_format: str = "png"):
        self.reader = reader
        self.mode = mode
        self.use_chip_cache = use_chip_cache
        self.chip_format = chip_format

    def __call__(self):
        for position, identity, file_name, data in self.reader:
            if isinstance(data, Exception):
                message = " ".join(str(data).split())
                yield position, {"image": b"", "label": identity, "file_name": file_name, "faces_detected": FAILED,
                                 "detector": "", "error": _stored_error(data, message)}
            else:
                yield position, photo_record(file_name, identity, data, self.mode, self.use_chip_cache,
                                             self.chip_format)


def shard_records(task: ShardRecords) -> list:
    """All records of a shard, computed (a worker process's task)."""
    return list(task())
