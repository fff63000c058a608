"""The one path from a photo to what a run's model reads, for every command.

    photo bytes (any size, grey / RGB / RGBA, EXIF-rotated) -> [face chip: detect, 5 landmarks, 150 x 150 aligned crop]
                -> decode -> resize to the run's input -> float32 (H, W, C) in [0, 1]

``train``, ``evaluate``, ``embed``, ``verify`` and ``mine`` all call :func:`prepare_faces`
(data sets) or :func:`encoded_inputs` (a user's files) before anything reaches a model.
With ``face_chips`` on (the default, and what the pretrained face network needs) each
photo is first reduced to its aligned face chip (:mod:`facetrip.data.face_chips`, cached
by content), so the model sees the same 150 x 150 face whatever the photo's size; with it
off (the from-scratch recipe of ``configs/scratch.toml``) the whole image is resized to
the input size, as those models were trained. A run records which in its metadata
(:func:`model_input_metadata`).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def model_input_metadata(face_chips: bool, chip_report=None) -> dict[str, Any]:
    """The metadata keys that say how photos become the model's input.

    Args:
        face_chips: whether photos are reduced to aligned face chips first.
        chip_report: the :class:`~facetrip.data.face_chips.ChipReport` of the training data, if any.

    Returns:
        ``{"face_chips": bool, "chip": {...} or None, "training_faces": {...} or None}``.
    """
    if not face_chips:
        return {"face_chips": False, "chip": None, "training_faces": None}
    from facetrip.data.chip_cutting import ALIGNMENT_VERSION, CHIP_PADDING, CHIP_SIZE

    training_faces = None
    if chip_report is not None:
        training_faces = {"images": chip_report.images, "no_face": len(chip_report.no_face),
                          "several_faces": len(chip_report.several_faces),
                          "found_by_cnn": len(chip_report.found_by_cnn)}
    return {
        "face_chips": True,
        "chip": {"size": CHIP_SIZE, "padding": CHIP_PADDING, "alignment": ALIGNMENT_VERSION},
        "training_faces": training_faces,
    }


def prepare_faces(faces, face_chips: bool, progress=None):
    """A data set as the model's photos: its aligned face chips, or the images as they are.

    Photos read from a prepared set (``faces.model_input`` set) are ready as they are; their
    report comes from the set's index.

    Args:
        faces: :class:`~facetrip.data.FaceImages` of encoded photos.
        face_chips: reduce each photo to its aligned face chip first.
        progress: called as ``progress(done, total)`` while photos are aligned, or None.

    Returns:
        ``(FaceImages, ChipReport or None)``.
    """
    if faces.model_input is not None:
        from facetrip.data.chip_examples import WHOLE_PHOTOS
        from facetrip.data.records import chip_report_of

        if face_chips == (faces.model_input == WHOLE_PHOTOS):
            raise ValueError(f"photos prepared as {faces.model_input} given to a model that "
                             f"{'reads' if face_chips else 'does not read'} face chips")
        if faces.model_input == WHOLE_PHOTOS:
            return faces, None
        return faces, chip_report_of(faces.encoded.prepared, faces.encoded.positions)
    if not face_chips:
        return faces, None
    from facetrip.data.face_chips import chip_faces

    return chip_faces(faces, progress)


def encoded_inputs(encoded, face_chips: bool) -> tuple[list[bytes], list[int] | None]:
    """A user's encoded photos as the encoded images the model's preprocessing reads.

    Args:
        encoded: photo bytes, one per photo (any format of :data:`~facetrip.data.images.PIL_FORMATS`).
        face_chips: reduce each photo to its aligned face chip first.

    Returns:
        ``(encoded images, faces detected per photo)``; None instead of the counts without face chips.

    Raises:
        ImageReadError: a photo is not a readable image of a supported format, or too large.
    """
    if not face_chips:
        from facetrip.data.images import decodable_bytes

        # Checked and, unless TensorFlow decodes them exactly as checked, re-encoded: a GIF's
        # later frames, say, never reach TensorFlow's decoder.
        return [decodable_bytes(bytes(data)) for data in encoded], None
    from facetrip.data.chip_png import encode_chip
    from facetrip.data.face_chips import chip_from_encoded

    chips = [chip_from_encoded(bytes(data)) for data in encoded]
    return [encode_chip(chip) for chip in chips], [chip.faces_detected for chip in chips]


def file_inputs(paths, face_chips: bool, progress=None) -> tuple[list[bytes], list[int] | None]:
    """A user's photo files as the encoded images the model's preprocessing reads.

    Args:
        paths: photo files (any size, any format of :data:`~facetrip.data.images.PIL_FORMATS`).
        face_chips: reduce each photo to its aligned face chip first.
        progress: called as ``progress(done, total)`` after each photo, or None.

    Returns:
        ``(encoded images, faces detected per photo)``; None instead of the counts without face chips.

    Raises:
        ImageReadError: naming the first missing or unreadable file.
    """
    paths = list(paths)

    def each(read):
        results = []
        for path in paths:
            results.append(read(path))
            if progress is not None:
                progress(len(results), len(paths))
        return results

    if not face_chips:
        from facetrip.data.images import read_image_bytes

        return each(read_image_bytes), None
    from facetrip.data.chip_png import encode_chip
    from facetrip.data.face_chips import chip_from_file

    chips = each(chip_from_file)
    return [encode_chip(chip) for chip in chips], [chip.faces_detected for chip in chips]


def file_face_detectors(paths) -> list[str]:
    """Which detector found the face of each photo file: ``"hog"``, ``"cnn"`` (HOG found none) or ``"none"``.

    Read from the photos' chips, which :func:`file_inputs` has just cut: in-memory cache
    hits for up to 1,024 photos, the disk cache beyond.
    """
    from facetrip.data.face_chips import chip_from_file

    return [chip_from_file(path).detector for path in paths]


def decode_inputs(encoded, image_size: tuple[int, int], channels: int) -> np.ndarray:
    """(N, H, W, C) float32 model inputs in [0, 1] of encoded images, through :func:`~facetrip.data.preprocess_encoded`."""
    from facetrip.data.images import preprocess_encoded

    if not len(encoded):
        return np.zeros((0, *image_size, channels), np.float32)
    return np.stack([preprocess_encoded(data, tuple(image_size), channels).numpy() for data in encoded])
